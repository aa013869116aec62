"""Build the trainer named by ``cfg.TRAINER.NAME``."""

from __future__ import annotations

from dassl_ext.registry import TRAINER_REGISTRY


def build_trainer(cfg):
    """``TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)``; an unknown name lists the known ones."""
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
