"""Print the demo's table: zero-shot and trained teacher, zero-shot and distilled student.

Each row reads the ``results.json`` files under one folder (one per seed; zero-shot
runs have no seed) that report the ``base`` and ``new`` splits, and prints base / new /
HM as mean ± std over the runs, with their seeds. With ``--seeds`` a row takes only those
seeds (leftovers of other seeds in the folder are left out) and each must be there. A row
never mixes configurations: runs with different config hashes stop it with an error.
``--plot`` also draws every row side by side: base, new and HM, one bar per row in each
(means labelled, std over the seeds as error bars), on matplotlib's Agg canvas (no pyplot).

Usage: python scripts/demo_table.py LABEL=FOLDER [LABEL=FOLDER ...] [--seeds N ...]
    [--markdown FILE] [--plot FILE.png] [--title TEXT]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from typing import NamedTuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.reporting.aggregate import add_seeds_option, collect_runs, hm, select_seeds  # noqa: E402,E501
from dassl_ext.utils.atomic import write_bytes_atomic, write_text_atomic  # noqa: E402


class ModelRow(NamedTuple):
    """One model's base and new accuracies over its runs (one per seed; zero-shot: one)."""

    label: str
    backbone: str
    base: list[float]
    new: list[float]
    seeds: list[int]

    def mean(self, metric: str) -> float:
        """Mean base or new accuracy; HM: the harmonic mean of the two means."""
        if metric == "HM":
            return hm(statistics.fmean(self.base), statistics.fmean(self.new))
        return statistics.fmean(getattr(self, metric))

    def std(self, metric: str) -> float:
        """Standard deviation over the runs (0 for one run, and for HM, a mean of means)."""
        values = [] if metric == "HM" else getattr(self, metric)
        return statistics.stdev(values) if len(values) > 1 else 0.0

    def cells(self) -> list[str]:
        def fmt(metric: str) -> str:
            n = len(self.base)
            mean = f"{self.mean(metric):.2f}"
            return f"{mean} ± {self.std(metric):.2f}" if n > 1 and metric != "HM" else mean

        seeds = ", ".join(map(str, self.seeds)) or "-"
        return [self.label, self.backbone, fmt("base"), fmt("new"), fmt("HM"), seeds]


def model_row(label: str, folder: str, seeds: list[int] | None = None) -> ModelRow:
    """The base/new runs under ``folder`` (of ``seeds`` only, if given). Raises UserError when
    there are none, or when they come from different configurations."""
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
    return ModelRow(
        label,
        runs[0].backbone,
        [r.accuracy["base"] for r in runs],
        [r.accuracy["new"] for r in runs],
        sorted({r.seed for r in runs if r.seed is not None and r.seed >= 0}),
    )


def row(label: str, folder: str, seeds: list[int] | None = None) -> list[str]:
    """One table row (its cells) over the base/new runs under ``folder``; see model_row."""
    return model_row(label, folder, seeds).cells()


METRICS = ("base", "new", "HM")


def models_figure(rows: list[ModelRow], title: str = "") -> Figure:
    """Grouped bars: base, new and HM, each with one bar per model side by side (std over
    seeds as error bars), every bar labelled with its mean; the legend names the models."""
    n_bars = len(rows) * len(METRICS)
    fig = Figure(figsize=(max(6.0, 2.0 + 0.6 * n_bars), 5.0), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = [k + (i - (len(rows) - 1) / 2) * width for k in range(len(METRICS))]
        means = [r.mean(m) for m in METRICS]
        errs = [r.std(m) for m in METRICS]
        bars = ax.bar(xs, means, width, yerr=errs if any(errs) else None, capsize=2,
                      color=f"C{i % 10}", label=f"{r.label}: {r.backbone}")  # fmt: skip
        ax.bar_label(bars, labels=[f"{m:.1f}" for m in means], fontsize=8, padding=2)
    ax.set_xticks(range(len(METRICS)), METRICS)
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 108)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=2)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def bar_count(fig: Figure) -> int:
    """The number of bars drawn in ``fig`` (what a test checks instead of reading pixels)."""
    return sum(len(ax.patches) for ax in fig.axes)


def plot_models(rows: list[ModelRow], path: str, title: str = "") -> str:
    """Write :func:`models_figure` as a PNG to ``path`` (atomically); returns the path."""
    fig = models_figure(rows, title)
    FigureCanvasAgg(fig)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    return write_bytes_atomic(path, png.getvalue())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", nargs="+", metavar="LABEL=FOLDER")
    parser.add_argument("--markdown", help="also write the table as Markdown to this file")
    parser.add_argument("--plot", metavar="FILE.png", help="also write the grouped bar chart here")
    parser.add_argument("--title", default="", help="the bar chart's title")
    add_seeds_option(parser)
    args = parser.parse_args(argv)
    rows = []
    for item in args.rows:
        label, sep, folder = item.partition("=")
        if not sep:
            parser.error(f"'{item}' is not LABEL=FOLDER")
        try:
            rows.append(model_row(label, folder, args.seeds))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(1) from None
    headers = ["model", "CLIP", "base", "new", "HM", "seeds"]
    cells = [r.cells() for r in rows]
    text = tabulate(cells, headers=headers, tablefmt="github", disable_numparse=True)
    print(text)
    if args.markdown:
        write_text_atomic(args.markdown, text + "\n")
    if args.plot:
        print(f"Bar chart of the {len(rows)} models: {plot_models(rows, args.plot, args.title)}")
    return text


if __name__ == "__main__":
    main()
