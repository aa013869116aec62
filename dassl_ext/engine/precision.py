"""Precision names (fp32 / fp16 / bf16 / amp) mapped to dtypes and a ``torch.amp`` autocast.

Trainable parameters always stay fp32 (master weights); ``weight_dtype`` is for frozen
weights only. fp16 and amp need CUDA: on a CPU they warn once and run fp32, unless the
test-only switch ``DASSL_CPU_FP16=1`` (the ``cpu_fp16`` fixture) keeps them, so that the
official configs' path runs in the CPU test suite. A frozen model
(``resolve_frozen_precision``) also runs fp32 where bf16 would only be emulated.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from dataclasses import dataclass

import torch

from dassl_ext.config.rules import OneOf, register_config_rules
from dassl_ext.errors import UserError

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16", "amp")
register_config_rules(OneOf("TRAINER.*.PREC", PRECISIONS, ignore_case=True))
CPU_FP16_ENV = "DASSL_CPU_FP16"
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


_DTYPES = {  # name: weight dtype, autocast dtype, gradient scaler
    "fp32": (torch.float32, None, False), "bf16": (torch.bfloat16, torch.bfloat16, False),
    "fp16": (torch.float16, torch.float16, True), "amp": (torch.float32, torch.float16, True),
}  # fmt: skip


def _warn_once(key: tuple[str, str], message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def resolve_precision(name: str, device: torch.device | str) -> Precision:
    """The :class:`Precision` of ``name`` on ``device`` (fp16 / amp: see the module doc)."""
    device = torch.device(device)
    name = str(name).lower()
    if name not in PRECISIONS:
        raise UserError(f"Unknown precision {name!r} (PREC); use one of {', '.join(PRECISIONS)}.")
    cpu_fp16 = device.type == "cpu" and os.environ.get(CPU_FP16_ENV, "") == "1"
    kept = device.type == "cuda" or cpu_fp16
    if name in ("fp16", "amp") and not kept:
        _warn_once(
            (name, device.type),
            f"Precision {name} needs CUDA; running fp32 on {device.type} instead "
            "(results may differ slightly from a CUDA fp16 run).",
        )
        return Precision(name, "fp32", device, *_DTYPES["fp32"])
    return Precision(name, name, device, *_DTYPES[name])


def has_fast_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bf16 natively (CUDA compute capability >= 8, a CPU with
    AVX512-BF16 / AMX or an ARM CPU with bf16), so that bf16 is faster, not only smaller."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type != "cpu":
        return True  # other backends: trust that bf16 is supported where it is asked for
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        # oneDNN also "supports" bf16 on plain AVX512 by emulation, which is slower than fp32
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_frozen_precision(name: str, device: torch.device | str) -> Precision:
    """``resolve_precision`` for a frozen model (no gradients, so no master weights): bf16 on
    a device without native bf16 warns once and runs fp32, where bf16 would only be slower."""
    prec = resolve_precision(name, device)
    if prec.effective != "bf16" or has_fast_bf16(prec.device):
        return prec
    _warn_once(
        ("bf16-frozen", prec.device.type),
        f"This {prec.device.type} has no native bf16; running the frozen model in fp32 "
        "instead of bf16.",
    )
    return Precision(prec.name, "fp32", prec.device, *_DTYPES["fp32"])
