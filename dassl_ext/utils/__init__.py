"""Utilities: checkpoint IO, logging, torchrun helpers, seeding and meters."""

from dassl_ext.utils.checkpoint import load_checkpoint, save_checkpoint
from dassl_ext.utils.logger import setup_logger
from dassl_ext.utils.tools import AverageMeter, MetricMeter, set_random_seed

__all__ = [
    "AverageMeter",
    "MetricMeter",
    "load_checkpoint",
    "save_checkpoint",
    "set_random_seed",
    "setup_logger",
]
