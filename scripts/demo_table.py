"""Print the demo's table: zero-shot and trained teacher, zero-shot and distilled student.

Each row reads the ``results.json`` files under one folder (one per seed; zero-shot
runs have no seed) that report the ``base`` and ``new`` splits, and prints base / new /
HM as mean ± std over the runs, with their seeds. With ``--seeds`` a row takes only those
seeds (leftovers of other seeds in the folder are left out) and each must be there. A row
never mixes configurations: runs with different config hashes stop it with an error.

Usage: python scripts/demo_table.py LABEL=FOLDER [LABEL=FOLDER ...] [--seeds N ...]
    [--markdown FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.reporting.aggregate import add_seeds_option, collect_runs, hm, select_seeds  # noqa: E402,E501
from dassl_ext.utils.atomic import write_text_atomic  # noqa: E402


def row(label: str, folder: str, seeds: list[int] | None = None) -> list[str]:
    """One table row over the base/new runs under ``folder`` (of ``seeds`` only, if given).
    Raises UserError when there are none, or when they come from different configurations."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder (row '{label}'); run that stage first.")
    runs = [r for r in collect_runs(folder) if {"base", "new"} <= set(r.accuracy)]
    if seeds:
        runs = select_seeds(runs, seeds)
    if not runs:
        raise UserError(f"No results.json with base and new splits under {folder}.")
    configs = sorted({r.config for r in runs})
    if len(configs) > 1:
        where = "; ".join(f"{r.path}: {r.config}" for r in sorted(runs, key=lambda r: r.path))
        raise UserError(
            f"Row '{label}' would mix runs of {len(configs)} configurations (config hashes: "
            f"{where}); re-run the odd ones with the same options, or pass --seeds to leave out"
            " the seeds of earlier runs."
        )
    base = [r.accuracy["base"] for r in runs]
    new = [r.accuracy["new"] for r in runs]

    def fmt(values: list[float]) -> str:
        mean = statistics.fmean(values)
        return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"

    seeds = sorted({r.seed for r in runs if r.seed is not None and r.seed >= 0})
    backbone = runs[0].backbone
    return [
        label,
        backbone,
        fmt(base),
        fmt(new),
        f"{hm(statistics.fmean(base), statistics.fmean(new)):.2f}",
        ", ".join(map(str, seeds)) or "-",
    ]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    add_seeds_option(parser)
    args = parser.parse_args(argv)
    rows = []
    for item in args.rows:
        label, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"'{item}' is not LABEL=FOLDER")
        try:
            rows.append(row(label, folder, args.seeds))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
    headers = ["model", "CLIP", "base", "new", "HM", "seeds"]
    text = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    print(text)
    if args.markdown:
        write_text_atomic(args.markdown, text + "\n")
    return text


if __name__ == "__main__":
    main()
