"""TrainerBase: registered models, the epoch loop and its hooks, updates, checkpoints.

The cross-cutting work (precision scaler, gradient clipping, DistributedDataParallel under
torchrun, LR stepping once per epoch, running the hooks) lives here once; what checkpoint
files hold, strict loading and resuming are :mod:`dassl_ext.utils.checkpoint`'s.
"""

from __future__ import annotations

import logging
import os
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dassl_ext.engine.ddp import convert_sync_batchnorm, trainable, wrap_ddp
from dassl_ext.engine.events import EventStorage
from dassl_ext.engine.faults import non_finite_loss_error
from dassl_ext.engine.hooks import HookBase
from dassl_ext.engine.teacher import TeacherSupport
from dassl_ext.utils.checkpoint import (
    find_checkpoint,
    load_weights,
    model_state,
    resume_training,
    save_checkpoint,
)
from dassl_ext.utils.distributed import barrier, is_distributed, is_main_process
from dassl_ext.utils.tools import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)


def enable_grad_checkpointing(module: nn.Module) -> int:
    """Turn on every submodule of ``module`` that declares a ``grad_checkpointing`` flag
    (e.g. the prompted CLIP encoders); returns how many there were."""
    found = [m for m in module.modules() if hasattr(m, "grad_checkpointing")]
    for m in found:
        m.grad_checkpointing = True
    return len(found)


@dataclass
class Registered:
    """A registered model: saved, loaded, mode-switched and updated by the trainer."""

    model: nn.Module
    optim: Any
    sched: Any
    forward: nn.Module  # the module of its training forward
    ddp: nn.Module | None = None  # ``forward`` in DistributedDataParallel under torchrun


class TrainerBase:
    """Base class: holds registered models / optimizers / schedulers and runs the loop."""

    # Set by a trainer whose trained model can serve as a frozen teacher; it then also
    # implements build_frozen_model (see dassl_ext.engine.teacher).
    frozen_teacher: ClassVar[TeacherSupport | None] = None
    # True for a trainer with nothing to train (zero-shot): it runs with --eval-only only.
    evaluation_only: ClassVar[bool] = False
    # MODEL.GRAD_CHECKPOINTING: register_model turns it on in the trained models
    grad_checkpointing: bool = False

    def __init__(self) -> None:
        self._registered: dict[str, Registered] = {}
        self._forwarded: set[str] = set()  # names whose training_module() this step asked for
        self.storage = EventStorage()
        self.hooks: list[HookBase] = []
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.grad_clip_norm = 0.0
        self.start_epoch = self.epoch = self.max_epoch = 0
        self.best_result, self.best_epoch = -float("inf"), None
        self._resume_rng: dict | None = None
        # what load_model read (reported in results.json)
        self._loaded_epoch: int | None = None
        self._loaded_val_result: float | None = None
        self._loaded_files: list[str] = []  # the checkpoint files (absolute paths)

    # ------------------------------------------------------------------ models
    def register_model(
        self,
        name: str = "model",
        model: nn.Module | None = None,
        optim=None,
        sched=None,
        forward_module: nn.Module | None = None,
    ) -> None:
        """Register a model (on its device, trainable parameters chosen) with its optimizer
        and scheduler. ``forward_module``: the module of the training forward when it is more
        than the saved ``model`` (CoOp saves its prompt learner but trains through the whole
        CLIP). Under torchrun a model with something to train gets SyncBatchNorm and
        DistributedDataParallel: run its training forward through :meth:`training_module`.
        With MODEL.GRAD_CHECKPOINTING its encoders recompute their blocks in the backward."""
        if "_registered" not in self.__dict__:
            raise AttributeError("Call super().__init__() before register_model().")
        if name in self._registered:
            raise KeyError(f"A model named {name!r} is already registered.")
        forward = model if forward_module is None else forward_module
        trains = optim is not None and trainable(model)
        if trains and self.grad_checkpointing and not enable_grad_checkpointing(forward):
            logger.warning(
                f"MODEL.GRAD_CHECKPOINTING has no effect on {name!r}: none of its "
                "modules can recompute its activations."
            )
        ddp = None
        if trains and is_distributed():
            if forward is model:
                forward = model = convert_sync_batchnorm(model)
            else:  # BatchNorm layers are replaced in place, inside the forward module
                convert_sync_batchnorm(forward)
            ddp = wrap_ddp(forward)
        self._registered[name] = Registered(model, optim, sched, forward, ddp)

    def training_module(self, name: str | None = None) -> nn.Module:
        """The module to run the training forward of model ``name`` (default: the first
        registered) through, once per step: its forward module, in DistributedDataParallel
        under torchrun."""
        name = self.get_model_names(name)[0]
        self._forwarded.add(name)
        return self._registered[name].ddp or self._registered[name].forward

    def register_hooks(self, hooks: list[HookBase]) -> None:
        """Add ``hooks``; all run in the order of their ``priority``, equal priorities in
        registration order (see :mod:`dassl_ext.engine.hooks`)."""
        for hook in hooks:
            hook.trainer = weakref.proxy(self)  # no reference cycle trainer <-> hook
        self.hooks = sorted([*self.hooks, *hooks], key=lambda h: h.priority)

    def get_model_names(self, names: str | list[str] | None = None) -> list[str]:
        if names is None:
            return list(self._registered)
        names = [names] if isinstance(names, str) else names
        for name in names:
            if name not in self._registered:
                raise KeyError(
                    f"No registered model named {name!r}; registered: {list(self._registered)}."
                )
        return names

    def _selected(self, names: str | list[str] | None) -> list[Registered]:
        return [self._registered[n] for n in self.get_model_names(names)]

    def set_model_mode(self, mode: str = "train", names: str | list[str] | None = None) -> None:
        for r in self._selected(names):
            r.model.train(mode == "train")

    # ------------------------------------------------------------------ updates
    def update_lr(self, names: str | list[str] | None = None) -> None:
        """Step every registered scheduler; the base loop calls it once after each epoch."""
        for r in self._selected(names):
            if r.sched is not None:
                r.sched.step()

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        """Stop before a NaN / inf loss changes the weights (a UserError naming the step)."""
        if not torch.isfinite(loss).all():
            raise non_finite_loss_error(self, loss)

    def model_zero_grad(self, names: str | list[str] | None = None) -> None:
        for r in self._selected(names):
            if r.optim is not None:
                r.optim.zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()

    def model_update(self, names: str | list[str] | None = None) -> None:
        """Clip (TRAIN.GRAD_CLIP_NORM), step, update the scaler."""
        names = [n for n in self.get_model_names(names) if self._registered[n].optim is not None]
        bypassed = [n for n in names if self._registered[n].ddp and n not in self._forwarded]
        self._forwarded.clear()
        if bypassed:  # its gradients were not averaged: the processes would drift apart
            raise RuntimeError(
                f"Under torchrun the training forward of {bypassed[0]!r} must run through "
                f"self.training_module({bypassed[0]!r}) (its DistributedDataParallel wrapper)."
            )
        for r in map(self._registered.get, names):
            if self.grad_clip_norm > 0:
                self.scaler.unscale_(r.optim)
                torch.nn.utils.clip_grad_norm_(r.model.parameters(), self.grad_clip_norm)
            self.scaler.step(r.optim)
        self.scaler.update()

    def model_backward_and_update(
        self, loss: torch.Tensor, names: str | list[str] | None = None
    ) -> None:
        """zero_grad -> (scaled) backward (gradients averaged across processes) -> clip -> step."""
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    def get_current_lr(self, names: str | list[str] | None = None) -> float:
        optims = [r.optim for r in self._selected(names) if r.optim is not None]
        return optims[0].param_groups[0]["lr"] if optims else 0.0

    # ------------------------------------------------------------------ checkpoints
    def filter_state_dict_on_load(self, state_dict: dict) -> dict:
        """Hook: drop keys of a checkpoint that the model rebuilds itself (they may be
        missing from the model's state dict without an error)."""
        return state_dict

    def save_model(self, epoch: int, directory: str, val_result=None, model_name="") -> None:
        """Save every registered model as ``<directory>/<name>/model.pth.tar-<epoch+1>``
        (or ``model_name``), with what an exact resume needs; rank 0 only."""
        if not is_main_process():
            return
        best = {"accuracy": self.best_result, "epoch": self.best_epoch}
        ours = {
            "rng_state": get_rng_state(),
            "best_result": best if self.best_epoch is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }
        for name, r in self._registered.items():
            state = model_state(r.model, r.optim, r.sched, epoch + 1, val_result, **ours)
            save_checkpoint(state, os.path.join(directory, name), model_name=model_name)

    def load_model(self, directory: str, epoch: int | None = None) -> int | None:
        """Load ``model-best.pth.tar`` (or ``model.pth.tar-<epoch>``) of every registered model
        from ``<directory>/<name>/``; without a best file the newest epoch file is used.
        Returns the stored epoch."""
        if not directory:
            logger.info("Note that load_model() is skipped as no pretrained model is given")
            return None
        barrier()  # rank 0 may just have written the file
        self._loaded_files = []
        for name, r in self._registered.items():
            path = find_checkpoint(os.path.join(directory, name), epoch)
            self._loaded_files.append(os.path.abspath(path))
            checkpoint = load_weights(r.model, path, select=self.filter_state_dict_on_load)
            self._loaded_epoch = checkpoint.get("epoch")
            val = checkpoint.get("val_result")
            self._loaded_val_result = val if isinstance(val, (int, float)) else None
            val_txt = "None" if self._loaded_val_result is None else f"{val:.1f}"
            logger.info(f"Load {path} to {name} (epoch={self._loaded_epoch}, val_result={val_txt})")
        return self._loaded_epoch

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore models, optimizers, schedulers, scaler, best result and RNG states from the
        newest intact ``model.pth.tar-<epoch>`` common to all registered models; returns that
        epoch. A truncated or corrupt newest file is skipped with a warning (the epoch before)."""
        parts = {n: (r.model, r.optim, r.sched) for n, r in self._registered.items()}
        epoch, ckpt = resume_training(directory, parts, self.scaler, self.filter_state_dict_on_load)
        if ckpt.get("best_result"):
            self.best_result = ckpt["best_result"]["accuracy"]
            self.best_epoch = ckpt["best_result"]["epoch"]
        self._resume_rng = ckpt.get("rng_state")
        return epoch

    def restore_resumed_rng(self) -> None:
        """Put back the RNG states saved with the resumed checkpoint (call right before the
        first resumed epoch, so data order and augmentation continue as if never stopped)."""
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None

    def close_writer(self) -> None:
        """Close the tensorboard file of :attr:`storage`, if open."""
        self.storage.close()

    # ------------------------------------------------------------------ loop
    def train(self) -> None:
        """Generic loop from ``start_epoch`` to ``max_epoch`` (a subclass defines
        ``run_epoch``); ``before_train`` may move ``start_epoch`` (resume)."""
        self.before_train()
        for epoch in range(self.start_epoch, self.max_epoch):
            self.epoch = self.storage.epoch = epoch
            self.before_epoch()
            self.run_epoch()
            self.update_lr()  # once per epoch, after its last step (as the official trainers)
            self.after_epoch()
        self.after_train()

    def before_train(self) -> None:
        for hook in self.hooks:
            hook.before_train()

    def after_train(self) -> None:
        for hook in self.hooks:
            hook.after_train()

    def before_epoch(self) -> None:
        for hook in self.hooks:
            hook.before_epoch()

    def after_epoch(self) -> None:
        for hook in self.hooks:
            hook.after_epoch()
