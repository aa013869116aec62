"""The frozen-teacher contract: what a trained model offers a distillation method (PromptKD),
and what a trainer class declares about serving as one.

A trainer whose trained model can teach sets the class attribute ``frozen_teacher`` to a
:class:`TeacherSupport` and implements the classmethod
``build_frozen_model(cfg, classnames, backbone, checkpoint) -> FrozenTeacher`` (frozen, eval
mode, on the CPU, fp32; ``checkpoint`` loaded when given).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class TeacherSupport:
    # False: the teacher is the pretrained CLIP itself (zero-shot); no checkpoint is loaded.
    needs_checkpoint: bool = True
    # The model folder in which the official code keeps such teachers (VLPromptLearner in
    # teacher_model/<dataset>/VLPromptLearner/); None: the checkpoint must be named.
    default_model_name: str | None = None


@runtime_checkable
class FrozenTeacher(Protocol):
    """Logits are ``exp(logit_scale) * image_features(images) @ text_features().T``."""

    logit_scale: torch.Tensor  # the raw (log) scale, as CLIP stores it
    input_resolution: int  # side length in pixels of the images it takes

    def text_features(self, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised class vectors (C', E) of the selected classes (all when None)."""

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's output (B, E) of ``images`` (B, 3, H, W) before normalisation,
        in its compute dtype (what a store of its outputs keeps, losslessly)."""

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised features (B, E) of ``images``: ``image_embedding`` normalised."""

    def drop_text_tower(self) -> None:
        """Free the text side once its class vectors are stored (the image side stays)."""
