"""Walking folder trees that users assemble with symbolic links."""

from __future__ import annotations

import os
from collections.abc import Iterator


def walk_once(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root)`` that follows symbolic links and enters each real folder once: a
    second link to a folder, or a link back up the tree, is skipped. Prune ``dirs`` in
    place as with ``os.walk``."""
    seen: set[str] = set()
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        yield top, dirs, files
