"""Leaner backward through frozen CLIP blocks: CLIP's ``QuickGELU`` (``x * sigmoid(1.702 x)``)
keeps ``x`` and the sigmoid for the backward, (L, B, 4 x width) each per block: 40% of what
a ViT-B/16 keeps for the backward of its prompts. :class:`LeanQuickGELU` keeps ``x`` only
and recomputes the sigmoid (one cheap elementwise op).
"""

from __future__ import annotations

import torch
from torch import nn

from dassl_ext.modeling._clip import clip

ALPHA = 1.702  # clip.model.QuickGELU's constant


class _QuickGELUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(ALPHA * x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(ALPHA * x)
        return grad * (s + ALPHA * x * s * (1 - s))  # d/dx [x s(ax)] = s + a x s (1 - s)


class LeanQuickGELU(nn.Module):
    """``clip.model.QuickGELU`` with the same forward and a backward that keeps ``x`` only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _QuickGELUFunction.apply(x)


def use_lean_quick_gelu(module: nn.Module) -> int:
    """Replace every ``clip.model.QuickGELU`` inside ``module`` by :class:`LeanQuickGELU`
    (no parameters, so state dicts are unchanged); returns how many were replaced."""
    count = 0
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, clip.model.QuickGELU):
                setattr(parent, name, LeanQuickGELU())
                count += 1
    return count
