"""Config validation before any work: one sentence per bad value (key, value, what is
allowed), exit status 1, no traceback, nothing written; model-dependent checks (input size,
prompt depth) against the sizes read from the weights; every trainer's defaults pass."""

from __future__ import annotations

import functools
import glob
import os
import subprocess
import sys

import pytest
import torch
from yacs.config import CfgNode as CN

import train
from dassl_ext.config import (
    Check,
    OneOf,
    Range,
    apply_config_extensions,
    check_rules,
    config_rules,
    get_cfg_default,
    setup_cfg,
    validate_config,
)
from dassl_ext.config import rules as config_rules_module
from dassl_ext.engine import TRAINER_REGISTRY
from dassl_ext.errors import UserError
from dassl_ext.modeling import TinyClipSpec, clip, clip_sizes, save_tiny_clip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS_CFG = os.path.join(REPO, "configs", "datasets", "digits.yaml")
KD_CFG = os.path.join(REPO, "configs", "trainers", "PromptKD", "base2new", "digits.yaml")
TINY = ["MODEL.BACKBONE.NAME", "tiny-student", "INPUT.SIZE", "(32, 32)", "USE_CUDA", "False"]
KD_TINY = [*TINY, "TRAINER.PROMPTKD.TEACHER_NAME", "tiny-teacher"]

train.import_plugins()


def run_main(tmp_path, clip_root, trainer: str, config: str, *opts: str) -> int:
    args = [
        "--root", str(tmp_path / "data"), "--trainer", trainer,
        "--dataset-config-file", DIGITS_CFG, "--config-file", config,
        "--output-dir", str(tmp_path / "out"), "MODEL.CLIP_ROOT", clip_root, *opts,
    ]  # fmt: skip
    return train.main(args)


def assert_one_clear_error(capsys, tmp_path, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (tmp_path / "out").exists()  # nothing written, nothing overwritten
    return err


# key, command-line value, how the sentence shows the value, what it says is allowed
BAD_VALUES = [
    ("TRAINER.PROMPTKD.TEMPERATURE", "0", "0.0", "> 0"),
    ("TRAINER.PROMPTKD.KD_WEIGHT", "-1", "-1.0", ">= 0"),
    ("TRAINER.PROMPTKD.N_CTX_VISION", "0", "0", ">= 1"),
    ("TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "-1", "-1", ">= 0"),
    ("TRAINER.PROMPTKD.CE_WEIGHT", "1.0", "1.0", "use 0.0"),
    ("TRAINER.PROMPTKD.TEACHER_TRAINER", "PromptKD", "'PromptKD'", "PromptSRC"),
    ("TRAINER.PROMPTKD.TEACHER_TRAINER", "CoCoOp", "'CoCoOp'", "fixed class text features"),
    ("TRAINER.PROMPTKD.PREC", "fp8", "'fp8'", "fp32, fp16, bf16, amp"),
    ("TRAINER.MODAL", "both", "'both'", "base2novel, cross"),
    ("TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "-25", "-25.0", ">= 0"),
    ("TRAINER.PROMPTSRC.GPA_STD", "0", "0.0", "> 0"),
    ("TRAINER.IVLP.N_CTX_TEXT", "0", "0", ">= 1"),
    ("TRAINER.COOP.N_CTX", "0", "0", ">= 1"),
    ("TRAINER.COOP.CLASS_TOKEN_POSITION", "start", "'start'", "end, middle, front"),
    ("TRAINER.COCOOP.N_CTX", "-4", "-4", ">= 1"),
    ("TRAINER.MAPLE.PROMPT_DEPTH", "0", "0", ">= 1"),
    ("OPTIM.MAX_EPOCH", "0", "0", ">= 1"),
    ("OPTIM.LR", "0", "0.0", "> 0"),
    ("OPTIM.LR", "-0.002", "-0.002", "> 0"),
    ("OPTIM.WEIGHT_DECAY", "-0.0005", "-0.0005", ">= 0"),
    ("OPTIM.WARMUP_EPOCH", "-2", "-2", "-1 or an integer >= 0"),
    ("OPTIM.NAME", "adagrad", "'adagrad'", "sgd"),
    ("OPTIM.LR_SCHEDULER", "linear", "'linear'", "cosine"),
    ("OPTIM.ADAM_BETA2", "1.0", "1.0", "< 1"),
    ("OPTIM.GAMMA", "0", "0.0", "> 0"),
    ("DATALOADER.TRAIN_X.BATCH_SIZE", "0", "0", ">= 1"),
    ("DATALOADER.TEST.BATCH_SIZE", "-8", "-8", ">= 1"),
    ("DATALOADER.NUM_WORKERS", "-1", "-1", ">= 0"),
    ("DATALOADER.TRAIN_X.SAMPLER", "WeightedSampler", "'WeightedSampler'", "RandomSampler"),
    ("DATASET.NUM_SHOTS", "-16", "-16", "-1 or an integer >= 0"),
    ("DATASET.SUBSAMPLE_CLASSES", "half", "'half'", "all, base, new"),
    ("DATASET.PROTOCOL", "honest", "'honest'", "paper, clean"),
    ("DATASET.EVAL_SPLITS", "base", "'base'", "standard, base_new"),
    ("TEST.FINAL_MODEL", "best", "'best'", "last_step, best_val"),
    ("TEST.SPLIT", "train", "'train'", "test, val"),
    ("TEST.EVALUATOR", "Retrieval", "'Retrieval'", "use Classification"),
    ("INPUT.SIZE", "(0, 32)", "(0, 32)", "two integers >= 1"),
    ("INPUT.INTERPOLATION", "lanczos", "'lanczos'", "bicubic"),
    ("INPUT.TRANSFORMS", "['random_flip', 'blur']", "'blur'", "gaussian_blur"),
    ("INPUT.PIXEL_STD", "[0.2, 0.0, 0.2]", "0.0", "three numbers > 0"),
    ("TRAIN.PRINT_FREQ", "0", "0", ">= 1"),
    ("TRAIN.CHECKPOINT_FREQ", "-1", "-1", ">= 0"),
    ("TRAIN.GRAD_CLIP_NORM", "-1", "-1.0", ">= 0"),
    ("SEED", "-3", "-3", "-1 or an integer from 0 to 4294967295 (-1: no fixed seed)"),
    ("INPUT.GN_MEAN", "1e999", "inf", "use finite numbers"),
]


@pytest.mark.parametrize(
    "key,value,shown,allowed", BAD_VALUES, ids=[f"{k}={v}" for k, v, _, _ in BAD_VALUES]
)
def test_bad_value_is_one_sentence_before_any_work(
    key, value, shown, allowed, tmp_path, tiny_clip_root, capsys
):
    code = run_main(tmp_path, tiny_clip_root, "PromptKD", KD_CFG, *KD_TINY, key, value)
    assert code == 1
    err = assert_one_clear_error(capsys, tmp_path, f"{key} is ", shown, allowed)
    assert err.count("\n") == 1  # one sentence: only this value is wrong


def test_unknown_trainer_is_caught_before_any_work(tmp_path, tiny_clip_root, capsys):
    assert run_main(tmp_path, tiny_clip_root, "CoOpp", COOP_CFG, *TINY) == 1
    assert_one_clear_error(capsys, tmp_path, "No object named 'CoOpp'", "Did you mean 'CoOp'?")


def test_zero_shot_without_eval_only_is_caught_before_any_work(tmp_path, tiny_clip_root, capsys):
    assert run_main(tmp_path, tiny_clip_root, "ZeroshotCLIP", COOP_CFG, *TINY) == 1
    assert_one_clear_error(capsys, tmp_path, "ZeroshotCLIP has nothing to train", "--eval-only")


def test_dataset_is_checked_before_any_work(tmp_path, tiny_clip_root, capsys):
    """Unknown dataset, and a clean-protocol selection a dataset cannot offer (ImageNet has
    no val split): caught before its folder is even looked at (it does not exist here)."""
    assert (
        run_main(tmp_path, tiny_clip_root, "CoOp", COOP_CFG, *TINY, "DATASET.NAME", "Digitz") == 1
    )
    assert_one_clear_error(capsys, tmp_path, "No object named 'Digitz'", "Did you mean 'Digits'?")
    opts = ("DATASET.NAME", "ImageNet", "DATASET.PROTOCOL", "clean", "TEST.FINAL_MODEL", "best_val")
    assert run_main(tmp_path, tiny_clip_root, "CoOp", COOP_CFG, *TINY, *opts) == 1
    assert_one_clear_error(
        capsys, tmp_path, "ImageNet has no validation split", "TEST.FINAL_MODEL last_step"
    )


def test_several_bad_values_are_all_named(tmp_path, tiny_clip_root, capsys):
    opts = ("TRAINER.PROMPTKD.TEMPERATURE", "0", "OPTIM.MAX_EPOCH", "0")
    assert run_main(tmp_path, tiny_clip_root, "PromptKD", KD_CFG, *KD_TINY, *opts) == 1
    err = assert_one_clear_error(capsys, tmp_path, "TEMPERATURE is 0.0", "MAX_EPOCH is 0")
    assert err.count("\n") == 2


def _tiny_64px(root) -> str:
    """A tiny CLIP that sees 64 px images (the stand-ins see 32 px)."""
    path = os.path.join(str(root), "tiny-64px.pt")
    if not os.path.isfile(path):
        save_tiny_clip(path, TinyClipSpec(embed_dim=48, vision_width=64, text_width=64,
                                          image_resolution=64, patch_size=16))  # fmt: skip
    return path


MAPLE_CFG = os.path.join(REPO, "configs", "trainers", "MaPLe", "vit_b16_c2_ep5_batch4_2ctx.yaml")
IVLP_CFG = os.path.join(REPO, "configs", "trainers", "IVLP", "vit_b16_c2_ep20_batch8_4+4ctx.yaml")
SRC_CFG = os.path.join(
    REPO, "configs", "trainers", "PromptSRC", "vit_b16_c2_ep20_batch4_4+4ctx.yaml"
)
COOP_CFG = os.path.join(REPO, "configs", "trainers", "CoOp", "vit_b16.yaml")
# trainer, config, options, fragments of the sentence
MODEL_CASES = {
    "coop_input_size": ("CoOp", COOP_CFG, ("INPUT.SIZE", "(224, 224)"),
                        ("INPUT.SIZE is (224, 224); use (32, 32)", "MODEL.BACKBONE.NAME")),
    "ivlp_vision_depth": ("IVLP", IVLP_CFG, ("TRAINER.IVLP.PROMPT_DEPTH_VISION", "13"),
                          ("PROMPT_DEPTH_VISION is 13", "from 0 to 12", "vision layers")),
    "promptsrc_text_depth": ("PromptSRC", SRC_CFG, ("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "14"),
                             ("PROMPT_DEPTH_TEXT is 14", "from 0 to 12", "text layers")),
    "maple_depth": ("MaPLe", MAPLE_CFG, ("TRAINER.MAPLE.PROMPT_DEPTH", "13"),
                    ("TRAINER.MAPLE.PROMPT_DEPTH is 13", "from 1 to 12")),
    "student_depth": ("PromptKD", KD_CFG, ("TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "13"),
                      ("PROMPT_DEPTH_VISION is 13", "vision layers of tiny-student")),
    "teacher_depth": ("PromptKD", KD_CFG, ("TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "13"),
                      ("TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION is 13",
                       "vision layers of tiny-teacher")),
    "modal_vs_splits": ("PromptKD", KD_CFG, ("TRAINER.MODAL", "cross"),
                        ("TRAINER.MODAL cross needs DATASET.EVAL_SPLITS standard",)),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_dependent_values_are_checked_before_any_work(case, tmp_path, tiny_clip_root, capsys):
    trainer, config, opts, fragments = MODEL_CASES[case]
    base = KD_TINY if trainer == "PromptKD" else TINY
    assert run_main(tmp_path, tiny_clip_root, trainer, config, *base, *opts) == 1
    assert_one_clear_error(capsys, tmp_path, *fragments)


def test_teacher_at_its_own_resolution_is_not_held_to_input_size(tmp_path, tiny_clip_root):
    """INPUT.SIZE is the student's: a 64 px teacher passes validation beside a 32 px student
    (it sees the batch resized, tests/test_promptkd_resolution.py); a teacher that does not
    exist is still refused before any work."""
    teacher = _tiny_64px(tmp_path)
    cfg = _default_cfg("PromptKD", tiny_clip_root)
    cfg.TRAINER.PROMPTKD.TEACHER_NAME = teacher
    validate_config(cfg)
    cfg.TRAINER.PROMPTKD.TEACHER_NAME = str(tmp_path / "no-such-teacher.pt")
    with pytest.raises(UserError, match="no-such-teacher"):
        validate_config(cfg)


def test_zero_shot_input_size_from_the_command_line(tmp_path, tiny_clip_root):
    """The issue's case: a traceback deep in CLIP before; one line and exit 1 now."""
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "train.py"), "--root", str(tmp_path / "data"),
         "--trainer", "ZeroshotCLIP", "--dataset-config-file", DIGITS_CFG,
         "--config-file", COOP_CFG, "--output-dir", str(tmp_path / "out"), "--eval-only",
         *TINY, "MODEL.CLIP_ROOT", tiny_clip_root, "INPUT.SIZE", "(64, 64)"],
        capture_output=True, text=True, cwd=str(tmp_path),
    )  # fmt: skip
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert "INPUT.SIZE is (64, 64); use (32, 32)" in run.stderr
    assert not (tmp_path / "out").exists()


def _default_cfg(trainer: str, clip_root: str) -> CN:
    cfg = apply_config_extensions(get_cfg_default())
    cfg.TRAINER.NAME = trainer
    cfg.MODEL.CLIP_ROOT = clip_root
    cfg.MODEL.BACKBONE.NAME = "tiny-student"
    cfg.TRAINER.PROMPTKD.TEACHER_NAME = "tiny-teacher"
    cfg.INPUT.SIZE = (32, 32)  # the tiny stand-ins' resolution; every other value a default
    if cfg.TRAINER.MODAL == "base2novel":
        cfg.DATASET.EVAL_SPLITS = "base_new"  # PromptKD's default modal reports base / new
    return cfg


@pytest.mark.parametrize("trainer", TRAINER_REGISTRY.registered_names())
def test_every_registered_trainer_defaults_pass(trainer, tiny_clip_root):
    validate_config(_default_cfg(trainer, tiny_clip_root))


# Experiment configs only: configs/reporting/ holds the reporting tables' reference data.
CONFIG_FILES = sorted(
    p
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if os.sep + "reporting" + os.sep not in p
)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_shipped_config_file_passes(path):
    check_rules(setup_cfg(train.parse_args(["--config-file", path])), config_rules())


def test_rule_sentences():
    cfg = CN({"A": CN({"X": 0.0, "N": 3, "S": "b"}), "T": CN({"P": CN({"PREC": "FP8"})})})
    cases = [
        (Range("A.X", 0, low_open=True, note="why"), "A.X is 0.0; use a number > 0 (why)."),
        (Range("A.N", 0, 2, integer=True), "A.N is 3; use an integer from 0 to 2."),
        (Range("A.N", 5, integer=True, also=(-1,)), "A.N is 3; use -1 or an integer >= 5."),
        (OneOf("A.S", ("a",)), "A.S is 'b'; use a."),
        (OneOf("A.S", lambda: ["a", "c"]), "A.S is 'b'; use one of a, c."),
        (OneOf("T.*.PREC", ("fp32", "fp16"), ignore_case=True), "T.P.PREC is 'FP8'; use one"),
        (Check("A.S", lambda v: v + 1, "use a number"), "A.S is 'b'; use a number."),
    ]
    for rule, sentence in cases:
        with pytest.raises(UserError) as e:
            check_rules(cfg, [rule])
        assert str(e.value).startswith(sentence), (str(e.value), sentence)
    check_rules(cfg, [Range("A.N", 3, 3), OneOf("T.*.PREC", ("fp8",), ignore_case=True)])
    for value in (float("nan"), float("inf"), True):
        with pytest.raises(UserError):
            check_rules(CN({"X": value}), [Range("X", 0)])
    with pytest.raises(KeyError, match="A.Y"):  # a rule on a key that does not exist is a bug
        check_rules(cfg, [Range("A.Y", 0)])


def test_clip_sizes_from_shapes(tmp_path, tiny_clip_root):
    sizes = clip_sizes("tiny-teacher", tiny_clip_root)
    assert (sizes.input_resolution, sizes.vision_layers, sizes.text_layers) == (32, 12, 12)
    assert clip_sizes(_tiny_64px(tmp_path)).input_resolution == 64
    resnet = clip.model.CLIP(32, 96, (1, 1, 1, 1), 64, None, 77, 49408, 64, 1, 2)
    torch.save(resnet.state_dict(), tmp_path / "rn.pt")
    sizes = clip_sizes(str(tmp_path / "rn.pt"))
    assert (sizes.input_resolution, sizes.vision_layers, sizes.text_layers) == (96, None, 2)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a CLIP checkpoint"):
        clip_sizes(str(tmp_path / "other.pt"))


def _full_default_cfg() -> CN:
    return apply_config_extensions(get_cfg_default())


def test_every_range_rule_refuses_nan_and_inf():
    """NaN compares False with everything: a bound check alone would let it through."""
    cfg = _full_default_cfg()
    ranges = [r for r in config_rules() if isinstance(r, Range)]
    assert len(ranges) > 40  # the engine's and every registered trainer's
    for rule in ranges:
        for key, _ in config_rules_module._values(cfg, rule.key):
            for value in (float("nan"), float("inf"), float("-inf")):
                assert rule.problem(key, value), (key, value)


def _float_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for k, v in node.items():
        if isinstance(v, CN):
            keys += _float_keys(v, f"{prefix}{k}.")
        elif any(isinstance(x, float) for x in (v if isinstance(v, (list, tuple)) else [v])):
            keys.append(f"{prefix}{k}")
    return keys


def test_every_float_key_refuses_nan_and_inf():
    """Keys without a range rule (INPUT.GN_MEAN, INPUT.PIXEL_MEAN ...) too."""
    keys = _float_keys(_full_default_cfg())
    assert len(keys) > 25
    for key in keys:
        for bad in (float("nan"), float("inf")):
            cfg = _full_default_cfg()
            node, name = functools.reduce(getattr, key.split(".")[:-1], cfg), key.split(".")[-1]
            old = node[name]
            node[name] = type(old)([bad, *old[1:]]) if isinstance(old, (list, tuple)) else bad
            with pytest.raises(UserError) as e:
                config_rules_module.check_config_values(cfg)
            assert str(e.value).startswith(f"{key} is ") and "\n" not in str(e.value), str(e.value)
