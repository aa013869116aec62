"""``results.json``: one file per run, merged split by split; plus the config hash."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from typing import Any

import yaml

from dassl_ext.config.compare import PLACE_KEYS, plain
from dassl_ext.config.defaults import ADDED, RETIRED
from dassl_ext.utils.atomic import write_json_atomic

logger = logging.getLogger(__name__)

# Keys that name where or which repetition a run is, not what it computes: the hash of
# the rest identifies an experiment, so the seeds of one experiment share it.
RUN_IDENTITY_KEYS = ("SEED", *PLACE_KEYS)


def config_hash(cfg: Any) -> str:
    """Short sha1 of the yaml dump of ``cfg`` without the ``RUN_IDENTITY_KEYS``."""
    d = plain(cfg)
    for key, value in RETIRED.items():  # as when the defaults held them: the same hash
        *parents, leaf = key.split(".")
        functools.reduce(lambda node, p: node.setdefault(p, {}), parents, d)[leaf] = value
    for key in RUN_IDENTITY_KEYS:
        _pop(d, key)
    for key, default in ADDED.items():  # older runs lack them: leave them out at the default
        if _get(d, key) == plain(default):
            _pop(d, key, prune=True)
    text = yaml.safe_dump(d, sort_keys=True)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _get(d: dict, key: str) -> Any:
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def _pop(d: dict, key: str, prune: bool = False) -> None:
    """Remove dotted ``key`` from nested dicts ``d``; ``prune``: and the sections it empties."""
    head, _, rest = key.partition(".")
    if not isinstance(d, dict) or head not in d:
        return
    if rest:
        _pop(d[head], rest, prune)
        if prune and d[head] == {}:
            del d[head]
    else:
        del d[head]


def read_results(path: str) -> dict:
    """Load one results.json."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_results(path: str, record: dict) -> dict:
    """Merge ``record`` into the results.json at ``path`` (atomically) and return the result:
    its ``splits`` are added to / replace the file's, its other keys overwrite. A file from
    another ``config_hash`` (another experiment) or an unreadable one is replaced."""
    merged: dict = {}
    if os.path.exists(path):
        try:
            merged = read_results(path)
        except (OSError, ValueError) as e:
            logger.warning(f"Replacing unreadable {path} ({e}).")
        old_hash, new_hash = merged.get("config_hash"), record.get("config_hash")
        if old_hash and new_hash and old_hash != new_hash:
            logger.warning(
                f"{path} was written by another config ({old_hash} != {new_hash}); replacing it."
            )
            merged = {}
    splits = dict(merged.get("splits") or {})
    splits.update(record.get("splits") or {})
    merged.update({k: v for k, v in record.items() if k != "splits"})
    merged["splits"] = splits
    merged.setdefault("selection", None)
    write_json_atomic(path, merged)
    return merged
