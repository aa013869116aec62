"""Rules of the engine's own keys (``dassl_ext/config/defaults.py``); see ``rules.py``.

Only keys the code reads have a rule. The choices come from the modules that use them,
so a new optimizer, scheduler or transform is allowed here as soon as it exists there.
"""

from __future__ import annotations

from typing import Any

from dassl_ext.config.rules import Check, OneOf, Range
from dassl_ext.config.setup import MAX_SEED, NO_SEED
from dassl_ext.data.base_dataset import EVAL_SPLIT_MODES, PROTOCOLS
from dassl_ext.data.transforms import AVAILABLE_TRANSFORMS, INTERPOLATION_MODES
from dassl_ext.engine.precision import PRECISIONS
from dassl_ext.engine.simple import FINAL_MODELS
from dassl_ext.evaluation.evaluator import EVALUATORS
from dassl_ext.optim.lr_scheduler import AVAI_SCHEDS, AVAI_WARMUPS
from dassl_ext.optim.optimizer import AVAI_OPTIMS

SAMPLERS = ("RandomSampler", "SequentialSampler")
SUBSAMPLES = ("all", "base", "new")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _image_size(v: Any) -> bool:
    return _count(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(_count, v)))


def _numbers(v: Any, n: int, positive: bool = False) -> bool:
    ok = len(v) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    return ok and (not positive or all(x > 0 for x in v))


def _unit_interval_open_top(v: Any) -> bool:
    return 0 <= v < 1


def _crop_scale(v: Any) -> bool:
    return _numbers(v, 2) and 0 < v[0] <= v[1] <= 1


def _odd_count(v: Any) -> bool:
    return _count(v) and v % 2 == 1


_NONNEG_NUMBERS = (
    "INPUT.GN_STD", "INPUT.COLORJITTER_B", "INPUT.COLORJITTER_C", "INPUT.COLORJITTER_S",
    "OPTIM.WEIGHT_DECAY", "OPTIM.BASE_LR_MULT", "OPTIM.WARMUP_CONS_LR", "OPTIM.WARMUP_MIN_LR",
    "OPTIM.SGD_DAMPNING", "OPTIM.RMSPROP_ALPHA", "OPTIM.MOMENTUM",
)  # fmt: skip
_PROBABILITIES = ("INPUT.RGS_P", "INPUT.GB_P")
_NONNEG_INTEGERS = (
    "INPUT.CROP_PADDING", "INPUT.CUTOUT_N", "INPUT.CUTOUT_LEN", "DATALOADER.NUM_WORKERS",
    "TRAIN.CHECKPOINT_FREQ",
)  # fmt: skip
_POSITIVE_INTEGERS = (
    "DATALOADER.TRAIN_X.BATCH_SIZE", "DATALOADER.TEST.BATCH_SIZE", "OPTIM.MAX_EPOCH",
    "TRAIN.PRINT_FREQ",
)  # fmt: skip

DEFAULT_RULES = [
    Range("SEED", 0, MAX_SEED, integer=True, also=(NO_SEED,), note=f"{NO_SEED}: no fixed seed"),
    Check("INPUT.SIZE", _image_size, "use (height, width), two integers >= 1"),
    OneOf("INPUT.INTERPOLATION", tuple(INTERPOLATION_MODES)),
    Check(
        "INPUT.TRANSFORMS",
        lambda v: all(t in AVAILABLE_TRANSFORMS for t in v),
        f"use names from {', '.join(AVAILABLE_TRANSFORMS)}",
    ),
    Check("INPUT.PIXEL_MEAN", lambda v: _numbers(v, 3), "use three numbers, one per channel"),
    Check("INPUT.PIXEL_STD", lambda v: _numbers(v, 3, True), "use three numbers > 0"),
    Check("INPUT.RRCROP_SCALE", _crop_scale, "use (min, max) with 0 < min <= max <= 1"),
    Range("INPUT.COLORJITTER_H", 0, 0.5),
    Check("INPUT.GB_K", _odd_count, "use an odd integer >= 1", note="the blur kernel size"),
    Range("DATASET.NUM_SHOTS", 0, integer=True, also=(-1,), note="0 or -1: all images"),
    OneOf("DATASET.SUBSAMPLE_CLASSES", SUBSAMPLES),
    OneOf("DATASET.PROTOCOL", PROTOCOLS),
    OneOf("DATASET.EVAL_SPLITS", EVAL_SPLIT_MODES),
    OneOf("DATALOADER.TRAIN_X.SAMPLER", SAMPLERS),
    OneOf("OPTIM.NAME", AVAI_OPTIMS, ignore_case=True),
    Range("OPTIM.LR", 0, low_open=True),
    Check("OPTIM.ADAM_BETA1", _unit_interval_open_top, "use a number >= 0 and < 1"),
    Check("OPTIM.ADAM_BETA2", _unit_interval_open_top, "use a number >= 0 and < 1"),
    OneOf("OPTIM.LR_SCHEDULER", AVAI_SCHEDS),
    Range("OPTIM.GAMMA", 0, low_open=True),
    Range("OPTIM.WARMUP_EPOCH", 0, integer=True, also=(-1,), note="-1 or 0: no warm-up"),
    OneOf("OPTIM.WARMUP_TYPE", AVAI_WARMUPS),
    Range("TRAIN.GRAD_CLIP_NORM", 0, note="0: no clipping"),
    Range("DIST.TIMEOUT", 0, low_open=True),
    OneOf("TEST.FINAL_MODEL", FINAL_MODELS),
    OneOf("TEST.EVALUATOR", tuple(EVALUATORS)),
    OneOf(
        "TEST.SPLIT",
        ("test", "val", "base", "new"),
        note="base and new need DATASET.EVAL_SPLITS base_new",
    ),
    OneOf("TRAINER.*.PREC", PRECISIONS, ignore_case=True),
    *(Range(k, 0) for k in _NONNEG_NUMBERS),
    *(Range(k, 0, 1) for k in _PROBABILITIES),
    *(Range(k, 0, integer=True) for k in _NONNEG_INTEGERS),
    *(Range(k, 1, integer=True) for k in _POSITIVE_INTEGERS),
]
