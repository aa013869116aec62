"""Optimizers and per-epoch LR schedulers with Dassl's config keys."""

from dassl_ext.optim.lr_scheduler import DasslLRScheduler, build_lr_scheduler
from dassl_ext.optim.optimizer import build_optimizer

__all__ = ["DasslLRScheduler", "build_lr_scheduler", "build_optimizer"]
