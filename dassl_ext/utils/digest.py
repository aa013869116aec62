"""sha256 of files: what identifies a weights file in cache keys and results, whatever its
name, location or timestamps. Each file version is hashed once (a 1 GB file takes seconds):
the digest is remembered, in memory and in an optional JSON store, under the file's stat
signature, which holds the ctime and inode (``cp -p`` keeps size and mtime; a write always
moves the ctime)."""

from __future__ import annotations

import hashlib
import os
import threading

from dassl_ext.utils.atomic import read_json_dict, write_json_atomic

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
