"""Build the trainer named by ``cfg.TRAINER.NAME``, for a config scaled to the processes."""

from __future__ import annotations

from dassl_ext.data.data_manager import TrainBatch
from dassl_ext.registry import TRAINER_REGISTRY


def scale_for_world_size(cfg, world_size: int):
    """Multiply ``OPTIM.LR`` by the LR factor of the train batch (:class:`TrainBatch`) on
    ``world_size`` processes, so that ``config.yaml`` holds the LR used; returns ``cfg``.
    Refuses a global batch that does not split over the processes."""
    factor = TrainBatch.of(cfg, world_size).lr_factor
    if factor > 1:
        cfg.defrost()
        cfg.OPTIM.LR = float(cfg.OPTIM.LR) * factor
        cfg.freeze()
    return cfg


def build_trainer(cfg):
    """``TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)``; an unknown name lists the known ones."""
    return TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)
