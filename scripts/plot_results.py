#!/usr/bin/env python
"""Plots for an output tree: base / new / HM bars per table, training curves per run.

    python scripts/plot_results.py output/base2new [--seeds 1 2 3] [--paper] [--no-curves]
        [--out-dir DIR] [--reference FILE]

Writes <out-dir>/bars_<trainer>_<protocol>.png (out-dir defaults to ROOT) and
<run>/training_curves.png next to every run that has a metrics.jsonl (with --seeds: only
those seeds' runs, each of which must be there). ROOT may also be a single run folder; a
run whose metrics.jsonl holds no epoch yet is named and left out. The paper's numbers
come from the reference file (configs/reporting/promptkd.yaml by default).
"""

from __future__ import annotations

import argparse
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.reporting.aggregate import add_seeds_option, summarize  # noqa: E402
from dassl_ext.reporting.plots import plot_base_new_bars, plot_training_curves  # noqa: E402
from dassl_ext.reporting.reference import add_reference_options, load_reference  # noqa: E402
from dassl_ext.utils.paths import walk_once  # noqa: E402

REFERENCE = os.path.join(REPO, "configs", "reporting", "promptkd.yaml")


def run_folders(root: str, seeds: list[int] | None) -> list[str]:
    """Folders under ``root`` with a metrics.jsonl; with ``seeds``, not a seed<N> folder of
    another seed; linked folders followed, each real folder once."""
    out = []
    for folder, dirs, files in walk_once(root):
        dirs.sort()
        m = re.fullmatch(r"seed(\d+)", os.path.basename(os.path.normpath(folder)))
        if "metrics.jsonl" in files and not (seeds and m and int(m.group(1)) not in seeds):
            out.append(folder)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="output folder (a tree of runs, or one run)")
    parser.add_argument("--no-curves", action="store_true", help="skip per-run training curves")
    parser.add_argument("--out-dir", help="folder for the bar charts (default: ROOT)")
    add_seeds_option(parser)
    add_reference_options(parser, "draw the paper's bars beside ours", REFERENCE)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"error: {args.root} is not a folder; pass the output folder of your runs.")
        return 1
    written, skipped = [], []
    try:
        reference = load_reference(args.reference)
        for table in summarize(args.root, reference, args.seeds):
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"bars_{table.trainer}_{table.protocol}")
            out = os.path.join(args.out_dir or args.root, f"{name}.png")
            published = reference.numbers_for(table.trainer) if args.paper else None
            written.append(plot_base_new_bars(table, out, paper=published and published[1]))
        if not args.no_curves:
            for folder in run_folders(args.root, args.seeds):
                try:
                    written.append(plot_training_curves(folder))
                except UserError as e:  # one run without epochs yet: draw the others
                    skipped.append(str(e))
    except UserError as e:
        print(f"error: {e}")
        return 1
    for reason in skipped:
        print(f"warning: {reason}")
    if not written:
        print(f"error: nothing to plot under {args.root} (no results.json or metrics.jsonl).")
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
