"""Rules of the data keys (``INPUT``, ``DATASET``, ``DATALOADER``; see dassl_ext/config/rules.py).

The choices come from the modules that use them: a new transform is allowed here as soon
as it exists in transforms.py. Only keys the code reads have a rule. The choices that
transforms.py and base_dataset.py check themselves (for a config that was not validated)
are registered there.
"""

from __future__ import annotations

from typing import Any

from dassl_ext.config.rules import Check, OneOf, Range, register_config_rules
from dassl_ext.data.transforms import AVAILABLE_TRANSFORMS

SAMPLERS = ("RandomSampler", "SequentialSampler")


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _numbers(v: Any, n: int, positive: bool = False) -> bool:
    ok = len(v) == n and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    return ok and (not positive or all(x > 0 for x in v))


register_config_rules(
    Check("INPUT.SIZE", lambda v: _count(v) or (len(v) == 2 and all(map(_count, v))),
          "use (height, width), two integers >= 1"),
    Check("INPUT.TRANSFORMS", lambda v: all(t in AVAILABLE_TRANSFORMS for t in v),
          f"use names from {', '.join(AVAILABLE_TRANSFORMS)}"),
    Check("INPUT.PIXEL_MEAN", lambda v: _numbers(v, 3), "use three numbers, one per channel"),
    Check("INPUT.PIXEL_STD", lambda v: _numbers(v, 3, True), "use three numbers > 0"),
    Check("INPUT.RRCROP_SCALE", lambda v: _numbers(v, 2) and 0 < v[0] <= v[1] <= 1,
          "use (min, max) with 0 < min <= max <= 1"),
    Range("INPUT.COLORJITTER_H", 0, 0.5),
    Check("INPUT.GB_K", lambda v: _count(v) and v % 2, "use an odd integer >= 1",
          note="the blur kernel size"),
    *(Range(f"INPUT.{k}", 0) for k in ("GN_STD", *(f"COLORJITTER_{c}" for c in "BCS"))),
    *(Range(f"INPUT.{k}", 0, 1) for k in ("RGS_P", "GB_P")),
    *(Range(f"INPUT.{k}", 0, integer=True) for k in ("CROP_PADDING", "CUTOUT_N", "CUTOUT_LEN")),
    Range("DATASET.NUM_SHOTS", 0, integer=True, also=(-1,), note="0 or -1: all images"),
    Range("DATALOADER.NUM_WORKERS", 0, integer=True),
    OneOf("DATALOADER.TRAIN_X.SAMPLER", SAMPLERS),
    *(Range(f"DATALOADER.{k}.BATCH_SIZE", 1, integer=True) for k in ("TRAIN_X", "TEST")),
)  # fmt: skip
