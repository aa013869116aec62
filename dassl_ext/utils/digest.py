"""sha256 of files: what identifies a weights file in cache keys and results, whatever its
name, location or timestamps. Each file version is hashed once (a 1 GB file takes seconds):
the digest is remembered, in memory and in an optional JSON store, under the file's stat
signature, which holds the ctime and inode (``cp -p`` keeps size and mtime; a write always
moves the ctime). A file that is gone keeps its last recorded digest (:func:`recorded_digest`):
what a cache built from it is keyed by."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading

from dassl_ext.utils.atomic import read_json_dict, write_json_atomic

logger = logging.getLogger(__name__)

_CHUNK = 1 << 22
_memory: dict[str, tuple[list, str]] = {}  # abspath -> (signature, digest)
_lock = threading.Lock()


def _signature(path: str) -> list:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def sha256_of(path: str) -> str:
    """The sha256 hex digest of the bytes of ``path`` (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: str, store: str | None = None) -> str:
    """sha256 of ``path``, computed once per file version; ``store``: a JSON file keeping the
    digests for later runs (an unreadable one is ignored and rewritten)."""
    key, sig = os.path.abspath(path), _signature(path)
    with _lock:
        known = _memory.get(key)
    if known is not None and known[0] == sig:
        return known[1]
    saved = (read_json_dict(store) or {}) if store else {}
    if saved.get(key, {}).get("signature") == sig:
        digest = saved[key]["sha256"]
    else:
        digest = sha256_of(path)
        if _signature(path) != sig:  # written while being read: do not remember either
            return digest
        if store:
            saved[key] = {"signature": sig, "sha256": digest}
            write_json_atomic(store, saved)
    with _lock:
        _memory[key] = (sig, digest)
    return digest


def recorded_digest(path: str, store: str) -> str | None:
    """The sha256 last recorded for ``path`` in ``store`` (see :func:`file_digest`) when the
    file no longer exists (one log line says it is used), else None: the file exists (hash
    it instead), or nothing valid was recorded for it."""
    if os.path.exists(path):
        return None
    key = os.path.abspath(path)
    entry = (read_json_dict(store) or {}).get(key)
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        return None
    logger.info(f"{key} no longer exists: using its sha256 recorded in {store} ({digest})")
    return digest


def recorded_paths(store: str, folder: str) -> list[str]:
    """The paths directly in ``folder`` that ``store`` holds a digest for (sorted)."""
    folder = os.path.abspath(folder)
    saved = read_json_dict(store) or {}
    return sorted(p for p in saved if os.path.dirname(p) == folder)
