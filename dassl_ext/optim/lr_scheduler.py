"""Per-epoch LR schedules with Dassl's semantics, as one closed-form torch scheduler.

Dassl's warm-up wrapper around a torch scheduler raises a TypeError on current PyTorch and
pickles the nested scheduler. Here each epoch's LR is computed in closed form, reproducing
the sequence of Dassl's chained schedulers (spec §5.3), and ``state_dict()`` holds only
plain numbers (loadable with ``torch.load(weights_only=True)``).

With ``W`` warm-up epochs and 0-based epoch ``e`` (the scheduler steps once per epoch):

* ``e < W``: constant warm-up gives ``WARMUP_CONS_LR``; linear warm-up gives
  ``WARMUP_MIN_LR`` at ``e = 0`` and ``LR * e / W`` after.
* ``e >= W`` with ``WARMUP_RECOUNT`` (or no warm-up): the main schedule restarted at
  ``k = e - W``: cosine ``LR * (1 + cos(pi k / MAX_EPOCH)) / 2``; single_step
  ``LR * GAMMA ** (k // STEPSIZE)``; multi_step ``LR * GAMMA ** #{m <= k}``.
* ``e >= W`` without recount: Dassl sets the main scheduler's epoch to ``W``, and the
  chained torch formulas then continue from ``LR`` at ``e = W``: cosine
  ``LR * (1 + cos(pi e / T)) / (1 + cos(pi W / T))``; steps counted in ``(W, e]``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from dassl_ext.config.rules import OneOf, Range, register_config_rules
from dassl_ext.errors import UserError

AVAI_SCHEDS = ("single_step", "multi_step", "cosine")
AVAI_WARMUPS = ("constant", "linear")
_SCHEDULE = OneOf("OPTIM.LR_SCHEDULER", AVAI_SCHEDS)
_WARMUP = OneOf("OPTIM.WARMUP_TYPE", AVAI_WARMUPS)
register_config_rules(
    _SCHEDULE,
    _WARMUP,
    Range("OPTIM.MAX_EPOCH", 1, integer=True),
    Range("OPTIM.GAMMA", 0, low_open=True),
    Range("OPTIM.WARMUP_EPOCH", 0, integer=True, also=(-1,), note="-1 or 0: no warm-up"),
    Range("OPTIM.WARMUP_CONS_LR", 0),
    Range("OPTIM.WARMUP_MIN_LR", 0),
)


class DasslLRScheduler(LRScheduler):
    """Closed-form per-epoch LR: ``schedule`` in AVAI_SCHEDS plus optional warm-up."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, optim_cfg: Any, stepsize: list[int] | int
    ) -> None:
        """``stepsize``: an int for single_step, the milestones for multi_step."""
        # Attributes are plain numbers / lists only: they end up in state_dict().
        self.schedule = optim_cfg.LR_SCHEDULER
        self.max_epoch = int(optim_cfg.MAX_EPOCH)
        multi = isinstance(stepsize, (list, tuple))
        self.stepsize = [int(s) for s in stepsize] if multi else int(stepsize)
        self.gamma = float(optim_cfg.GAMMA)
        self.warmup_epoch = max(int(optim_cfg.WARMUP_EPOCH), 0)
        self.warmup_type = optim_cfg.WARMUP_TYPE
        self.warmup_cons_lr = float(optim_cfg.WARMUP_CONS_LR)
        self.warmup_min_lr = float(optim_cfg.WARMUP_MIN_LR)
        self.warmup_recount = bool(optim_cfg.WARMUP_RECOUNT)
        super().__init__(optimizer)

    def _factor(self, e: int) -> float:
        """Multiplier of the base LR at epoch ``e >= warmup_epoch`` (main schedule)."""
        w = self.warmup_epoch
        recount = self.warmup_recount or w == 0
        if self.schedule == "cosine":
            t = float(self.max_epoch)
            if recount:
                return (1 + math.cos(math.pi * (e - w) / t)) / 2
            return (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * w / t))
        if self.schedule == "single_step":
            s = self.stepsize
            return self.gamma ** ((e - w) // s if recount else e // s - w // s)
        # multi_step; a milestone at 0 fires when the torch scheduler is built.
        fired = [m for m in self.stepsize if (m <= e - w if recount else m <= e and not 0 < m <= w)]
        return self.gamma ** len(fired)

    def lr_at(self, epoch: int) -> list[float]:
        """Learning rate of every param group at 0-based ``epoch``."""
        if epoch < self.warmup_epoch:
            if self.warmup_type == "constant":
                return [self.warmup_cons_lr for _ in self.base_lrs]
            if epoch == 0:
                return [self.warmup_min_lr for _ in self.base_lrs]
            return [lr * epoch / self.warmup_epoch for lr in self.base_lrs]
        f = self._factor(epoch)
        return [lr * f for lr in self.base_lrs]

    def get_lr(self) -> list[float]:
        return self.lr_at(self.last_epoch)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any) -> DasslLRScheduler:
    """Build the scheduler named by ``OPTIM.LR_SCHEDULER``; call ``step()`` once per epoch."""
    name, max_epoch, stepsize = optim_cfg.LR_SCHEDULER, optim_cfg.MAX_EPOCH, optim_cfg.STEPSIZE
    _SCHEDULE.check(name)
    if name == "cosine":
        stepsize = -1
    elif name == "single_step":
        stepsize = stepsize[-1] if isinstance(stepsize, (list, tuple)) else stepsize
        if not isinstance(stepsize, int):
            raise UserError(f"OPTIM.STEPSIZE must be an integer for single_step, got {stepsize!r}.")
        stepsize = stepsize if stepsize > 0 else max_epoch
    elif not isinstance(stepsize, (list, tuple)):
        raise UserError(f"OPTIM.STEPSIZE must be a list for multi_step, got {stepsize!r}.")
    warmup_epoch = max(int(optim_cfg.WARMUP_EPOCH), 0)
    if warmup_epoch:
        _WARMUP.check(optim_cfg.WARMUP_TYPE)
    if (
        name == "cosine"
        and warmup_epoch
        and not optim_cfg.WARMUP_RECOUNT
        and warmup_epoch >= max_epoch
    ):
        raise UserError("OPTIM.WARMUP_EPOCH must be below OPTIM.MAX_EPOCH when not recounting.")
    return DasslLRScheduler(optimizer, optim_cfg, stepsize)
