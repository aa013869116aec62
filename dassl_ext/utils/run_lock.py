"""One live run per output folder: an OS file lock, plus a note saying who holds it.

``<folder>/.run.lock`` is locked with :mod:`filelock` (``flock``) while a run uses the
folder; the OS releases it when the process ends, however it ends (kill -9 included).
``<folder>/.run.json`` names the holder (pid, host, start time, command) for a second run;
it is removed when the run ends normally, so one found by a run that got the lock is a dead
run's (*stale*). The lock file stays: deleting a lock file another process may be opening
would let two processes hold "the" lock.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import shlex
import socket
import sys
from dataclasses import dataclass, field

from filelock import FileLock, Timeout

from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import read_json_dict, temporary_pid, write_json_atomic

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
INFO_FILE = ".run.json"


def describe_holder(info: dict | None) -> str:
    """``process 123 on host h (since 2025-01-01T10:00:00+00:00: python train.py ...)``."""
    if not info:
        return "a process that has not yet written its details"
    command = str(info.get("command", ""))
    command = command if len(command) <= 120 else command[:117] + "..."
    return (
        f"process {info.get('pid', '?')} on host {info.get('host', '?')} "
        f"(since {info.get('since', '?')}: {command})"
    )


def _this_process() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
    }


@dataclass
class RunLock:
    """A held folder lock; ``stale``: the note of a dead run whose lock was taken over."""

    folder: str
    _lock: FileLock
    stale: dict | None = None
    _released: bool = field(default=False, repr=False)

    def release(self) -> None:
        """Remove this run's note and release the lock (idempotent)."""
        if self._released:
            return
        self._released = True
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.folder, INFO_FILE))
        self._lock.release(force=True)


def acquire_run_lock(folder: str) -> RunLock:
    """Lock ``folder`` (created if needed) for this process, without waiting; a UserError
    naming the holder when another live process has it."""
    os.makedirs(folder, exist_ok=True)
    info_path = os.path.join(folder, INFO_FILE)
    lock = FileLock(os.path.join(folder, LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(
            f"{folder} is in use by another run: {describe_holder(read_json_dict(info_path))}; "
            "wait for it to finish (or stop it), or choose another --output-dir."
        ) from None
    stale = read_json_dict(info_path)  # we hold the lock: a note left here is a dead run's
    write_json_atomic(info_path, _this_process())
    return RunLock(folder, lock, stale)


def _alive_here(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: it exists, owned by someone else
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale_temporaries(folder: str) -> list[str]:
    """Delete (and return) the :func:`~dassl_ext.utils.atomic.atomic_write` temporaries that
    writers killed mid-write left in ``folder`` and its direct subfolders (``<model>/``).

    Call it holding the folder's lock. Subfolders that are run folders of their own (with a
    lock file) are left to their runs; a file whose process is alive on this host is kept.
    """
    subfolders = [e.path for e in _entries(folder) if e.is_dir(follow_symlinks=False)]
    places = [folder] + [d for d in subfolders if not os.path.exists(os.path.join(d, LOCK_FILE))]
    removed = []
    for place in places:
        for entry in _entries(place):
            pid = temporary_pid(entry.name)
            if pid is None or not entry.is_file(follow_symlinks=False) or _alive_here(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
                removed.append(entry.path)
    return removed


def _entries(folder: str) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)
