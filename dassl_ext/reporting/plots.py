"""PNG plots: a run's training curves, and base / new / HM bars across datasets.

Figures are drawn with the object API on the Agg canvas (no pyplot, no global
backend switch), so this works headless and inside other programs.
"""

from __future__ import annotations

import io
import json
import math
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from dassl_ext.errors import UserError
from dassl_ext.reporting.aggregate import Table, published_average
from dassl_ext.reporting.reference import Numbers
from dassl_ext.utils.atomic import write_bytes_atomic


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    return write_bytes_atomic(path, png.getvalue())


def _epoch_record(line: str) -> dict | None:
    """One metrics.jsonl line as an epoch record, or None when it is not one (a line cut
    by an interrupted run, or anything else that is not {"epoch": N, ...} with numbers)."""
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    num = (int, float)
    ok = (
        isinstance(rec, dict)
        and type(rec.get("epoch")) is int  # not a bool
        and all(rec.get(k) is None or isinstance(rec[k], num) for k in ("lr", "val_accuracy"))
        and (rec.get("loss") is None or (isinstance(rec["loss"], dict)
             and all(isinstance(v, num) for v in rec["loss"].values())))
    )  # fmt: skip
    return rec if ok else None


def read_metrics(run_dir: str) -> list[dict]:
    """Epoch records of ``<run_dir>/metrics.jsonl``, one per epoch (the last wins on resume).
    Lines that are not epoch records are skipped; a file that is not text raises UserError."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"{path} does not exist: pass the output folder of a training run.")
    by_epoch: dict[int, dict] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = _epoch_record(line)
                if rec is not None:
                    by_epoch[rec["epoch"]] = rec
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (a damaged file?); delete it.") from None
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_training_curves(run_dir: str, out_png: str | None = None) -> str:
    """Loss, LR and selection accuracy per epoch -> ``<run_dir>/training_curves.png``."""
    records = read_metrics(run_dir)
    if not records:
        raise UserError(
            f"{os.path.join(run_dir, 'metrics.jsonl')} holds no epoch record (empty, or an"
            " unfinished first epoch); no training curves for that run."
        )
    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(13, 3.6), layout="constrained")
    ax_loss, ax_lr, ax_acc = fig.subplots(1, 3)
    names = sorted({k for r in records for k in (r.get("loss") or {})})
    for name in names:
        pts = [(r["epoch"], r["loss"][name]) for r in records if name in (r.get("loss") or {})]
        ax_loss.plot(*zip(*pts), marker="o", ms=3, label=name)
    ax_loss.set(title="training loss (epoch mean)", xlabel="epoch")
    if names:
        ax_loss.legend(fontsize=8)
    ax_lr.plot(epochs, [r.get("lr", math.nan) for r in records], marker="o", ms=3)
    ax_lr.set(title="learning rate", xlabel="epoch")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    acc = [(r["epoch"], r["val_accuracy"]) for r in records if r.get("val_accuracy") is not None]
    if acc:
        ax_acc.plot(*zip(*acc), marker="o", ms=3, color="tab:green")
        best = max(acc, key=lambda p: p[1])
        ax_acc.annotate(f"best {best[1]:.2f} (epoch {best[0]})", best, fontsize=8,
                        xytext=(0, -12), textcoords="offset points", ha="center")  # fmt: skip
    else:
        ax_acc.text(0.5, 0.5, "no per-epoch selection\n(TEST.FINAL_MODEL last_step)",
                    ha="center", va="center", transform=ax_acc.transAxes)  # fmt: skip
    ax_acc.set(title="selection (val) accuracy %", xlabel="epoch")
    for ax in (ax_loss, ax_lr, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    parts = os.path.normpath(os.path.abspath(run_dir)).split(os.sep)
    fig.suptitle("/".join(parts[-3:]), fontsize=10)
    return _save(fig, out_png or os.path.join(run_dir, "training_curves.png"))


def plot_base_new_bars(table: Table, out_png: str, paper: Numbers | None = None) -> str:
    """Base / new / HM bars (std as error bars) per dataset plus Average; ``paper`` (dataset
    -> (base, new, HM)) adds hatched bars beside ours. Without base/new: one accuracy bar."""
    rows = table.rows + ([table.average] if table.average else [])
    labels = [r.label or r.dataset for r in rows]
    b2n = "base" in table.split_names and "new" in table.split_names
    metrics = ["base", "new", "HM"] if b2n else table.split_names[:1]
    colors = {"base": "tab:blue", "new": "tab:orange", "HM": "tab:green"}
    paper = dict(paper or {})
    average = published_average(paper, table) if table.average else None
    if average:
        paper["Average"] = average
    show_paper = b2n and any(r.dataset in paper for r in rows)
    per_group = len(metrics) * (2 if show_paper else 1)
    width = 0.8 / per_group
    fig = Figure(figsize=(max(6.0, 1.3 * len(rows) + 2), 4.2), layout="constrained")
    ax = fig.subplots()
    for i, metric in enumerate(metrics):
        means, errs = [], []
        for r in rows:
            s = r.hm_seeds if metric == "HM" else r.stats.get(metric)
            mean = r.hm if metric == "HM" else s and s.mean  # a row's HM: of its means
            means.append(math.nan if mean is None else mean)
            errs.append(s.std if s and s.n > 1 else 0.0)
        slot = i * (2 if show_paper else 1)
        xs = [k + (slot - (per_group - 1) / 2) * width for k in range(len(rows))]
        color = colors.get(metric, "tab:blue")
        ax.bar(xs, means, width, yerr=errs, capsize=2, color=color, label=metric)
        if show_paper:
            ref = [paper[r.dataset][i] if r.dataset in paper else math.nan for r in rows]
            ax.bar([x + width for x in xs], ref, width, color="white", edgecolor=color,
                   hatch="//", label=f"{metric} (paper)")  # fmt: skip
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right")
    ax.set_ylabel("accuracy %")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{table.title} | protocol: {table.protocol}", fontsize=10)
    return _save(fig, out_png)
