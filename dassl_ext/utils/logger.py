"""Stdlib logging to the console and ``<output>/log.txt``; only rank 0 logs INFO."""

from __future__ import annotations

import logging
import os
import sys

from dassl_ext.errors import UserError
from dassl_ext.utils.distributed import get_rank

_FMT = "%(asctime)s %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


def tolerant_console() -> None:
    """Where stdout / stderr are not UTF-8 (LC_ALL=C: ASCII), write a character they cannot
    hold as a backslash escape instead of raising (a lost log line or error message)."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def setup_logger(output_dir: str | None = None, name: str = "") -> logging.Logger:
    """Configure the logger ``name`` (root by default): console, plus ``log.txt`` (appended
    to) in ``output_dir``; other ranks log warnings only. Called again, it replaces the
    handlers it added before."""
    logger = logging.getLogger(name)
    for h in list(logger.handlers):
        if getattr(h, "_dassl_ext", False):
            logger.removeHandler(h)
            h.close()
    tolerant_console()
    rank = get_rank()
    logger.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    formatter = logging.Formatter(_FMT if rank == 0 else f"[rank {rank}] {_FMT}", _DATEFMT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if output_dir and rank == 0:
        path = os.path.join(output_dir, "log.txt")
        try:
            os.makedirs(output_dir, exist_ok=True)
            # UTF-8 whatever the locale (LC_ALL=C would make it ASCII), and never an
            # exception for a character it cannot write (a path from an odd locale)
            handlers.append(
                logging.FileHandler(path, mode="a", encoding="utf-8", errors="backslashreplace")
            )
        except OSError as e:  # the first file a run writes: say so instead of a traceback
            raise UserError(
                f"Cannot write {path} ({e.strerror}); make {output_dir} writable or choose "
                "another --output-dir."
            ) from None
    for h in handlers:
        h.setFormatter(formatter)
        h._dassl_ext = True  # type: ignore[attr-defined]
        logger.addHandler(h)
    return logger
