"""Dassl-format checkpoints: atomic writes, safe reads.

Layout: ``<dir>/model.pth.tar-<epoch>`` (or ``model_name``), ``model-best.pth.tar`` when
``is_best``, and a ``checkpoint`` text file naming the last file written. Keys:
``state_dict, epoch, optimizer, scheduler, val_result`` (+ ours, e.g. ``rng_state``).

Our files hold only tensors and plain containers and load with ``weights_only=True``.
Files from Dassl / the official code pickle scheduler objects; they are read with a
restricted unpickler that keeps tensors and plain containers and replaces every other
object by an inert :class:`Placeholder`, so no pickled code ever runs.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import threading
import types
import zipfile
from collections import OrderedDict
from typing import Any

import torch

from dassl_ext.errors import UserError

logger = logging.getLogger(__name__)


def strip_module_prefix(state_dict: dict[str, Any]) -> OrderedDict:
    """Remove a leading ``module.`` (DataParallel / DDP) from every key."""
    return OrderedDict(
        (k[len("module.") :] if k.startswith("module.") else k, v) for k, v in state_dict.items()
    )


def atomic_save(obj: Any, path: str) -> str:
    """``torch.save(obj, path)`` through a temporary file in the same folder and
    ``os.replace``, so readers (other ranks, parallel tests) never see a partial file.
    Creates the folder; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}.{threading.get_ident()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_checkpoint(
    state: dict[str, Any],
    save_dir: str,
    is_best: bool = False,
    remove_module_from_keys: bool = True,
    model_name: str = "",
) -> str:
    """Write ``state`` atomically as ``model_name`` or ``model.pth.tar-<epoch>``; returns the path.

    ``is_best`` also writes ``model-best.pth.tar``. The ``checkpoint`` file is updated.
    """
    os.makedirs(save_dir, exist_ok=True)
    if remove_module_from_keys and "state_dict" in state:
        state = {**state, "state_dict": strip_module_prefix(state["state_dict"])}
    fname = model_name or f"model.pth.tar-{state['epoch']}"
    fpath = os.path.join(save_dir, fname)
    atomic_save(state, fpath)
    if is_best:
        best = os.path.join(save_dir, "model-best.pth.tar")
        shutil.copyfile(fpath, best + ".tmp")
        os.replace(best + ".tmp", best)
    ckpt_file = os.path.join(save_dir, "checkpoint")
    with open(ckpt_file + ".tmp", "w") as f:
        f.write(f"{fname}\n")
    os.replace(ckpt_file + ".tmp", ckpt_file)
    logger.info(f"Checkpoint saved to {fpath}")
    return fpath


class Placeholder:
    """Stands in for any pickled object that is not a tensor or plain container.

    It records what it was (``module``, ``name``), the constructor arguments and the
    pickled state, and does nothing else.
    """

    module = "?"
    name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

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


def _placeholder(module: str, name: str) -> type:
    return type("Placeholder", (Placeholder,), {"module": module, "name": name})


def _allowed(module: str, name: str) -> Any | None:
    """The real object for safe globals (tensor rebuilding, dtypes, containers), else None."""
    safe = {
        ("collections", "OrderedDict"): OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("builtins", "bytearray"): bytearray,
    }
    if (module, name) in safe:
        return safe[(module, name)]
    if module == "_codecs" and name == "encode":  # how protocol 2 pickles bytes
        import codecs

        return codecs.encode
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` only returns safe globals; everything else is inert."""

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed(module, name)
        return obj if obj is not None else _placeholder(module, name)


# torch.load accepts any module-like object with ``Unpickler`` and ``load``
restricted_pickle = types.SimpleNamespace(
    __name__="restricted_pickle",
    Unpickler=RestrictedUnpickler,
    load=lambda f, **kw: RestrictedUnpickler(f, **kw).load(),
)


def load_checkpoint(fpath: str, mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint on CPU: ``weights_only=True`` first, else the restricted unpickler.

    ``mmap``: map the file instead of reading it (zip-format files; others are read), for
    weights that are copied into a model at once: tensors never copied are never read, and
    there is no second full copy in memory.
    """
    if not os.path.isfile(fpath):
        raise UserError(f"Checkpoint {fpath} does not exist; check --model-dir / --load-epoch.")
    mmap = mmap and zipfile.is_zipfile(fpath)
    try:
        return torch.load(fpath, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        pass  # foreign objects inside (Dassl pickles its scheduler): read without running them
    logger.info(f"{fpath} holds non-tensor objects; loading it with a restricted unpickler")
    try:
        return torch.load(
            fpath,
            map_location="cpu",
            pickle_module=restricted_pickle,
            weights_only=False,
            mmap=mmap,
        )
    except UnicodeDecodeError:  # files pickled by Python 2 (as Dassl retries)
        return torch.load(
            fpath,
            map_location="cpu",
            pickle_module=restricted_pickle,
            weights_only=False,
            encoding="latin1",
        )
    except Exception as e:
        raise UserError(f"Cannot read checkpoint {fpath}: {e}") from None
