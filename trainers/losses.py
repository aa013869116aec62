"""Loss functions shared by the trainers, as pure functions of tensors. Each docstring states
the normalisation: the tuned weights of the official configs (TEXT_LOSS_WEIGHT 25,
IMAGE_LOSS_WEIGHT 10, PromptKD's KD_WEIGHT 1000) depend on it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def consistency_l1(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean(|features - target|)`` over ALL elements: PromptSRC's L_SCL-text (C x D) and
    L_SCL-image (B x D) on L2-normalised features (official ``F.l1_loss``); target detached."""
    return F.l1_loss(features, target.detach().to(features.dtype), reduction="mean")


def logits_kl(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target_logits) || softmax(logits))`` summed over B x C, divided by B * C
    (the number of logits, not the batch size): PromptSRC's L_SCL-logits; target detached."""
    log_p = F.log_softmax(logits, dim=1)
    log_q = F.log_softmax(target_logits.detach().to(logits.dtype), dim=1)
    kl = F.kl_div(log_p, log_q, reduction="sum", log_target=True)
    return kl / logits.numel()


def promptsrc_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    text_features: torch.Tensor,
    zs_text_features: torch.Tensor,
    image_features: torch.Tensor,
    zs_image_features: torch.Tensor,
    zs_logits: torch.Tensor,
    text_weight: float,
    image_weight: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PromptSRC's objective (spec §2.3) on L2-normalised features, ``zs_*`` frozen targets:
    ``CE (mean over B) + text_weight * consistency_l1(text) + image_weight *
    consistency_l1(image) + logits_kl``; returns ``(total, parts)``, the weighted terms
    ``ce``, ``scl_text``, ``scl_image``, ``scl_logits`` for logging."""
    parts = {
        "ce": F.cross_entropy(logits, labels),
        "scl_text": text_weight * consistency_l1(text_features, zs_text_features),
        "scl_image": image_weight * consistency_l1(image_features, zs_image_features),
        "scl_logits": logits_kl(logits, zs_logits),
    }
    total = sum(p.float() for p in parts.values())
    return total, parts


def gpa_weights(mean: float, std: float, num_epochs: int) -> list[float]:
    """Gaussian Prompt Aggregation weights ``w_e = N(e; mean, std)`` for epochs 1..num_epochs,
    normalised to sum 1 (spec §2.4; mean 15, std 1, 20 epochs: w_13 .054, w_14 .242, w_15 .399)."""
    if std <= 0:
        raise ValueError(f"GPA_STD must be > 0, got {std}")
    dens = [math.exp(-0.5 * ((e - mean) / std) ** 2) for e in range(1, num_epochs + 1)]
    total = sum(dens)
    if total == 0.0:
        raise ValueError(
            f"GPA weights vanish: GPA_MEAN={mean}, GPA_STD={std} put no mass on epochs "
            f"1..{num_epochs}; choose a mean within the epochs or a larger std."
        )
    return [d / total for d in dens]


def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """PromptKD's unlabeled distillation loss L_ukd (spec §3.4), before KD_WEIGHT, of (B, C)
    logits: ``KL(softmax(z_t/T) || softmax(z_s/T))`` summed over B x C, divided by ``B * C``
    (not the batch size: the official KD_WEIGHT 200 / 1000 is tuned for it), times ``T**2``."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    p_teacher = F.softmax(teacher_logits / t, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="sum") * (t * t) / student_logits.numel()


def symmetric_kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """KDPL's loss (ECCV 2024), before KD_WEIGHT, of (B, C) logits: the mean of the forward
    ``KL(p_t || p_s)`` and the reverse ``KL(p_s || p_t)``, ``p = softmax(z / T)``, each summed
    over B x C, divided by ``B * C`` and times ``T**2`` as :func:`kd_loss`, so KD_WEIGHT means
    the same for both (KDPL itself divides by B and has no temperature: its weight 1 is
    KD_WEIGHT C here, at T 1). Equal to ``(kd_loss(s, t, T) + kd_loss(t, s, T)) / 2``."""
    t = temperature
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits / t, dim=1)
    forward = F.kl_div(log_p_student, log_p_teacher, reduction="sum", log_target=True)
    reverse = F.kl_div(log_p_teacher, log_p_student, reduction="sum", log_target=True)
    return 0.5 * (forward + reverse) * (t * t) / student_logits.numel()


# TRAINER.PROMPTKD.LOSS -> PromptKD's distillation loss (student_logits, teacher_logits, T)
KD_LOSSES = {"kl": kd_loss, "symmetric": symmetric_kd_loss}
