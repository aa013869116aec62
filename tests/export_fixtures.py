"""A PromptKD student export for tests that read exports (predict, damaged-file checks)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

import trainers  # noqa: F401  (registers the trainers and their config sections)
from dassl_ext.config import apply_config_extensions, get_cfg_default
from dassl_ext.modeling import PromptedImageEncoder, clip
from trainers.promptkd_export import export_student
from trainers.promptkd_student import PromptKDStudent


def write_tiny_export(path: str, classnames: list[str]) -> str:
    """Export an untrained tiny student (32 px, 2 layers, seed 0) for ``classnames`` to ``path``."""
    torch.manual_seed(0)
    visual = clip.model.VisionTransformer(32, 8, 64, 2, 1, 32)
    model = PromptKDStudent(PromptedImageEncoder(visual, 2, 2), torch.tensor(4.6), 32, 48)
    model.set_class_text_features(F.normalize(torch.randn(len(classnames), 48), dim=-1))
    cfg = apply_config_extensions(get_cfg_default())
    cfg.INPUT.SIZE = (32, 32)
    export_student(SimpleNamespace(model=model.eval(), classnames=classnames, cfg=cfg), path)
    return path
