"""Precision names (fp32 / fp16 / bf16 / amp) mapped to dtypes and a ``torch.amp`` autocast.

Trainable parameters always stay fp32 (master weights); ``weight_dtype`` is for frozen
weights only. fp16 and amp need CUDA: on a CPU they warn once and run fp32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from dassl_ext.errors import UserError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "amp")
_warned: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Precision:
    """What runs for a requested precision ``name`` on ``device``."""

    name: str
    effective: str
    device: torch.device
    weight_dtype: torch.dtype
    autocast_dtype: torch.dtype | None
    use_scaler: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.amp.autocast`` for this precision, or a no-op context for fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.amp.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """Map a precision name to dtypes for ``device``; fp16/amp off CUDA run (and say) fp32."""
    device = torch.device(device)
    name = str(name).lower()
    if name not in PRECISIONS:
        raise UserError(f"Unknown precision {name!r} (PREC); use one of {', '.join(PRECISIONS)}.")
    if name in ("fp16", "amp") and device.type != "cuda":
        if (name, device.type) not in _warned:
            _warned.add((name, device.type))
            logger.warning(
                f"Precision {name} needs CUDA; running fp32 on {device.type} instead "
                "(results may differ slightly from a CUDA fp16 run)."
            )
        return Precision(name, "fp32", device, torch.float32, None, False)
    if name == "fp32":
        return Precision(name, "fp32", device, torch.float32, None, False)
    if name == "bf16":
        return Precision(name, "bf16", device, torch.bfloat16, torch.bfloat16, False)
    if name == "fp16":
        return Precision(name, "fp16", device, torch.float16, torch.float16, True)
    return Precision(name, "amp", device, torch.float32, torch.float16, True)
