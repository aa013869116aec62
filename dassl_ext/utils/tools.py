"""Seeding, RNG state capture/restore (as plain containers), and running-average meters."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import numpy as np
import torch


def set_random_seed(seed: int) -> None:
    """Seed ``random``, numpy and torch (all devices). Seed 0 is a valid seed."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU, CUDA), numpy and ``random`` as tensors/lists/ints only,
    so that checkpoints holding them load with ``weights_only=True``."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "random": {"version": py_state[0], "state": list(py_state[1]), "gauss": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    r = state["random"]
    random.setstate((r["version"], tuple(r["state"]), r["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


class AverageMeter:
    """The last value and the running mean of a scalar."""

    def __init__(self) -> None:
        self.val, self.avg, self.sum, self.count = 0.0, 0.0, 0.0, 0

    def update(self, val: float | torch.Tensor, n: int = 1) -> None:
        self.val = val.item() if isinstance(val, torch.Tensor) else val
        self.sum += self.val * n
        self.count += n
        self.avg = self.sum / self.count


class MetricMeter:
    """A group of :class:`AverageMeter` keyed by name; ``str`` is Dassl's ``name val (avg)``."""

    def __init__(self) -> None:
        self.meters: dict[str, AverageMeter] = defaultdict(AverageMeter)

    def update(self, input_dict: dict[str, float | torch.Tensor] | None) -> None:
        if input_dict is None:
            return
        if not isinstance(input_dict, dict):
            raise TypeError("forward_backward() must return a dict of scalars, e.g. {'loss': x}.")
        for k, v in input_dict.items():
            self.meters[k].update(v)

    def __str__(self) -> str:
        return " ".join(
            f"{name} {meter.val:.4f} ({meter.avg:.4f})" for name, meter in self.meters.items()
        )
