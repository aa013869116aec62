"""Dassl-format checkpoints: file names, the best-else-newest lookup, atomic saving, safe
loading, the strict weight loader and resuming a run.

Layout: ``<dir>/model.pth.tar-<epoch>`` (or ``model-best.pth.tar``), and a ``checkpoint``
text file naming the last file written. Keys: ``state_dict, epoch, optimizer, scheduler,
val_result`` (+ ours: ``rng_state, best_result, scaler``). Every file is written by
:mod:`dassl_ext.utils.atomic` (temporary file, fsync, rename).

Our files hold only tensors and plain containers and load with ``weights_only=True``.
Files from Dassl / the official code pickle scheduler objects; they are read with a
restricted unpickler that keeps tensors and plain containers and replaces every other
object by an inert :class:`Placeholder`, so no pickled code ever runs.

The names and the lookup need no torch (it is imported where tensors are handled), so the
experiment scripts ask this module which file to use without loading torch::

    python -m dassl_ext.utils.checkpoint find FOLDER      # prints the file; exit 1: none
    python -m dassl_ext.utils.checkpoint resumable RUN_DIR  # exit 0: epoch files to resume
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import re
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from dassl_ext.errors import UserError, first_line
from dassl_ext.utils.atomic import write_text_atomic, write_torch_atomic

logger = logging.getLogger(__name__)

BEST_FILE = "model-best.pth.tar"
LAST_FILE = "checkpoint"  # Dassl's text file naming the last checkpoint written
_EPOCH_FILE = re.compile(r"^model\.pth\.tar-(\d+)$")


def epoch_file(epoch: int) -> str:
    """``model.pth.tar-<epoch>``: the file of one epoch (epochs count from 1)."""
    return f"model.pth.tar-{epoch}"


def checkpoint_epochs(folder: str) -> list[int]:
    """Epochs of the ``model.pth.tar-<epoch>`` files in ``folder`` (sorted; [] if none)."""
    if not os.path.isdir(folder):
        return []
    return sorted(int(m.group(1)) for f in os.listdir(folder) if (m := _EPOCH_FILE.match(f)))


def find_checkpoint(folder: str, epoch: int | None = None) -> str:
    """The file to load from a model folder: ``model.pth.tar-<epoch>`` when ``epoch`` is
    given, else ``model-best.pth.tar``, else the newest ``model.pth.tar-<N>``.

    The path may not exist (nothing in ``folder``: the best file's path); callers check.
    """
    if epoch is not None:
        return os.path.join(folder, epoch_file(epoch))
    best = os.path.join(folder, BEST_FILE)
    epochs = checkpoint_epochs(folder)
    if os.path.isfile(best) or not epochs:
        return best
    return os.path.join(folder, epoch_file(epochs[-1]))


def _model_folders(run_dir: str, holds: Callable[[str], Any]) -> list[str]:
    names = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    return sorted(name for name in names if holds(os.path.join(run_dir, name)))


def resumable_models(run_dir: str) -> list[str]:
    """Model folders of ``run_dir`` that hold epoch files (a run that can be resumed)."""
    return _model_folders(run_dir, checkpoint_epochs)


def loadable_models(run_dir: str, epoch: int | None = None) -> list[str]:
    """Model folders of ``run_dir`` holding a file :func:`find_checkpoint` would load
    (``model.pth.tar-<epoch>`` when ``epoch`` is given): what ``--model-dir`` can evaluate."""
    return _model_folders(run_dir, lambda folder: os.path.isfile(find_checkpoint(folder, epoch)))


def strip_module_prefix(state_dict: dict[str, Any]) -> OrderedDict:
    """Remove a leading ``module.`` (DataParallel / DDP) from every key."""
    return OrderedDict(
        (k[len("module.") :] if k.startswith("module.") else k, v) for k, v in state_dict.items()
    )


def checkpoint_state_dict(checkpoint: Any, path: str) -> OrderedDict:
    """The model weights of a loaded Dassl checkpoint (``module.`` prefixes removed); a file
    that holds something else (a list, a tensor, a dict without ``state_dict``) is a
    UserError naming it and what it holds."""
    state_dict = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if isinstance(state_dict, dict) and all(isinstance(k, str) for k in state_dict):
        return strip_module_prefix(state_dict)
    if not isinstance(checkpoint, dict):
        what = f"a {type(checkpoint).__name__}"
    elif state_dict is None:
        keys = ", ".join(map(repr, list(checkpoint)[:4])) or "none"
        what = f"a dict without 'state_dict' (keys: {keys})"
    else:
        what = f"a 'state_dict' that is a {type(state_dict).__name__}, not a dict of tensors"
    raise UserError(
        f"Checkpoint {path} is not a model checkpoint: it holds {what}; pass a "
        "model.pth.tar-<epoch> / model-best.pth.tar written by train.py (or the official code)."
    )


def save_checkpoint(state: dict[str, Any], save_dir: str, model_name: str = "") -> str:
    """Write ``state`` atomically as ``model_name`` or ``model.pth.tar-<epoch>`` (``module.``
    prefixes removed) and name it in the ``checkpoint`` file; returns the path."""
    if "state_dict" in state:
        state = {**state, "state_dict": strip_module_prefix(state["state_dict"])}
    fname = model_name or epoch_file(state["epoch"])
    fpath = write_torch_atomic(os.path.join(save_dir, fname), state)
    write_text_atomic(os.path.join(save_dir, LAST_FILE), f"{fname}\n")
    logger.info(f"Checkpoint saved to {fpath}")
    return fpath


def model_state(model, optim, sched, epoch: int, val_result=None, **ours: Any) -> dict[str, Any]:
    """One model's checkpoint: Dassl's keys, then ``ours`` (ignored by Dassl and the official
    code; ``rng_state``, ``best_result``, ``scaler`` for an exact resume)."""
    return {
        "state_dict": model.state_dict(),
        "epoch": epoch,
        "optimizer": optim.state_dict() if optim is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "val_result": val_result,
        **ours,
    }


def load_weights(
    module, path: str, checkpoint: Any = None, select: Callable[[dict], dict] | None = None
) -> dict[str, Any]:
    """Load the weights of checkpoint ``path`` (``checkpoint``: its content, if already
    read) into ``module``, strictly: after ``select`` (which may drop keys the model rebuilds
    itself), a missing or unexpected key or a shape mismatch is a UserError naming the file
    and the key. Returns the checkpoint."""
    import torch

    if checkpoint is None:
        checkpoint = load_checkpoint(path, mmap=True)  # copied below: no second full copy
    state_dict = checkpoint_state_dict(checkpoint, path)
    state_dict = select(state_dict) if select is not None else state_dict
    own = module.state_dict()
    other = "it was written for another model or configuration (prompt length/depth, backbone)"
    for key, value in state_dict.items():
        if key not in own:
            raise UserError(f"Checkpoint {path} has unexpected key {key!r} for this model.")
        shape = tuple(value.shape) if torch.is_tensor(value) else None
        if shape != tuple(own[key].shape):
            got = f"has shape {shape}" if shape is not None else f"holds a {type(value).__name__}"
            raise UserError(
                f"Checkpoint {path}: key {key!r} {got}, the model expects "
                f"{tuple(own[key].shape)}; {other}."
            )
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise UserError(
            f"Checkpoint {path} lacks key {missing[0]!r} ({len(missing)} missing); {other}."
        )
    module.load_state_dict(state_dict, strict=True)
    return checkpoint


class Placeholder:
    """Stands in for any pickled object that is not a tensor or plain container: it records
    what it was (``module``, ``name``), the constructor arguments and the pickled state,
    and does nothing else."""

    module = name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs, self.state = args, kwargs, None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # pickle SETITEMS on a dict subclass
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:  # pickle APPENDS on a list subclass
        self.__dict__.setdefault("list", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("list", []).extend(values)

    def __repr__(self) -> str:
        return f"<Placeholder for {self.module}.{self.name}>"


_SAFE = {  # module -> the names that may be unpickled from it
    "collections": {"OrderedDict"},
    "torch._utils": {"_rebuild_tensor_v2", "_rebuild_parameter"},
    "torch": {"Size", "device"},
    "builtins": {"set", "frozenset", "slice", "complex", "bytearray"},
    "_codecs": {"encode"},  # how protocol 2 pickles bytes
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` only returns safe globals (tensor rebuilding, dtypes,
    containers); any other global is an inert :class:`Placeholder` naming it."""

    def find_class(self, module: str, name: str) -> Any:
        import torch

        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if name in _SAFE.get(module, ()) or dtype:
            return getattr(importlib.import_module(module), name)
        return type("Placeholder", (Placeholder,), {"module": module, "name": name})


# torch.load accepts any module-like object with ``Unpickler`` and ``load``
restricted_pickle = types.SimpleNamespace(
    __name__="restricted_pickle",
    Unpickler=RestrictedUnpickler,
    load=lambda f, **kw: RestrictedUnpickler(f, **kw).load(),
)


class CorruptCheckpointError(UserError):
    """A checkpoint file that exists but cannot be read (truncated, overwritten, not torch)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"Checkpoint {path} is truncated or corrupt ({reason}); delete it (--resume then "
            "continues from the epoch before) or replace it with an intact copy."
        )
        self.path, self.reason = path, reason


def _reason(e: BaseException) -> str:
    first = first_line(e, 100)
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def load_checkpoint(fpath: str, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on CPU: ``weights_only=True`` first, else the restricted unpickler.

    ``mmap``: map the file instead of reading it (zip-format files; others are read), for
    weights that are copied into a model at once: tensors never copied are never read, and
    there is no second full copy in memory. A missing file is a UserError; one that cannot
    be read a :class:`CorruptCheckpointError`.
    """
    import torch

    if not os.path.isfile(fpath):
        raise UserError(f"Checkpoint {fpath} does not exist; check --model-dir / --load-epoch.")
    mmap = mmap and zipfile.is_zipfile(fpath)
    try:
        return torch.load(fpath, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        pass  # foreign objects inside (Dassl pickles its scheduler), or garbage: see below
    except Exception as e:  # torch raises OSError, EOFError, RuntimeError ... for cut files
        raise CorruptCheckpointError(fpath, _reason(e)) from None
    logger.info(f"{fpath} holds non-tensor objects; loading it with a restricted unpickler")
    kwargs = {"map_location": "cpu", "pickle_module": restricted_pickle, "weights_only": False}
    try:
        try:
            return torch.load(fpath, mmap=mmap, **kwargs)
        except UnicodeDecodeError:  # files pickled by Python 2 (as Dassl retries)
            return torch.load(fpath, encoding="latin1", **kwargs)
    except Exception as e:
        raise CorruptCheckpointError(fpath, _reason(e)) from None


class NothingToResumeError(UserError):
    """``--resume`` found no epoch checkpoint, or none that loads."""


def _common_epochs(run_dir: str, names: list[str]) -> list[int]:
    """Epochs whose ``model.pth.tar-<epoch>`` every model folder in ``names`` holds."""
    epochs = [set(checkpoint_epochs(os.path.join(run_dir, n))) for n in names]
    return sorted(set.intersection(*epochs)) if epochs else []


def resume_training(
    run_dir: str, parts: dict[str, tuple], scaler, select: Callable[[dict], dict] | None = None
) -> tuple[int, dict[str, Any]]:
    """Restore each model of ``parts`` (name -> (model, optimizer, scheduler)) and the
    gradient ``scaler`` from the newest epoch whose ``model.pth.tar-<epoch>`` of every model
    loads; returns that epoch and the last checkpoint read (its ``best_result`` and
    ``rng_state``). A truncated or corrupt file is skipped with a warning (the epoch before
    is tried); none at all, or none intact, is a :class:`NothingToResumeError`."""
    names = list(parts)
    common = _common_epochs(run_dir, names)
    if not common:
        raise NothingToResumeError(
            f"Nothing to resume in {run_dir}: no model.pth.tar-<epoch> for "
            f"{', '.join(names)}; set TRAIN.CHECKPOINT_FREQ to save every few epochs."
        )
    for epoch in reversed(common):
        try:
            paths = {n: os.path.join(run_dir, n, epoch_file(epoch)) for n in names}
            loaded = {n: load_checkpoint(path) for n, path in paths.items()}
            break
        except CorruptCheckpointError as e:
            logger.warning(
                f"Checkpoint {e.path} is truncated or corrupt ({e.reason}); resuming from "
                "an earlier epoch instead."
            )
    else:
        raise NothingToResumeError(
            f"Every model.pth.tar-<epoch> in {run_dir} is truncated or corrupt, so there is "
            "nothing to resume; start again in another --output-dir."
        )
    for name, ckpt in loaded.items():
        model, optim, sched = parts[name]
        load_weights(model, paths[name], ckpt, select)
        for obj, key in ((optim, "optimizer"), (sched, "scheduler")):
            if obj is not None and ckpt.get(key) is not None:
                obj.load_state_dict(ckpt[key])
        if ckpt.get("scaler") is not None and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        logger.info(f"Resume {name} from {paths[name]} (epoch {epoch})")
    return epoch, ckpt


def last_epoch_checkpoint(run_dir: str) -> str | None:
    """The newest ``model.pth.tar-<epoch>`` that every model folder of ``run_dir`` holds
    (of the first model), i.e. what ``--resume run_dir`` continues from; None if none."""
    names = resumable_models(run_dir)
    epochs = _common_epochs(run_dir, names)
    return os.path.join(run_dir, names[0], epoch_file(epochs[-1])) if epochs else None


def main(argv: list[str]) -> int:
    """The scripts' entry point: ``find FOLDER`` / ``resumable RUN_DIR`` (see the docstring)."""
    if len(argv) != 2 or argv[0] not in ("find", "resumable"):
        print("usage: python -m dassl_ext.utils.checkpoint find|resumable FOLDER", file=sys.stderr)
        return 2
    command, folder = argv
    if command == "resumable":
        return 0 if resumable_models(folder) else 1
    path = find_checkpoint(folder)
    if os.path.isfile(path):
        print(path)
    return 0 if os.path.isfile(path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
