"""Training engine: trainers, precision, and the trainer registry.

Importing it registers the config rules of the engine's, the data's, the optimizers' and
the evaluator's keys (:mod:`dassl_ext.engine.config_rules`).
"""

import dassl_ext.engine.config_rules  # noqa: F401
from dassl_ext.engine.build import build_trainer, scale_for_world_size
from dassl_ext.engine.precision import (
    Precision,
    has_fast_bf16,
    resolve_frozen_precision,
    resolve_precision,
)
from dassl_ext.engine.simple import SimpleTrainer, TrainerX
from dassl_ext.engine.teacher import FrozenTeacher, TeacherSupport
from dassl_ext.engine.trainer import TrainerBase
from dassl_ext.registry import TRAINER_REGISTRY

__all__ = [
    "TRAINER_REGISTRY", "FrozenTeacher", "Precision", "SimpleTrainer", "TeacherSupport",
    "TrainerBase", "TrainerX", "build_trainer", "has_fast_bf16", "resolve_frozen_precision",
    "resolve_precision", "scale_for_world_size",
]  # fmt: skip
