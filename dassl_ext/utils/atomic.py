"""The one way this project writes a file: atomically and durably.

:func:`atomic_write` has the content written to a temporary file in the target's folder,
flushes it to disk (``fsync``), renames it over the target (``os.replace``) and flushes
the folder, so a reader (another rank, a parallel test, a run after a crash) sees the old
file or the new one, never a partial one. The variants below write bytes, text, JSON or a
``torch.save`` object through it. Importing this module does not import torch.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any


def atomic_write(path: str, write: Callable[[str], Any]) -> str:
    """Create ``path`` with ``write(tmp_path)``, which writes the whole content to the
    temporary file it is given; then fsync, rename into place, fsync the folder.

    Creates the folder. If ``write`` raises, the target is untouched and the temporary file
    removed. Returns ``path``.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # unique per process, thread and call: concurrent writers of one file never share it
    unique = f"{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}"
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{unique}.tmp")
    try:
        write(tmp)
        _fsync(tmp, os.O_RDWR)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)
    return path


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, write)


def write_text_atomic(path: str, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj: Any, indent: int = 2) -> str:
    """Write ``obj`` as indented JSON (ending with a newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def write_torch_atomic(path: str, obj: Any) -> str:
    """``torch.save(obj, path)`` atomically."""
    import torch  # here, so that the torch-free writers above do not pay for it

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
