"""Work around the epoch loop as hooks (as detectron2's ``HookBase``).

The trainer calls ``before_train``, ``before_epoch``, ``after_epoch`` and ``after_train`` of
its hooks in the order of their :class:`Priority` (equal priorities in registration order).
Hooks share values through the trainer's :class:`~dassl_ext.engine.events.EventStorage`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import torch
from torch import nn

from dassl_ext.utils.atomic import write_text_atomic, write_torch_atomic
from dassl_ext.utils.checkpoint import BEST_FILE, CorruptCheckpointError, load_checkpoint
from dassl_ext.utils.distributed import is_main_process

logger = logging.getLogger(__name__)


class Priority(IntEnum):
    """When a hook runs among the trainer's hooks: lower first."""

    NORMAL = 50  # the default: prepare the run, or change the weights evaluated and saved
    SELECTION = 60  # ModelSelection: evaluate on val, keep the best
    METRICS = 70  # MetricsWriter: one metrics.jsonl row per epoch
    CHECKPOINT = 80  # PeriodicCheckpointer: model.pth.tar-<epoch>
    LAST = 90  # look at everything the epoch wrote


class HookBase:
    """A hook; ``trainer`` is set when the trainer registers it."""

    trainer: Any = None
    priority: int = Priority.NORMAL

    def before_train(self) -> None:
        """After resuming (``trainer.start_epoch`` is known), before the first epoch."""

    def before_epoch(self) -> None:
        """Before ``trainer.epoch`` runs."""

    def after_epoch(self) -> None:
        """After ``trainer.epoch`` ran and its LR step was taken."""

    def after_train(self) -> None:
        """After the final evaluation."""


class CallbackHook(HookBase):
    """A hook made of functions of the trainer, e.g. ``CallbackHook(before_train=fn)``."""

    def __init__(self, **callbacks: Callable[[Any], None]) -> None:
        unknown = set(callbacks) - {"before_train", "before_epoch", "after_epoch", "after_train"}
        if unknown:
            raise TypeError(f"CallbackHook has no stage {sorted(unknown)}")
        for stage, fn in callbacks.items():
            setattr(self, stage, lambda fn=fn: fn(self.trainer))


class ModelSelection(HookBase):
    """With ``TEST.FINAL_MODEL best_val``: evaluate on val after each epoch (its metrics go
    to the trainer's storage as ``val/<metric>``) and save ``model-best.pth.tar`` when the
    accuracy is strictly higher (the earliest best wins)."""

    priority = Priority.SELECTION

    def after_epoch(self) -> None:
        trainer, cfg = self.trainer, self.trainer.cfg
        if cfg.TEST.NO_TEST or cfg.TEST.FINAL_MODEL != "best_val":
            return
        val_acc = trainer.test(split="val")
        if val_acc > trainer.best_result:
            trainer.best_result, trainer.best_epoch = val_acc, trainer.epoch + 1
            trainer.save_model(trainer.epoch, trainer.output_dir, val_acc, BEST_FILE)


class MetricsWriter(HookBase):
    """``<output>/metrics.jsonl``: epoch, LR, mean losses and val accuracy, one row per epoch
    (rank 0), from what the epoch put in the trainer's storage (``train/lr``,
    ``train/<loss>``: running means over the epoch; ``val/accuracy``: None when not
    selecting). Before training, the file keeps only the rows of the epochs already trained
    (none for a new run: rows an earlier run in the folder left would mix two runs' curves),
    and damaged rows (a line cut short, not an epoch record) are dropped with a warning."""

    priority = Priority.METRICS

    def path(self) -> str:
        return os.path.join(self.trainer.output_dir, "metrics.jsonl")

    def _rows(self) -> list[str]:
        if not os.path.exists(self.path()):
            return []
        with open(self.path(), encoding="utf-8", errors="replace") as f:
            return [r if r.endswith("\n") else r + "\n" for r in f if r.strip()]

    def before_train(self) -> None:
        if not (is_main_process() and os.path.exists(self.path())):
            return
        start = self.trainer.start_epoch
        rows = self._rows()
        epochs = [_row_epoch(r) for r in rows]
        kept = [r for r, e in zip(rows, epochs) if e is not None and e <= start]
        damaged = sum(e is None for e in epochs)
        if damaged:
            logger.warning(
                f"Dropped {damaged} damaged row(s) of {self.path()} (a line cut short, or not "
                "an epoch record)."
            )
        if start == 0 and len(kept) < len(rows) - damaged:
            logger.warning(
                f"Dropped the rows an earlier run left in {self.path()} (no "
                "checkpoint of it is resumed, so its curve is not this run's)."
            )
        write_text_atomic(self.path(), "".join(kept))

    def after_epoch(self) -> None:
        if not is_main_process():
            return
        storage = self.trainer.storage
        losses = storage.epoch_scalars("train/")
        row = {
            "epoch": self.trainer.epoch + 1,
            "lr": losses.pop("lr", None),
            "loss": losses,
            "val_accuracy": storage.epoch_scalars("val/").get("accuracy"),
        }
        write_text_atomic(self.path(), "".join(self._rows()) + json.dumps(row) + "\n")


def _row_epoch(row: str) -> int | None:
    """The epoch of one ``metrics.jsonl`` row; None for a damaged row."""
    try:
        epoch = json.loads(row).get("epoch")
    except (ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


class PeriodicCheckpointer(HookBase):
    """Save every registered model as ``model.pth.tar-<epoch>`` every
    ``TRAIN.CHECKPOINT_FREQ`` epochs (0: never) and after the last epoch."""

    priority = Priority.CHECKPOINT

    def after_epoch(self) -> None:
        trainer = self.trainer
        freq = trainer.cfg.TRAIN.CHECKPOINT_FREQ
        last_epoch = trainer.epoch + 1 == trainer.max_epoch
        if (freq > 0 and (trainer.epoch + 1) % freq == 0) or last_epoch:
            trainer.save_model(trainer.epoch, trainer.output_dir)


class ParameterAveraging(HookBase):
    """A weighted average of parameters over the epochs (PromptSRC's Gaussian Prompt
    Aggregation): after epoch e, ``weights[e] * p`` is added to a running sum; after the last
    epoch the sum is loaded into the parameters, so selection and checkpointing (later
    priorities) evaluate and save the average.

    The running sum after every epoch is kept in ``<output>/<state_file>`` (parameters only:
    small), so that a run resumed from any checkpoint continues the same average.
    """

    def __init__(
        self, weights: list[float], params: list[nn.Parameter], state_file: str, name: str
    ) -> None:
        self.weights, self.params = weights, params
        self.state_file, self.name = state_file, name
        self.sum: list[torch.Tensor] | None = None  # one running sum per parameter
        self.history: dict[int, list[torch.Tensor]] = {}  # epoch -> sum after it

    def before_train(self) -> None:
        trainer = self.trainer
        if trainer.start_epoch == 0:
            return
        path = os.path.join(trainer.cfg.RESUME, self.state_file)
        sums = {}
        if os.path.isfile(path):
            try:
                sums = load_checkpoint(path)["sums"]
            except (CorruptCheckpointError, KeyError, TypeError):
                logger.warning(f"{path} is truncated or corrupt: it is not used.")
            sums = {e: [t.to(trainer.device) for t in v] for e, v in sums.items()}
        if trainer.start_epoch in sums:  # the running sum after the resumed epoch
            self.history = {e: v for e, v in sums.items() if e <= trainer.start_epoch}
            self.sum = [t.clone() for t in sums[trainer.start_epoch]]
        else:
            logger.warning(
                f"No {self.name} state for epoch {trainer.start_epoch} in {path}; the aggregate "
                "covers only the epochs trained from now on."
            )

    @torch.no_grad()
    def after_epoch(self) -> None:
        trainer = self.trainer
        w = self.weights[trainer.epoch]
        if self.sum is None:
            self.sum = [w * p.detach() for p in self.params]
        else:
            for total, p in zip(self.sum, self.params):
                total += w * p.detach()
        if trainer.epoch + 1 == trainer.max_epoch:
            logger.info(f"Using {self.name} model for final inference...")
            for total, p in zip(self.sum, self.params):
                p.copy_(total)
        self.history[trainer.epoch + 1] = [t.detach().cpu().clone() for t in self.sum]
        if is_main_process():
            state = os.path.join(trainer.output_dir, self.state_file)
            write_torch_atomic(state, {"sums": self.history})
