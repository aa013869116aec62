#!/usr/bin/env python
"""Average runs over seeds: per-dataset base / new / HM tables from an output tree.

    python scripts/parse_results.py output/base2new [--seeds 1 2 3] [--ci] [--paper]
        [--markdown results.md] [--csv results.csv] [--reference FILE]

Reads every results.json under ROOT (and Dassl log.txt files of runs made with the
official code); with --seeds only those seeds' runs, each of which must be there.
Replaces Dassl's parse_test_res.py. The paper's numbers, the row order
and how official logs report come from the reference file
(configs/reporting/promptkd.yaml by default).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.reporting.aggregate import add_seeds_option, summarize  # noqa: E402
from dassl_ext.reporting.reference import add_reference_options, load_reference  # noqa: E402
from dassl_ext.reporting.tables import to_markdown, write_csv  # noqa: E402
from dassl_ext.utils.atomic import write_text_atomic  # noqa: E402

REFERENCE = os.path.join(REPO, "configs", "reporting", "promptkd.yaml")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder to search for results.json / log.txt")
    add_seeds_option(parser)
    parser.add_argument("--ci", action="store_true", help="add 95%% confidence intervals")
    parser.add_argument("--markdown", metavar="FILE", help="also write the tables as Markdown")
    parser.add_argument("--csv", metavar="FILE", help="also write the rows as CSV")
    add_reference_options(parser, "add the paper's numbers", REFERENCE)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    if not os.path.isdir(args.root):
        print(f"error: {args.root} is not a folder; pass the output folder of your runs.")
        return 1
    try:
        reference = load_reference(args.reference)
        tables = summarize(args.root, reference, args.seeds)
    except UserError as e:
        print(f"error: {e}")
        return 1
    if not tables:
        print(f"error: no results.json or Dassl log.txt with results under {args.root}.")
        return 1
    text = to_markdown(tables, ci=args.ci, paper=reference if args.paper else None)
    print(text, end="")
    for flag, path, write in (
        ("--markdown", args.markdown, lambda path: write_text_atomic(path, text)),
        ("--csv", args.csv, lambda path: write_csv(tables, path)),
    ):
        problem = path and _not_writable(path)
        if problem:
            print(f"error: {flag} {path} {problem}; name another file.")
            return 1
        if path:
            try:
                write(path)
            except OSError as e:  # a FileWriteError (no space, read-only) says it all
                print(f"error: {e}" if isinstance(e, UserError) else f"error: Cannot write "
                      f"{path} ({e.strerror or e}); name another file.")  # fmt: skip
                return 1
    return 0


RUN_FILES = ("results.json", "config.yaml", "log.txt", "metrics.jsonl")


def _not_writable(path: str) -> str | None:
    """Why the table must not be written to ``path`` (a phrase), or None."""
    if os.path.isdir(path):
        return "is a folder"
    if os.path.basename(path) in RUN_FILES and os.path.exists(path):
        return "is a run's own record, which the table would replace"
    return None


if __name__ == "__main__":
    sys.exit(main())
