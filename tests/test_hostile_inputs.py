"""Bad input and faults outside predict.py, each one sentence instead of a traceback: an
evaluation batch that does not fit in memory, class names CLIP cannot tokenize, corrupt
files of the project's own formats (teacher text-feature cache, CLIP weights, export)."""

from __future__ import annotations

import os

import pytest
import torch
from test_engine_tiny import TinyEngineTrainer, tiny, tiny_argv  # noqa: F401 (fixture)

import train
from dassl_ext.errors import UserError

CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
MEMORY_ERRORS = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu-memoryerror": lambda: MemoryError(),
    "cpu-allocator": lambda: RuntimeError(CPU_OOM + "you tried to allocate 8589934592 bytes."),
    "cpu-cant-allocate": lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory"),
}


@pytest.mark.parametrize("kind", MEMORY_ERRORS)
def test_evaluation_out_of_memory_names_the_batch_size_and_keeps_checkpoints(
    kind, tiny, monkeypatch, capsys  # noqa: F811
):  # fmt: skip
    """Training ends, the test batch does not fit: one sentence naming
    DATALOADER.TEST.BATCH_SIZE (value, half) and --eval-only, and the checkpoint is kept."""
    root, out = tiny

    def no_memory(self, image):
        raise MEMORY_ERRORS[kind]()

    monkeypatch.setattr(TinyEngineTrainer, "model_inference", no_memory)
    assert train.main(tiny_argv(root, out, "DATALOADER.TEST.BATCH_SIZE", "6")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.splitlines()[0]
    assert line.startswith("Error: Evaluating the test split ran out of ")
    assert "DATALOADER.TEST.BATCH_SIZE 6 " in line and "DATALOADER.TEST.BATCH_SIZE 3 (half)" in line
    assert f"--eval-only --model-dir {out}" in line
    assert os.path.isfile(os.path.join(out, "TinyNet", "model.pth.tar-2"))


def test_evaluation_error_that_is_not_memory_is_not_renamed(tiny, monkeypatch):  # noqa: F811
    root, out = tiny

    def broken(self, image):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(TinyEngineTrainer, "model_inference", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        train.main(tiny_argv(root, out))


def test_is_out_of_memory_ignores_our_own_sentences():
    from dassl_ext.evaluation.memory import is_out_of_memory

    assert not is_out_of_memory(UserError("The disk ran out of memory cards."))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))


# ---------------------------------------------------------------- class names and CLIP's tokens
LONG_NAME = "_".join(["very"] * 80) + "_long_aircraft"  # 82 words: over CLIP's 77 tokens


@pytest.fixture(scope="module")
def tiny_teacher(tiny_clip_root):
    from dassl_ext.modeling import load_clip

    return load_clip("tiny-teacher", tiny_clip_root)


def test_a_class_name_over_77_tokens_is_one_sentence_naming_it(tiny_teacher):
    """CoOp-family prompts, PromptSRC's and zero-shot CLIP's templates: the class, its
    token count and what to shorten, not the tokenizer's RuntimeError."""
    from dassl_ext.modeling import build_prompt_buffers
    from trainers.promptsrc import zero_shot_text_features
    from trainers.zsclip import ZeroshotModel

    names = ["cat", LONG_NAME]
    with pytest.raises(UserError) as e:
        build_prompt_buffers(tiny_teacher, names, "a photo of a", 4)
    message = str(e.value)
    assert message.startswith(f"Class 1 {LONG_NAME!r} is too long for CLIP: its prompt ")
    # 4 prefix words + 82 name words + "." + start/end tokens
    assert "is 89 tokens, and CLIP's text encoder reads at most 77 (7 of them" in message
    assert "shorten the name in the dataset's class names" in message and "classname_fixes" in (
        message
    )
    with pytest.raises(UserError, match="is too long for CLIP"):
        zero_shot_text_features(tiny_teacher, None, names, ["a photo of a {}."])
    with pytest.raises(UserError, match="is too long for CLIP"):
        ZeroshotModel(tiny_teacher, names, ["a photo of a {}."]).text_features()


def test_empty_class_name_is_refused_and_unusual_names_are_kept(tiny_teacher):
    """An empty name is refused; non-ASCII names (accents, CJK) reach the tokenizer as they
    are, and underscores become spaces (as CoOp)."""
    from dassl_ext.modeling import build_prompt_buffers, clip

    for empty in ("", "  ", "_"):
        with pytest.raises(UserError, match=r"Class 1 has an empty name .*classname_fixes"):
            build_prompt_buffers(tiny_teacher, ["cat", empty], "a photo of a", 4)
    names = ["café", "猫", "sea_lion"]
    tokens, _, _ = build_prompt_buffers(tiny_teacher, names, "a photo of a", 4)
    decoded = [
        clip.clip._tokenizer.decode([t for t in row.tolist() if t][1:-1]).strip() for row in tokens
    ]
    assert decoded == ["a photo of a café .", "a photo of a 猫 .", "a photo of a sea lion ."]


def test_ctx_init_over_77_tokens_is_one_sentence(tiny_teacher):
    from dassl_ext.modeling import word_ctx_or_random

    with pytest.raises(UserError, match=r"CTX_INIT .* is 102 tokens; CLIP's text encoder"):
        word_ctx_or_random(tiny_teacher, " ".join(["word"] * 100), 4)


# ---------------------------------------------------------------- corrupt files of our formats
def _zero_shot_kd_trainer(digits_root, tiny_clip_root, out, cache):
    """A PromptKD trainer whose teacher is zero-shot CLIP (no checkpoint to train)."""
    from test_promptkd import student_argv

    from dassl_ext.config import setup_cfg
    from dassl_ext.engine import build_trainer

    extra = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP",
             "TRAINER.PROMPTKD.TEXT_CACHE_DIR", str(cache), "USE_CUDA", "False")  # fmt: skip
    return build_trainer(setup_cfg(train.parse_args(
        student_argv(digits_root, tiny_clip_root, out, "", *extra)
    )))  # fmt: skip


def _truncate(path: str) -> None:
    with open(path, "r+b") as f:
        f.truncate(40)


def _garbage(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"garbage")


CACHE_DAMAGE = {
    "truncated": _truncate,
    "not-torch": _garbage,
    "a-list": lambda path: torch.save([1, 2], path),
    "no-features": lambda path: torch.save({"meta": {}}, path),
    "wrong-rows": lambda path: torch.save({"text_features": torch.ones(3, 48)}, path),
    "nan": lambda path: torch.save({"text_features": torch.full((10, 48), float("nan"))}, path),
}


def test_a_damaged_text_feature_cache_is_recomputed_with_a_warning(
    digits_root, tiny_clip_root, tmp_path, caplog
):
    cache = tmp_path / "cache"
    first = _zero_shot_kd_trainer(digits_root, tiny_clip_root, tmp_path / "a", cache)
    expected = first.model.class_text_features.clone()
    (entry,) = cache.glob("*.pt")
    for name, damage in CACHE_DAMAGE.items():
        damage(str(entry))
        caplog.clear()
        again = _zero_shot_kd_trainer(digits_root, tiny_clip_root, tmp_path / name, cache)
        assert torch.equal(again.model.class_text_features, expected), name
        assert f"Ignoring unreadable text-feature cache {entry}" in caplog.text, name
        assert torch.equal(torch.load(entry, weights_only=True)["text_features"], expected)


def test_an_unwritable_text_feature_cache_is_a_warning(
    digits_root, tiny_clip_root, tmp_path, caplog
):
    blocker = tmp_path / "a_file"
    blocker.write_text("the cache folder cannot be created under a file")
    trainer = _zero_shot_kd_trainer(digits_root, tiny_clip_root, tmp_path / "a", blocker / "c")
    assert trainer.model.class_text_features.shape[0] == 10
    assert f"Cannot write the teacher text-feature cache in {blocker / 'c'}" in caplog.text


NOT_CHECKPOINTS = {
    "a-list": ([1, 2], "it holds a list"),
    "a-tensor": (torch.zeros(3), "it holds a Tensor"),
    "no-state-dict": ({"epoch": 2, "optimizer": {}}, "it holds a dict without 'state_dict'"),
    "state-dict-list": ({"state_dict": [1], "epoch": 2}, "it holds a 'state_dict' that is a list"),
}


@pytest.mark.parametrize("kind", NOT_CHECKPOINTS)
def test_a_checkpoint_of_another_structure_is_one_sentence(kind, tiny, capsys):  # noqa: F811
    root, out = tiny
    assert train.main(tiny_argv(root, out, "TEST.NO_TEST", "True")) == 0
    obj, words = NOT_CHECKPOINTS[kind]
    path = os.path.join(out, "TinyNet", "model.pth.tar-2")
    torch.save(obj, path)
    capsys.readouterr()
    flags = ("--eval-only", "--model-dir", out)
    assert train.main(tiny_argv(root, out + "_eval", flags=flags)) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert err.startswith(f"Error: Checkpoint {path} is not a model checkpoint: {words}")
    assert "pass a model.pth.tar-<epoch> / model-best.pth.tar written by train.py" in err


def test_a_clip_file_that_is_not_clip_is_one_sentence(tiny_clip_root, tmp_path):
    """A zip that is not a torch file, an empty file, a state dict with a wrong shape or
    missing keys: one line (torch's messages run over several), naming the file."""
    import zipfile

    from dassl_ext.modeling import load_clip

    sd = torch.load(os.path.join(tiny_clip_root, "tiny-teacher.pt"), weights_only=True)
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as z:
        z.writestr("hello.txt", "not a model")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({**sd, "visual.proj": torch.zeros(3, 3)}, tmp_path / "shape.pt")
    torch.save({k: v for k, v in sd.items() if ".resblocks.0." not in k}, tmp_path / "keys.pt")
    cases = {
        "zip.pt": "Cannot read CLIP weights",
        "empty.pt": "(EOFError: the file is empty or cut short); delete or replace it.",
        "shape.pt": "size mismatch for visual.proj",
        "keys.pt": "Missing key(s) in state_dict",
    }
    for name, words in cases.items():
        with pytest.raises(UserError) as e:
            load_clip(str(tmp_path / name))
        assert str(tmp_path / name) in str(e.value) and words in str(e.value), name
        assert "\n" not in str(e.value), name


# ---------------------------------------------------------------- scripts/export_student.py
@pytest.fixture(scope="module")
def kd_run(digits_root, tiny_clip_root, tmp_path_factory):
    """A 2-epoch PromptKD run (zero-shot teacher) with both epochs' checkpoints."""
    from test_promptkd import student_argv

    out = tmp_path_factory.mktemp("kd") / "run"
    extra = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP", "TEST.NO_TEST", "True",
             "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "USE_CUDA", "False")  # fmt: skip
    assert train.main(student_argv(digits_root, tiny_clip_root, out, "", *extra)) == 0
    return out


def _export(capsys, *argv) -> tuple[int, list[str], list[str]]:
    from test_promptkd import load_script

    rc = load_script("export_student").main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out.splitlines(), [line for line in err.splitlines() if line[:2] != "20"]


def test_export_of_a_folder_that_is_not_a_finished_promptkd_run(kd_run, tmp_path, capsys):
    """Missing folder, no config.yaml, a CoOp run, no checkpoint yet, a missing epoch: one
    sentence each, before any model is built."""
    coop = tmp_path / "coop"
    coop.mkdir()
    config = (kd_run / "config.yaml").read_text()
    (coop / "config.yaml").write_text(config.replace("  NAME: PromptKD", "  NAME: CoOp"))
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text(config)
    cases = [
        ((tmp_path / "nope",), "does not exist, so it is not a run folder"),
        ((tmp_path,), "holds no config.yaml, so it is not a run folder"),
        ((coop,), "is a CoOp run, not a PromptKD one; only a PromptKD student"),
        ((started,), "holds no student checkpoint (no model-best.pth.tar or model.pth.tar-<N>"),
        ((kd_run, "--load-epoch", "7"), "has no epoch 7 checkpoint (" + str(kd_run)),
    ]
    for argv, words in cases:
        rc, out, err = _export(capsys, *argv)
        assert rc == 1 and out == [] and len(err) == 1, argv
        assert err[0].startswith(f"Error: {argv[0]} ") and words in err[0], (argv, err)


def test_export_of_an_unfinished_run_says_which_epoch(kd_run, tmp_path, capsys):
    unfinished = tmp_path / "unfinished"
    (unfinished / "VLPromptLearner").mkdir(parents=True)
    (unfinished / "config.yaml").write_text((kd_run / "config.yaml").read_text())
    first = kd_run / "VLPromptLearner" / "model.pth.tar-1"
    (unfinished / "VLPromptLearner" / "model.pth.tar-1").write_bytes(first.read_bytes())
    rc, out, err = _export(capsys, unfinished, "-o", tmp_path)  # -o a folder: <it>/student.pt
    assert rc == 0 and os.path.isfile(tmp_path / "student.pt")
    assert out[-1].startswith(f"Wrote {tmp_path / 'student.pt'} (10 classes) from {unfinished}")
    assert err[-1] == (
        "Note: that is epoch 1 of OPTIM.MAX_EPOCH 2: the run has not finished (or stopped "
        "early); export it again when it has."
    )
    rc, out, err = _export(capsys, kd_run, "-o", tmp_path / "done.pt")
    assert rc == 0 and not [line for line in err if line.startswith("Note:")]


def test_export_to_a_path_that_cannot_be_written(kd_run, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    rc, out, err = _export(capsys, kd_run, "-o", a_file / "student.pt")
    assert rc == 1 and out == []
    assert (
        err[-1]
        == f"Error: Cannot write {a_file / 'student.pt'} (Not a directory); choose another -o."
    )  # noqa: E501


# ---------------------------------------------------------------- evaluation
def test_nan_logits_at_evaluation_are_refused_not_scored(tiny, monkeypatch, capsys):  # noqa: F811
    """fp16 overflow or NaN weights at test time: argmax of NaN is class 0, so without the
    check a results.json with a meaningless accuracy is written and the run exits 0."""
    root, out = tiny
    real = TinyEngineTrainer.model_inference

    def half_nan(self, image):
        logits = real(self, image)
        logits[::2] = float("nan")  # batches of 5, 5, 2: 3 + 3 + 1 images
        return logits

    monkeypatch.setattr(TinyEngineTrainer, "model_inference", half_nan)
    assert train.main(tiny_argv(root, out)) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(
        "Error: The model's outputs are NaN or infinite for 7 of 12 images of the test split, e.g. "
    )
    assert "evaluate in fp32" in err[0]
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_a_teacher_checkpoint_of_another_structure_is_one_sentence(
    digits_root, tiny_clip_root, tmp_path
):
    from test_promptkd import student_argv

    from dassl_ext.config import setup_cfg
    from dassl_ext.engine import TRAINER_REGISTRY

    cfg = setup_cfg(train.parse_args(student_argv(digits_root, tiny_clip_root, tmp_path, "")))
    path = tmp_path / "teacher.pth.tar"
    torch.save({"epoch": 20, "model": {}}, path)
    with pytest.raises(UserError, match="it holds a dict without 'state_dict'") as e:
        TRAINER_REGISTRY.get("PromptSRC").build_frozen_model(
            cfg, ["zero", "one"], "tiny-teacher", str(path)
        )
    assert str(e.value).startswith(f"Checkpoint {path} is not a model checkpoint: ")
