"""TrainerBase: registered models, the epoch loop skeleton, updates, checkpoints, resume.

Method-specific trainers subclass :class:`~dassl_ext.engine.simple.TrainerX`; the
cross-cutting work (precision scaler, gradient clipping, DistributedDataParallel under
torchrun, LR stepping once per epoch, checkpoint IO, running the hooks in order) lives here
once.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from typing import Any, ClassVar

import torch
from torch import nn

from dassl_ext.engine.ddp import convert_sync_batchnorm, trainable, wrap_ddp
from dassl_ext.engine.faults import non_finite_loss_error
from dassl_ext.engine.hooks import HookBase
from dassl_ext.engine.teacher import TeacherSupport
from dassl_ext.errors import UserError
from dassl_ext.utils.checkpoint import (
    checkpoint_state_dict,
    find_checkpoint,
    load_checkpoint,
    load_resumable,
    save_checkpoint,
)
from dassl_ext.utils.distributed import barrier, is_distributed, is_main_process
from dassl_ext.utils.tools import get_rng_state, set_rng_state

logger = logging.getLogger(__name__)


def _as_list(names: str | list[str] | None) -> list[str] | None:
    return [names] if isinstance(names, str) else names


def enable_grad_checkpointing(module: nn.Module) -> int:
    """Turn on every submodule of ``module`` that declares a ``grad_checkpointing`` flag
    (e.g. the prompted CLIP encoders); returns how many there were."""
    found = [m for m in module.modules() if hasattr(m, "grad_checkpointing")]
    for m in found:
        m.grad_checkpointing = True
    return len(found)


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
        self._models: OrderedDict[str, nn.Module] = OrderedDict()
        self._optims: OrderedDict[str, Any] = OrderedDict()
        self._scheds: OrderedDict[str, Any] = OrderedDict()
        self._forward: dict[str, nn.Module] = {}  # name -> the module of its training forward
        self._ddp: dict[str, nn.Module] = {}  # name -> that module in DistributedDataParallel
        self._forwarded: set[str] = set()  # names whose training_module() this step asked for
        self._writer = None
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)
        self.grad_clip_norm = 0.0
        self.best_result = -float("inf")
        self.best_epoch: int | None = None
        self.hooks: list[HookBase] = []
        self._resume_rng: dict | None = None
        self._loaded_epoch: int | None = None  # set by load_model (reported in results.json)
        self._loaded_val_result: float | None = None

    # ------------------------------------------------------------------ models
    def register_model(
        self,
        name: str = "model",
        model: nn.Module | None = None,
        optim=None,
        sched=None,
        forward_module: nn.Module | None = None,
    ) -> None:
        """Register a model (saved, loaded, mode-switched, updated) with its optimizer/scheduler.

        ``forward_module``: the module whose forward is the training forward, when it is more
        than the saved ``model`` (CoOp saves its prompt learner, but trains through the whole
        CLIP, frozen towers inside). Call this with the modules on their device and their
        trainable parameters chosen. Under torchrun, when there is something to train, the
        forward module's BatchNorm layers go over the global batch and it is wrapped in
        DistributedDataParallel: run the training forward through :meth:`training_module`,
        so that ``backward`` averages the gradients across processes. The registered model
        (saved, evaluated) stays unwrapped. With MODEL.GRAD_CHECKPOINTING the forward
        module's encoders recompute their blocks in the backward.
        """
        if self.__dict__.get("_models") is None:
            raise AttributeError("Call super().__init__() before register_model().")
        if name in self._models:
            raise KeyError(f"A model named {name!r} is already registered.")
        forward_module = model if forward_module is None else forward_module
        trains = optim is not None and trainable(model)
        if trains and self.grad_checkpointing and not enable_grad_checkpointing(forward_module):
            logger.warning(
                f"MODEL.GRAD_CHECKPOINTING has no effect on {name!r}: none of its "
                "modules can recompute its activations."
            )
        if trains and is_distributed():
            if forward_module is model:
                forward_module = model = convert_sync_batchnorm(model)
            else:  # BatchNorm layers are replaced in place, inside the forward module
                convert_sync_batchnorm(forward_module)
            self._ddp[name] = wrap_ddp(forward_module)
        self._models[name] = model
        self._forward[name] = forward_module
        self._optims[name] = optim
        self._scheds[name] = sched

    def training_module(self, name: str | None = None) -> nn.Module:
        """The module to run the training forward of model ``name`` (default: the first
        registered) through: the DistributedDataParallel wrapper of its forward module under
        torchrun, else the forward module itself. Run it once per step (DDP expects one
        forward per backward)."""
        name = self.get_model_names(name)[0]
        self._forwarded.add(name)
        return self._ddp.get(name, self._forward[name])

    def registered_models(self) -> list[nn.Module]:
        """The registered models, in registration order."""
        return list(self._models.values())

    def register_hooks(self, hooks: list[HookBase]) -> None:
        """Append ``hooks`` (run in list order around each epoch; see ``engine.hooks``)."""
        for hook in hooks:
            hook.trainer = weakref.proxy(self)  # no reference cycle trainer <-> hook
        self.hooks.extend(hooks)

    def get_model_names(self, names: str | list[str] | None = None) -> list[str]:
        names_real = list(self._models.keys())
        names = _as_list(names)
        if names is None:
            return names_real
        for name in names:
            if name not in names_real:
                raise KeyError(f"No registered model named {name!r}; registered: {names_real}.")
        return names

    def set_model_mode(self, mode: str = "train", names: str | list[str] | None = None) -> None:
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    # ------------------------------------------------------------------ updates
    def update_lr(self, names: str | list[str] | None = None) -> None:
        """Step every registered scheduler; the base loop calls it once after each epoch."""
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def detect_anomaly(self, loss: torch.Tensor) -> None:
        """Stop before a NaN / inf loss changes the weights (a UserError naming the step)."""
        if not torch.isfinite(loss).all():
            raise non_finite_loss_error(self, loss)

    def model_zero_grad(self, names: str | list[str] | None = None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()

    def model_update(self, names: str | list[str] | None = None) -> None:
        """Clip (TRAIN.GRAD_CLIP_NORM), step, update the scaler. Under torchrun the gradients
        were averaged across processes during backward (DistributedDataParallel)."""
        names = [n for n in self.get_model_names(names) if self._optims[n] is not None]
        bypassed = [n for n in names if n in self._ddp and n not in self._forwarded]
        self._forwarded.clear()
        if bypassed:  # its gradients were not averaged: the processes would drift apart
            raise RuntimeError(
                f"Under torchrun the training forward of {bypassed[0]!r} must run through "
                f"self.training_module({bypassed[0]!r}) (its DistributedDataParallel wrapper)."
            )
        if self.grad_clip_norm > 0:
            for n in names:
                self.scaler.unscale_(self._optims[n])
                torch.nn.utils.clip_grad_norm_(self._models[n].parameters(), self.grad_clip_norm)
        for n in names:
            self.scaler.step(self._optims[n])
        self.scaler.update()

    def model_backward_and_update(
        self, loss: torch.Tensor, names: str | list[str] | None = None
    ) -> None:
        """zero_grad -> (scaled) backward (gradients averaged across processes) -> clip -> step."""
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    def get_current_lr(self, names: str | list[str] | None = None) -> float:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                return self._optims[name].param_groups[0]["lr"]
        return 0.0

    # ------------------------------------------------------------------ checkpoints
    def save_model(
        self, epoch: int, directory: str, is_best: bool = False, val_result=None, model_name=""
    ) -> None:
        """Save every registered model as ``<directory>/<name>/model.pth.tar-<epoch+1>``
        (or ``model_name``); rank 0 only. Holds tensors and plain containers only."""
        if not is_main_process():
            return
        rng = get_rng_state()
        best = {"accuracy": self.best_result, "epoch": self.best_epoch}
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            state = {
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": optim.state_dict() if optim is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "val_result": val_result,
                # ours (ignored by Dassl / the official code): exact resume
                "rng_state": rng,
                "best_result": best if self.best_epoch is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            }
            save_checkpoint(
                state, os.path.join(directory, name), is_best=is_best, model_name=model_name
            )

    def filter_state_dict_on_load(self, name: str, state_dict: dict) -> dict:
        """Hook: drop or rename keys of model ``name``'s checkpoint before loading.

        Keys removed here may be missing without an error (e.g. token prefix buffers).
        """
        return state_dict

    def _load_weights(self, name: str, path: str, checkpoint: dict) -> None:
        raw = checkpoint_state_dict(checkpoint, path)  # not a checkpoint: one sentence
        state_dict = self.filter_state_dict_on_load(name, raw)
        dropped = set(raw) - set(state_dict)
        try:
            result = self._models[name].load_state_dict(state_dict, strict=False)
        except RuntimeError as e:  # shape mismatch
            raise UserError(f"Checkpoint {path} does not fit model {name}: {e}") from None
        missing = [k for k in result.missing_keys if k not in dropped]
        if result.unexpected_keys or missing:
            what = (
                f"unexpected key {result.unexpected_keys[0]!r}"
                if result.unexpected_keys
                else f"missing key {missing[0]!r}"
            )
            raise UserError(
                f"Checkpoint {path} does not fit model {name} ({what}); check that it was "
                "written by this trainer with the same config."
            )

    def load_model(self, directory: str, epoch: int | None = None) -> int | None:
        """Load ``model-best.pth.tar`` (or ``model.pth.tar-<epoch>``) of every registered model
        from ``<directory>/<name>/``; without a best file the newest epoch file is used.
        Returns the stored epoch."""
        if not directory:
            logger.info("Note that load_model() is skipped as no pretrained model is given")
            return None
        barrier()  # rank 0 may just have written the file
        loaded_epoch = None
        for name in self.get_model_names():
            path = find_checkpoint(os.path.join(directory, name), epoch)
            checkpoint = load_checkpoint(path)
            self._load_weights(name, path, checkpoint)
            loaded_epoch = checkpoint.get("epoch")
            val = checkpoint.get("val_result")
            val_txt = f"{val:.1f}" if isinstance(val, (int, float)) else "None"
            logger.info(f"Load {path} to {name} (epoch={loaded_epoch}, val_result={val_txt})")
            self._loaded_val_result = val if isinstance(val, (int, float)) else None
        self._loaded_epoch = loaded_epoch
        return loaded_epoch

    def resume_model_if_exist(self, directory: str) -> int:
        """Restore models, optimizers, schedulers, best result and RNG states from the newest
        intact ``model.pth.tar-<epoch>`` common to all registered models; returns that epoch.
        A truncated or corrupt newest file is skipped with a warning (the epoch before)."""
        epoch, loaded = load_resumable(directory, self.get_model_names())
        for name, (path, ckpt) in loaded.items():
            self._load_weights(name, path, ckpt)
            if self._optims[name] is not None and ckpt.get("optimizer") is not None:
                self._optims[name].load_state_dict(ckpt["optimizer"])
            if self._scheds[name] is not None and ckpt.get("scheduler") is not None:
                self._scheds[name].load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler") is not None and self.scaler.is_enabled():
                self.scaler.load_state_dict(ckpt["scaler"])
            if ckpt.get("best_result"):
                self.best_result = ckpt["best_result"]["accuracy"]
                self.best_epoch = ckpt["best_result"]["epoch"]
            self._resume_rng = ckpt.get("rng_state")
            logger.info(f"Resume {name} from {path} (epoch {epoch})")
        return epoch

    def restore_resumed_rng(self) -> None:
        """Put back the RNG states saved with the resumed checkpoint (call right before the
        first resumed epoch, so data order and augmentation continue as if never stopped)."""
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None

    # ------------------------------------------------------------------ tensorboard
    def init_writer(self, log_dir: str) -> None:
        if self._writer is None and is_main_process():
            from torch.utils.tensorboard import SummaryWriter

            logger.info(f"Initialize tensorboard (log_dir={log_dir})")
            self._writer = SummaryWriter(log_dir=log_dir)

    def close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write_scalar(self, tag: str, scalar_value: float, global_step: int | None = None) -> None:
        if self._writer is not None:
            self._writer.add_scalar(tag, scalar_value, global_step)

    # ------------------------------------------------------------------ loop
    def train(self, start_epoch: int, max_epoch: int) -> None:
        """Generic loop; ``before_train`` may move ``self.start_epoch`` (resume)."""
        self.start_epoch = start_epoch
        self.max_epoch = max_epoch
        self.before_train()
        for epoch in range(self.start_epoch, self.max_epoch):
            self.epoch = epoch
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

    def run_epoch(self) -> None:
        raise NotImplementedError

    def test(self, split: str | None = None) -> float:
        raise NotImplementedError

    def parse_batch_train(self, batch: dict) -> Any:
        raise NotImplementedError

    def parse_batch_test(self, batch: dict) -> Any:
        raise NotImplementedError

    def forward_backward(self, batch: dict) -> dict[str, float]:
        raise NotImplementedError

    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError
