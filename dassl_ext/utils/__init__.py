"""Utilities: atomic file writing, checkpoint IO, logging, torchrun helpers, seeding, meters.
Names are imported on first use, so that the torch-free modules (``atomic``, the checkpoint
lookup the shell scripts call) load without torch."""

from dassl_ext.utils.lazy import lazy_exports

_EXPORTS = {"set_random_seed": "dassl_ext.utils.tools", "setup_logger": "dassl_ext.utils.logger"}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
