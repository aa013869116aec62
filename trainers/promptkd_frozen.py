"""PromptKD's frozen teacher in its own precision (``TRAINER.PROMPTKD.TEACHER_PREC``).

The teacher is never trained, so it needs no fp32 master weights: its CLIP weights are read
straight into the teacher's dtype (``clip_weight_dtype``), and it runs under its own
autocast, whatever precision the student trains in. Its text features are computed in
chunks of classes, so the memory they take does not grow with the number of classes.
"""

from __future__ import annotations

import torch
from torch import nn

from dassl_ext.engine import Precision, resolve_frozen_precision
from dassl_ext.engine.precision import PRECISIONS
from dassl_ext.errors import UserError
from dassl_ext.modeling import cast_frozen_weights

TEXT_CHUNK = 128  # classes per teacher text forward: (128, 77, 4 x width) at most


def teacher_precision(cfg, device: torch.device) -> Precision:
    """The teacher's precision: ``TEACHER_PREC``, or the trainer's ``PREC`` when empty; bf16
    runs fp32 (with one warning) on a device without native bf16."""
    pk = cfg.TRAINER.PROMPTKD
    name = str(pk.TEACHER_PREC).lower()
    if name and name not in PRECISIONS:
        raise UserError(
            f"TRAINER.PROMPTKD.TEACHER_PREC is {pk.TEACHER_PREC!r}; use one of "
            f"{', '.join(PRECISIONS)}, or leave it empty for PREC."
        )
    return resolve_frozen_precision(name or pk.PREC, device)


def prepare_frozen_teacher(teacher: nn.Module, prec: Precision) -> nn.Module:
    """Eval mode, no gradients, CLIP weights in ``prec.weight_dtype`` (LayerNorms and
    embeddings fp32, see ``cast_frozen_weights``), on ``prec.device``. Returns ``teacher``."""
    teacher.eval().requires_grad_(False)
    cast_frozen_weights(teacher, prec.weight_dtype)  # before the move: half the transfer
    return teacher.to(prec.device)


@torch.no_grad()
def teacher_text_features(
    teacher: nn.Module, n_classes: int, prec: Precision, chunk: int = TEXT_CHUNK
) -> torch.Tensor:
    """The teacher's normalised text features of classes ``0..n_classes-1``, (C, E) fp32,
    computed ``chunk`` classes at a time under the teacher's autocast."""
    ids = torch.arange(n_classes, device=prec.device)
    with prec.autocast():
        return torch.cat([teacher.text_features(part).float() for part in ids.split(chunk)])
