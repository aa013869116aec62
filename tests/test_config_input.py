"""Hostile config input: files in odd encodings and shapes, odd KEY VALUE pairs, seeds.

Each case is either read as meant or refused with one sentence (a UserError naming the file
or key), never a traceback or a silent misread."""

from __future__ import annotations

import codecs
import math
from types import SimpleNamespace

import pytest
import yaml

import train
from dassl_ext.config import setup_cfg
from dassl_ext.config.rules import check_config_values
from dassl_ext.config.yaml_file import read_yaml_file
from dassl_ext.errors import UserError

OK = "OPTIM:\n  LR: 0.5\n"

# name: file bytes, fragments of the one sentence (the file's path is checked separately)
BAD_FILES = {
    "two_sections": (b"OPTIM:\n  LR: 0.5\nSEED: 1\nOPTIM:\n  MAX_EPOCH: 3\n",
                     ("sets OPTIM twice, on lines 1 and 4", "keep one")),
    "key_twice_in_section": (b"OPTIM:\n  LR: 0.5\n  LR: 0.7\n",
                             ("OPTIM.LR twice, on lines 2 and 3",)),
    "key_twice_deep": (b"TRAINER:\n  COOP:\n    N_CTX: 4\n    CSC: False\n    N_CTX: 8\n",
                       ("TRAINER.COOP.N_CTX twice, on lines 3 and 5",)),
    "key_twice_flow": (b"OPTIM: {LR: 0.5, LR: 0.7}\n", ("OPTIM.LR twice, on line 1",)),
    "latin1": ("# caf\u00e9\nOPTIM:\n  LR: 0.5\n".encode("latin-1"),
               ("not UTF-8 text", "byte 0xe9 at offset 5 (line 1)", "save the file as UTF-8")),
    "utf16_without_bom": (OK.encode("utf-16-le"), ("NUL byte at offset 1", "UTF-16 without")),
    "top_level_list": (b"- OPTIM\n- LR\n", ("holds a list at its top level",)),
    "top_level_scalar": (b"hello\n", ("holds the single value 'hello' at its top level",)),
    "base_number": (b"_BASE_: 5\n", ("_BASE_ is 5; use the path of a yaml file",)),
    "base_list_non_string": (b"_BASE_: [b.yaml, 3]\n", ("_BASE_ is ['b.yaml', 3]",)),
    "base_empty": (b"_BASE_: ''\n", ("_BASE_ is ''",)),
    "section_scalar": (b"OPTIM: 5\n", ("OPTIM is 5 in", "but OPTIM is a section",
                                        "set its keys (OPTIM.NAME, ...)")),
    "section_empty": (b"OPTIM:\nSEED: 1\n", ("OPTIM is empty in",)),
    "value_mapping": (b"OPTIM:\n  LR: {a: 1}\n",
                      ("Config key OPTIM.LR in", "is a value, not a section")),
    "value_empty": (b"OPTIM:\n  LR:\n", ("OPTIM.LR is empty in", "the default is 0.0003")),
    "key_int": (b"1: x\n", ("line 1: key 1 is not a name",)),
    "key_null": (b"null: x\n", ("line 1: key null is not a name",)),
    "key_int_in_section": (b"OPTIM:\n  3: x\n", ("line 2: key 3 in section OPTIM is not a name",)),
    "tab_indent": (b"OPTIM:\n\tLR: 0.5\n", ("not valid yaml at line 2, column 1", "not tabs")),
    "two_documents": (b"OPTIM:\n  LR: 0.1\n---\nSEED: 1\n", ("expected a single document",)),
    "python_tag": (b"SEED: !!python/object/apply:os.getcwd []\n",
                   ("could not determine a constructor",)),
    "octal": (b"OPTIM:\n  MAX_EPOCH: 010\n", ("line 2: OPTIM.MAX_EPOCH is 010", "octal number 8")),
    "base60": (b"OPTIM:\n  MAX_EPOCH: 1:30\n", ("OPTIM.MAX_EPOCH is 1:30", "base-60 number 90")),
    "self_alias": (b"OPTIM:\n  NEW_LAYERS: &a [*a]\n", ("OPTIM.NEW_LAYERS[0] contains itself",)),
    "too_deep": (b"OPTIM:\n  LR: " + b"[" * 1500 + b"]" * 1500 + b"\n", ("nests", "too deeply")),
    "size_int": (b"INPUT:\n  SIZE: 32\n", ("INPUT.SIZE is 32 in", "use a list, e.g. [32, 32]")),
    "text_key_bool": (b"DATASET:\n  NAME: no\n", ("DATASET.NAME is False", "quote yes, no")),
}  # fmt: skip


def _setup(tmp_path, content: bytes | None = None, *opts: str, seed: int = -1):
    path = tmp_path / "c.yaml"
    if content is not None:
        path.write_bytes(content)
    args = SimpleNamespace(config_file=str(path) if content is not None else "", seed=seed)
    cfg = setup_cfg(SimpleNamespace(**vars(args), opts=list(opts)))
    check_config_values(cfg)
    return cfg


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_one_sentence_naming_the_file(case, tmp_path):
    content, fragments = BAD_FILES[case]
    with pytest.raises(UserError) as e:
        _setup(tmp_path, content)
    message = str(e.value)
    assert "\n" not in message and str(tmp_path / "c.yaml") in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(
    "content",
    [
        codecs.BOM_UTF8 + OK.encode(),
        OK.encode("utf-16"),  # with a BOM (Windows editors' "Unicode")
        codecs.BOM_UTF16_BE + OK.encode("utf-16-be"),
        OK.encode("utf-32"),
        OK.replace("\n", "\r\n").encode(),
        b"".join(b"# line %d\n" % i for i in range(30_000)) + OK.encode(),
    ],
    ids=["utf8_bom", "utf16_le_bom", "utf16_be_bom", "utf32_bom", "crlf", "30k_lines"],
)
def test_files_that_are_read_as_meant(content, tmp_path):
    assert _setup(tmp_path, content).OPTIM.LR == 0.5


def test_empty_file_and_yaml_spellings(tmp_path):
    assert _setup(tmp_path, b"").OPTIM.LR == 0.0003
    assert _setup(tmp_path, b"# only a comment\n").OPTIM.LR == 0.0003
    cfg = _setup(tmp_path, b"OPTIM:\n  LR: 2e-3\n  MAX_EPOCH: 0x10\nTEST:\n  SAVE_LOGITS: yes\n")
    assert cfg.OPTIM.LR == 0.002 and cfg.OPTIM.MAX_EPOCH == 16 and cfg.TEST.SAVE_LOGITS is True
    assert _setup(tmp_path, b"DATASET:\n  NAME: '123'\n").DATASET.NAME == "123"  # stays text


def test_merge_keys_and_aliases_are_not_duplicates(tmp_path):
    """``<<: *anchor`` then a key of the anchor is yaml's override, not a duplicate."""
    path = tmp_path / "a.yaml"
    path.write_text("A: &a {X: 1, Y: 2}\nB:\n  <<: *a\n  X: 3\nC: [*a, *a]\n")
    data = read_yaml_file(str(path))
    assert data["B"] == {"X": 3, "Y": 2} and data["C"] == [{"X": 1, "Y": 2}] * 2


def test_folder_and_missing_base_are_named(tmp_path):
    with pytest.raises(UserError, match=r"is a folder; pass a yaml file\.$"):
        setup_cfg(SimpleNamespace(config_file=str(tmp_path)))
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: ../nope/base.yaml\n")
    with pytest.raises(UserError) as e:
        setup_cfg(SimpleNamespace(config_file=str(child)))
    message = str(e.value)
    assert str(child) in message and "nope/base.yaml (_BASE_), which does not exist" in message


# KEY VALUE pairs: value, fragments of the sentence
BAD_OPTS = {
    "int_word": (("OPTIM.MAX_EPOCH", "ten"),
                 ("OPTIM.MAX_EPOCH is 'ten' in the command line; use an integer (the default "
                  "is 10).",)),
    "int_float": (("OPTIM.MAX_EPOCH", "2.5"), ("OPTIM.MAX_EPOCH is 2.5", "use an integer")),
    "int_bool": (("OPTIM.MAX_EPOCH", "True"), ("OPTIM.MAX_EPOCH is True", "use an integer")),
    "list_for_scalar": (("OPTIM.LR", "[0.1]"), ("OPTIM.LR is [0.1]", "use a number")),
    "mapping_for_scalar": (("OPTIM.LR", "{'a': 1}"), ("OPTIM.LR is {'a': 1}", "use a number")),
    "empty_value": (("OPTIM.LR", ""), ("OPTIM.LR is ''", "use a number")),
    "int_for_tuple": (("INPUT.SIZE", "32"), ("INPUT.SIZE is 32", "use a list, e.g. [32, 32]")),
    "text_for_list": (("INPUT.TRANSFORMS", "random_flip"), ("use a list, e.g. ['random_flip']",)),
    "nan_text": (("OPTIM.LR", "nan"), ("OPTIM.LR is 'nan'", "use a number")),
    "inf_literal": (("OPTIM.LR", "1e999"), ("OPTIM.LR is inf; use a number > 0.",)),
    "inf_unranged": (("INPUT.GN_MEAN", "1e999"), ("INPUT.GN_MEAN is inf; use finite numbers.",)),
    "bool_number": (("TEST.SAVE_LOGITS", "1"), ("TEST.SAVE_LOGITS is 1", "use True or False")),
    "bool_word": (("TEST.SAVE_LOGITS", "maybe"), ("use True or False",)),
    "trailing_dot": (("OPTIM.", "0.1"), ("Command-line key 'OPTIM.' has an empty part",)),
    "leading_dot": ((".LR", "0.1"), ("Command-line key '.LR' has an empty part",)),
    "double_dot": (("OPTIM..LR", "0.1"), ("'OPTIM..LR' has an empty part",)),
    "section_as_key": (("OPTIM", "0.1"), ("OPTIM is '0.1'", "OPTIM is a section")),
    "below_a_value": (("OPTIM.LR.X", "1"), ("OPTIM.LR.X", "OPTIM.LR is a value, not a section")),
    "seed_negative": (("SEED", "-3"),
                      ("SEED is -3; use -1 or an integer from 0 to 4294967295 (-1: no fixed "
                       "seed).",)),
    "seed_too_large": (("SEED", str(2**32)), ("SEED is 4294967296",)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_OPTS))
def test_bad_key_value_pair_is_one_sentence(case, tmp_path):
    opts, fragments = BAD_OPTS[case]
    with pytest.raises(UserError) as e:
        _setup(tmp_path, None, *opts)
    assert "\n" not in str(e.value)
    for fragment in fragments:
        assert fragment in str(e.value), (fragment, str(e.value))


@pytest.mark.parametrize(
    "value,expected", [("True", True), ("true", True), ("yes", True), ("No", False), ("off", False)]
)
def test_bool_words_on_the_command_line(value, expected, tmp_path):
    assert _setup(tmp_path, None, "TEST.SAVE_LOGITS", value).TEST.SAVE_LOGITS is expected


def test_text_keys_keep_text_on_the_command_line(tmp_path):
    cfg = _setup(tmp_path, None, "DATASET.NAME", "123", "OPTIM.NAME", "'sgd'")
    assert cfg.DATASET.NAME == "123" and cfg.OPTIM.NAME == "sgd"


@pytest.mark.parametrize("seed", [-3, -2, 2**32])
def test_seed_flag_outside_the_documented_values_is_refused(seed, tmp_path):
    with pytest.raises(UserError) as e:
        _setup(tmp_path, None, seed=seed)
    assert str(e.value) == (
        f"--seed {seed} is not a seed; use -1 (no fixed seed, the default) or a seed from 0 "
        "to 4294967295."
    )


def test_seed_flag_documented_values(tmp_path):
    assert _setup(tmp_path, None, seed=0).SEED == 0
    assert _setup(tmp_path, None, seed=2**32 - 1).SEED == 2**32 - 1
    assert _setup(tmp_path, b"SEED: 5\n", seed=-1).SEED == 5  # -1: the flag was not given
    assert train.parse_args([]).seed == -1  # argparse's default is the documented value


def test_seed_in_a_file_is_checked_by_the_rules(tmp_path):
    with pytest.raises(UserError, match=r"^SEED is -3; use -1 or an integer"):
        _setup(tmp_path, b"SEED: -3\n")


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_non_finite_values_from_yaml_are_refused(text, tmp_path):
    content = f"OPTIM:\n  LR: {text}\nINPUT:\n  GN_MEAN: {text}\n  PIXEL_MEAN: [0.4, {text}, 0.4]\n"
    with pytest.raises(UserError) as e:
        _setup(tmp_path, content.encode())
    lines = str(e.value).splitlines()
    value = yaml.safe_load(text)
    assert lines[0].startswith("OPTIM.LR is ") and "use a number > 0" in lines[0]
    assert f"INPUT.GN_MEAN is {value}; use finite numbers." in lines
    assert any(line.startswith("INPUT.PIXEL_MEAN is [0.4, ") for line in lines)
    assert len(lines) == 3 and not math.isfinite(value)  # one sentence per key, no repeats
