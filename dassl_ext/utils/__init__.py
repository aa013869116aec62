"""Utilities: atomic file writing, checkpoint IO, logging, torchrun helpers, seeding, meters.

Names are imported on first use, so that the torch-free modules (``atomic``, the checkpoint
lookup the shell scripts call) load without torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "AverageMeter": "dassl_ext.utils.tools",
    "MetricMeter": "dassl_ext.utils.tools",
    "load_checkpoint": "dassl_ext.utils.checkpoint",
    "save_checkpoint": "dassl_ext.utils.checkpoint",
    "set_random_seed": "dassl_ext.utils.tools",
    "setup_logger": "dassl_ext.utils.logger",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dassl_ext.utils' has no attribute {name!r}")
