"""The one way this project writes a file: atomically and durably (torch-free to import).

A temporary file in the target's folder, fsync, ``os.replace``, fsync of the folder: a
reader (another rank, a run after a crash) sees the old file or the new one, never a partial
one. SIGINT / SIGTERM / SIGHUP wait until the file is in place; a full disk or a folder that
cannot be written is a :class:`FileWriteError` naming the file (the old file stays as it was).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from dassl_ext.errors import UserError

_HELD_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
# The temporary file of atomic_write: ``.<target name>.<pid>.<thread id>.<8 hex>.tmp``
TEMPORARY_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.\d+\.[0-9a-f]{8}\.tmp$")


class FileWriteError(UserError, OSError):
    """A file could not be written; also an OSError for callers that tolerate that."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.errno = code


def atomic_write(path: str, write: Callable[[str], Any]) -> str:
    """Create ``path`` (and its folder) with ``write(tmp_path)``, which writes the whole
    content to the temporary file it is given; if it raises, the target is untouched and the
    temporary file removed. Returns ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    # unique per process, thread and call: concurrent writers of one file never share it
    unique = f"{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}"
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{unique}.tmp")
    try:
        with _signals_held():
            try:
                os.makedirs(folder, exist_ok=True)
                write(tmp)
                _fsync(tmp, os.O_RDWR)
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
            if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
                _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        if isinstance(e, FileWriteError) or e.errno not in _NO_SPACE + _NOT_WRITABLE:
            raise
        what = f"make {folder} writable or write elsewhere"
        if e.errno in _NO_SPACE:
            what = "free space on that disk, then run again"
        raise FileWriteError(
            f"Cannot write {path} ({e.strerror}); nothing there was changed (no partial file; "
            f"an existing {os.path.basename(path)} is untouched): {what}.",
            e.errno,
        ) from None
    return path


def temporary_pid(name: str) -> int | None:
    """The process id in ``name`` if it names an :func:`atomic_write` temporary file (what a
    writer killed mid-write leaves behind), else None."""
    m = TEMPORARY_NAME.match(name)
    return int(m.group("pid")) if m else None


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Block SIGINT / SIGTERM / SIGHUP in this thread while the body runs (a signal that
    arrives meanwhile is delivered when they are unblocked)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows: the finally clauses clean up
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _fsync(path: str, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text_atomic(path: str, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj: Any, indent: int = 2) -> str:
    """Write ``obj`` as indented JSON (ending with a newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def read_json_dict(path: str) -> dict | None:
    """The JSON object in ``path`` (one of this project's own records); None if there is no
    file, {} if it cannot be read or holds no object."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def write_torch_atomic(path: str, obj: Any) -> str:
    """``torch.save(obj, path)`` atomically."""
    import torch  # here: the writers above are torch-free

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
