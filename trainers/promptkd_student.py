"""The PromptKD student: a prompted CLIP image encoder, a projector, a logit scale.

Attribute names are the official ones (spec §3.3), so a released official student checkpoint
loads as it is. No text tower: the class vectors are the teacher's text features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dassl_ext.modeling import PromptedImageEncoder, cast_frozen_weights, set_trainable
from dassl_ext.modeling.lean import use_lean_quick_gelu


class FeatureProjector(nn.Module):
    """Official ``Feature_Trans_Module_two_layer``: 1x1 Conv -> BN -> ReLU -> 1x1 Conv, from
    the student's image features (B, in_dim) to the teacher's width (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, kernel_size=1),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_dim, out_dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(x[:, :, None, None])[:, :, 0, 0]  # (B, in) -> (B, out)


class PromptKDStudent(nn.Module):
    """``logits = exp(logit_scale) * norm(proj(image_encoder(x))) @ W^T``: image features
    (B, E_s) projected to the teacher's width E_t; ``logit_scale``: the student CLIP's (raw,
    frozen)."""

    def __init__(self, image_encoder: nn.Module, logit_scale: torch.Tensor, student_dim: int,
                 teacher_dim: int) -> None:  # fmt: skip
        super().__init__()
        self.image_encoder = image_encoder
        self.logit_scale = nn.Parameter(logit_scale.detach().clone().float(), requires_grad=False)
        self.VPT_image_trans = FeatureProjector(student_dim, teacher_dim)
        # The teacher's text features (C, E_t) once known: saved with the weights; an official
        # checkpoint, without them, keeps the current value (_load_class_features).
        self.register_buffer("class_text_features", torch.zeros(0, teacher_dim))
        self.register_load_state_dict_pre_hook(_load_class_features)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The visual prompts and the projector (by module membership, spec §3.3)."""
        return prompt_parameters(self.image_encoder) + list(self.VPT_image_trans.parameters())

    def set_class_text_features(self, features: torch.Tensor) -> None:
        self.class_text_features = features.detach().float().to(self.logit_scale.device)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised projected image features, (B, E_t)."""
        feats = self.image_encoder(images)  # (B, E_s)
        # The projector's convs are fp32 masters; under autocast they run in the autocast dtype.
        feats = self.VPT_image_trans(feats.to(self.VPT_image_trans.conv1[0].weight.dtype))
        return F.normalize(feats, dim=-1)

    def forward(self, images: torch.Tensor, class_features: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) against ``class_features`` (C, E_t), which are L2-normalised."""
        feats = self.features(images)
        return self.logit_scale.exp() * feats @ class_features.to(feats.dtype).t()


def _load_class_features(module: PromptKDStudent, state_dict: dict, prefix: str, *args) -> None:
    """Load hook: the checkpoint's class vectors (any number of classes), else the current."""
    key = prefix + "class_text_features"
    if key in state_dict:
        module.set_class_text_features(state_dict[key])
    state_dict[key] = module.class_text_features


def prompt_parameters(encoder: nn.Module) -> list[nn.Parameter]:
    """The visual prompts of a prompted image encoder: ``VPT`` and the blocks' deep prompts."""
    first = [encoder.VPT] if getattr(encoder, "VPT", None) is not None else []
    return first + list(encoder.deep_prompts())


def new_student(clip_model: nn.Module, n_ctx: int, depth: int, teacher_dim: int,
                weight_dtype: torch.dtype, lean: bool = True) -> PromptKDStudent:  # fmt: skip
    """The student to train on ``clip_model``'s image tower: prompts and projector trainable
    (fp32), the frozen weights in ``weight_dtype``; ``lean``: the QuickGELU that keeps less
    for the backward (same values; the official code has the plain one)."""
    encoder = PromptedImageEncoder(clip_model.visual, n_ctx, depth)
    student = PromptKDStudent(encoder, clip_model.logit_scale, encoder.output_dim, teacher_dim)
    set_trainable(student, student.trainable_parameters())
    cast_frozen_weights(student.image_encoder, weight_dtype)
    if lean:
        use_lean_quick_gelu(student.image_encoder)
    return student
