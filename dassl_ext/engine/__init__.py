"""Training engine: trainers, precision, and the trainer registry."""

from dassl_ext.engine.build import build_trainer
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
    "TRAINER_REGISTRY",
    "FrozenTeacher",
    "Precision",
    "SimpleTrainer",
    "TeacherSupport",
    "TrainerBase",
    "TrainerX",
    "build_trainer",
    "has_fast_bf16",
    "resolve_frozen_precision",
    "resolve_precision",
]
