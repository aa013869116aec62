"""Rules of the engine's keys (``SEED``, ``TRAIN``, ``DIST``, ``TEST``), and the import of
every package that registers rules, so that ``import dassl_ext.engine`` brings them all
(see dassl_ext/config/rules.py)."""

from __future__ import annotations

import dassl_ext.data.config_rules  # noqa: F401  INPUT, DATASET, DATALOADER
import dassl_ext.engine.precision  # noqa: F401  TRAINER.*.PREC
import dassl_ext.evaluation.evaluator  # noqa: F401  TEST.EVALUATOR
import dassl_ext.optim  # noqa: F401  OPTIM
from dassl_ext.config.rules import OneOf, Range, register_config_rules
from dassl_ext.config.setup import MAX_SEED, NO_SEED
from dassl_ext.engine.simple import FINAL_MODELS

register_config_rules(
    Range("SEED", 0, MAX_SEED, integer=True, also=(NO_SEED,), note=f"{NO_SEED}: no fixed seed"),
    Range("TRAIN.GRAD_CLIP_NORM", 0, note="0: no clipping"),
    Range("TRAIN.CHECKPOINT_FREQ", 0, integer=True),
    Range("TRAIN.PRINT_FREQ", 1, integer=True),
    Range("DIST.TIMEOUT", 0, low_open=True),
    OneOf("TEST.FINAL_MODEL", FINAL_MODELS),
    OneOf(
        "TEST.SPLIT",
        ("test", "val", "base", "new"),
        note="base and new need DATASET.EVAL_SPLITS base_new",
    ),
)
