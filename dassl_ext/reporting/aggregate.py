"""Aggregate runs over seeds into per-dataset base / new / HM tables.

Inputs: the ``results.json`` of each run under an output tree, else Dassl ``log.txt`` files
of runs made with the official code. One table per (trainer, protocol, eval_splits,
backbone); a row per dataset (and config, if a dataset was run with several); seeds are
averaged. Conventions (../shared/reference/paper-numbers.md): a row's HM is the HM of its
mean base and mean new; the Average row's HM is the HM of the averaged base and averaged
new (not the mean of the per-dataset HMs). Std is the sample std (n - 1).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field

from dassl_ext.errors import UserError
from dassl_ext.evaluation.results import read_results
from dassl_ext.reporting.dassl_log import parse_dassl_log
from dassl_ext.reporting.reference import Numbers, Reference
from dassl_ext.utils.paths import walk_once

logger = logging.getLogger(__name__)

PROTOCOLS = {
    "paper": "paper (checkpoint selected on a test-derived val split, as the official code)",
    "clean": "clean (checkpoint selected on held-out validation images)",
    "official": "official code (read from Dassl logs; selection as the official code)",
}
COLLAPSE_POINTS = 10.0  # a seed this far below the median of the others is flagged,
COLLAPSE_STDS = 3.0  # ... or this many std devs of the others below their median,
COLLAPSE_MIN_POINTS = 3.0  # ... if also this far below (a few tenths is seed noise)


def hm(base: float, new: float) -> float:
    """Harmonic mean of two accuracies."""
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


@dataclass
class Run:
    """One run: accuracy per reported split."""

    path: str
    trainer: str
    dataset: str
    seed: int | None
    protocol: str
    eval_splits: str
    backbone: str
    config: str
    accuracy: dict[str, float]
    selected: bool | None = None  # a checkpoint was chosen on val (None: unknown)

    @property
    def key(self) -> tuple:
        """Its table (the first four) and row: runs with one key differ by seed only."""
        return (self.trainer, self.protocol, self.eval_splits, self.backbone, self.dataset,
                self.config)  # fmt: skip


@dataclass
class Stat:
    """Values over seeds."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else math.nan

    @property
    def ci95(self) -> float:
        """Half-width of the 95% CI of the mean (t distribution)."""
        if self.n < 2:
            return math.nan
        from scipy.stats import t  # installed with scikit-learn; imported when asked: slow

        return float(t.ppf(0.975, self.n - 1)) * self.std / math.sqrt(self.n)


@dataclass
class Row:
    """One dataset (and config): a Stat per split, plus HM for base/new."""

    dataset: str
    config: str
    seeds: list
    stats: dict[str, Stat]
    hm: float | None = None  # HM of the mean base and mean new
    hm_seeds: Stat | None = None  # HM of each seed
    label: str = ""
    per_seed: dict = field(default_factory=dict, repr=False)  # seed -> split -> accuracy


@dataclass
class Table:
    trainer: str
    protocol: str
    eval_splits: str
    backbone: str
    rows: list[Row]
    average: Row | None = None
    warnings: list[str] = field(default_factory=list)
    selected: set = field(default_factory=set)  # the runs' `selected` flags

    @property
    def protocol_text(self) -> str:
        text = PROTOCOLS.get(self.protocol, self.protocol)
        if self.protocol == "paper" and self.eval_splits == "base_new":
            text = text.replace("a test-derived val split", "the base test split")
        if self.selected == {False}:
            text = f"{self.protocol} (no checkpoint selection: last-epoch model)"
        elif len(self.selected - {None}) > 1:
            text += "; some runs used the last-epoch model instead"
        return text

    @property
    def title(self) -> str:
        bb = f" | backbone: {self.backbone}" if self.backbone else ""
        return f"{self.trainer} | splits: {self.eval_splits}{bb}"

    @property
    def split_names(self) -> list[str]:
        names = {s for r in self.rows for s in r.stats}
        first = [s for s in ("base", "new", "test") if s in names]
        return first + sorted(names - set(first))


def run_from_record(record: dict, path: str) -> Run:
    """Run from a checked results.json (``read_run_record``) or a parsed Dassl log."""
    seed = record.get("seed")
    return Run(
        path=path,
        trainer=str(record.get("trainer") or "unknown"),
        dataset=str(record.get("dataset") or "unknown"),
        seed=int(seed) if seed is not None else None,
        protocol=str(record.get("protocol") or "unknown"),
        eval_splits=str(record.get("eval_splits") or "standard"),
        backbone=str(record.get("backbone") or ""),
        config=str(record.get("config_hash") or ""),
        accuracy={name: float(v["accuracy"]) for name, v in record["splits"].items()},
        selected=(record["selection"] is not None) if "selection" in record else None,
    )


def read_run_record(path: str) -> dict:
    """One results.json: its ``splits`` each with a numeric ``accuracy``, ``seed`` an integer
    or null; else a UserError naming the file (a table must not lose a seed quietly). The
    record of a run trained without evaluation (``"no_test": true``) may have no splits."""
    fix = "re-run that run (delete its folder first) or move the file out of the tree"
    try:
        record = read_results(path)
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text (a damaged file?); {fix}.") from None
    except ValueError as e:
        raise UserError(f"{path} is truncated or not JSON ({e}); {fix}.") from None
    except OSError as e:
        raise UserError(f"Cannot read {path} ({e.strerror or e}); check its permissions.") from None
    splits = record.get("splits") if isinstance(record, dict) else None
    if splits == {} and record.get("no_test") is True:
        return record  # trained without evaluation (TEST.NO_TEST): no result to check
    if not isinstance(splits, dict) or not splits:
        raise UserError(f"{path} is not a results file: it has no 'splits' with results; {fix}.")
    for name, value in splits.items():
        acc = value.get("accuracy") if isinstance(value, dict) else None
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not math.isfinite(acc):
            raise UserError(
                f"{path}: split '{name}' has no numeric 'accuracy' (got {acc!r}); {fix}."
            )
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise UserError(f"{path}: 'seed' is {seed!r}, not an integer; {fix}.")
    return record


def collect_runs(root: str, reference: Reference | None = None) -> list[Run]:
    """Every run under ``root``: results.json, else the newest parsable Dassl log. A corrupt
    results.json is a UserError; a run of ours without one (unfinished: it has a config.yaml)
    or trained without evaluation (TEST.NO_TEST: no splits), and a Dassl log without a
    result, are left out with a warning naming them. Linked folders are followed (runs kept
    elsewhere and linked into a tree); a folder reached twice, or through a link loop, is
    read once."""
    runs: list[Run] = []
    for folder, dirs, files in walk_once(root):
        dirs.sort()
        record, path = None, ""
        if "results.json" in files:
            path = os.path.join(folder, "results.json")
            record = read_run_record(path)
            if not record["splits"]:
                logger.warning(
                    f"{folder} was trained without evaluation (TEST.NO_TEST): no results; left out."
                )
                continue
        elif "config.yaml" in files:
            # Our own log.txt has Dassl's accuracy lines too: an unfinished run must not be
            # read as an official one from its per-epoch validation accuracies.
            logger.warning(f"{folder} has no results.json (an unfinished run?); left out.")
            continue
        else:
            logs = sorted(f for f in files if f == "log.txt" or f.startswith("log.txt-"))
            for name in reversed(logs):  # Dassl names a newer log log.txt-<time>
                path = os.path.join(folder, name)
                record = parse_dassl_log(path, reference)
                if record:
                    break
            if logs and not record:
                logger.warning(
                    f"{os.path.join(folder, logs[-1])} holds no result (no '* accuracy:' line"
                    " of a finished run); left out."
                )
        if record:
            runs.append(run_from_record(record, path))
    return runs


def _run_folder(run: Run, seed: int) -> str:
    """Where ``seed`` of the experiment that ``run`` belongs to would be: the sibling
    seed<N> folder of the scripts' layout, else the run's own folder's parent."""
    folder = os.path.dirname(run.path)
    parent = os.path.dirname(folder)
    if re.fullmatch(r"seed\d+", os.path.basename(folder)):
        return os.path.join(parent, f"seed{seed}")
    return parent


def select_seeds(runs: list[Run], seeds: list[int]) -> list[Run]:
    """The runs of the requested ``seeds`` only, and those without a fixed seed (zero-shot:
    -1 or none). A UserError when an experiment (``Run.key``) lacks a requested seed, naming
    the folder it should be in, or when that folder holds another configuration's run: a
    row never mixes configurations."""
    wanted = set(seeds)
    kept = [r for r in runs if r.seed is None or r.seed < 0 or r.seed in wanted]
    rows: dict[tuple, dict[int, Run]] = {}
    for r in kept:
        if r.seed is not None and r.seed >= 0:
            rows.setdefault(r.key, {})[r.seed] = r
    for key, by_seed in sorted(rows.items()):
        missing = sorted(wanted - set(by_seed))
        if not missing:
            continue
        seed, example = missing[0], next(iter(by_seed.values()))
        what, expected = f"{key[0]} on {key[4]}", _run_folder(example, seed)
        there = [o for o in kept if o.seed == seed and os.path.dirname(o.path) == expected]
        if there:  # that seed's folder holds a run of another configuration
            raise UserError(
                f"The seeds of {what} were run with different configurations: seed "
                f"{example.seed} with config hash {key[5]} ({example.path}), seed {seed} with "
                f"{there[0].config} ({there[0].path}); one table row must come from one "
                "configuration: re-run the odd seed with the same options, or move it away."
            )
        raise UserError(
            f"No results.json for seed {seed} of {what} (config hash {key[5]}): expected in "
            f"{expected}; run that seed, or leave it out of the seeds asked for."
        )
    return kept


def add_seeds_option(parser: argparse.ArgumentParser) -> None:
    """``--seeds N [N ...]``: the seeds a table is made of (non-negative integers)."""

    def seed(text: str) -> int:
        if not re.fullmatch(r"0|[1-9][0-9]*", text):
            raise argparse.ArgumentTypeError(f"'{text}' is not a seed (0, 1, 2, ...)")
        return int(text)

    parser.add_argument(
        "--seeds", nargs="+", type=seed, metavar="N",
        help="only these seeds' runs (others in the tree are left out); each must be there",
    )  # fmt: skip


def _merge_seeds(runs: list[Run]) -> tuple[dict, dict]:
    """(table key, dataset, config) -> seed -> split accuracies (base/new logs joined),
    and the duplicate-seed warnings per key."""
    out: dict[tuple, dict] = {}
    dup: dict[tuple, list[str]] = {}
    for r in sorted(runs, key=lambda r: r.path):
        acc = out.setdefault(r.key, {}).setdefault(r.seed, {})
        twice = sorted(set(acc) & set(r.accuracy))
        if twice:
            dup.setdefault(r.key, []).append(
                f"{r.dataset} seed {r.seed}: {twice} found again in {r.path}; using that one."
            )
        acc.update(r.accuracy)
    return out, dup


def _collapsed(name: str, values: dict, where: str) -> list[str]:
    """Warnings for seeds far below the others (values: seed -> accuracy)."""
    msgs = []
    for seed, v in values.items():
        others = [x for s, x in values.items() if s != seed]
        if not others:
            continue
        med = statistics.median(others)
        gap = med - v
        # The std rule needs a spread of the others: with one other seed only the
        # absolute rule applies (two seeds a few points apart are not a collapse).
        by_std = (
            len(others) > 1
            and gap > COLLAPSE_MIN_POINTS
            and gap > COLLAPSE_STDS * statistics.stdev(others)
        )
        if gap > COLLAPSE_POINTS or by_std:
            msgs.append(
                f"{where} seed {seed}: {name} {v:.2f} is {gap:.2f} points below the "
                f"median of the other seeds ({med:.2f}); check that run (collapsed seed?)."
            )
    return msgs


def _seed_hms(per_seed: dict, seeds: list) -> dict:
    """seed -> HM of that seed's base and new, for the seeds that have both."""
    both = [s for s in seeds if {"base", "new"} <= set(per_seed[s])]
    return {s: hm(per_seed[s]["base"], per_seed[s]["new"]) for s in both}


def _row(dataset: str, config: str, per_seed: dict) -> Row:
    seeds = sorted(per_seed, key=lambda s: (s is None, s))
    names = sorted({n for acc in per_seed.values() for n in acc})
    stats = {n: Stat([per_seed[s][n] for s in seeds if n in per_seed[s]]) for n in names}
    row = Row(dataset, config, seeds, stats, per_seed=per_seed)
    if "base" in stats and "new" in stats:
        row.hm = hm(stats["base"].mean, stats["new"].mean)
        row.hm_seeds = Stat(list(_seed_hms(per_seed, seeds).values()))
    return row


def _row_warnings(row: Row) -> list[str]:
    """Missing splits and collapsed seeds of one row."""
    out = []
    per_seed = row.per_seed
    for n in row.stats:
        missing = [s for s in row.seeds if n not in per_seed[s]]
        if missing:
            out.append(f"{row.label}: seeds {missing} have no '{n}' result.")
        values = {s: per_seed[s][n] for s in row.seeds if n in per_seed[s]}
        out.extend(_collapsed(n, values, row.label))
    if row.hm_seeds is not None:
        out.extend(_collapsed("HM", _seed_hms(per_seed, row.seeds), row.label))
    return out


def _average(rows: list[Row], names: list[str]) -> Row | None:
    """Mean over datasets of each split's mean; HM of the averaged base and new. When every
    dataset has the same seeds, the spread is that of the per-seed averages over datasets."""
    if len(rows) < 2 or len({r.dataset for r in rows}) != len(rows):
        return None
    names = [n for n in names if all(n in r.stats for r in rows)]
    if not names:
        return None
    seeds = rows[0].seeds
    common = all(
        r.seeds == seeds and all(n in r.per_seed[s] for s in seeds for n in names) for r in rows
    )
    if common:
        per_seed = {
            s: {n: statistics.fmean(r.per_seed[s][n] for r in rows) for n in names} for s in seeds
        }
        avg = _row("Average", "", per_seed)
    else:
        stats = {n: Stat([statistics.fmean(r.stats[n].mean for r in rows)]) for n in names}
        avg = Row("Average", "", [], stats)
        if "base" in stats and "new" in stats:
            avg.hm = hm(stats["base"].mean, stats["new"].mean)
    avg.label = "Average"
    return avg


def aggregate(runs: list[Run], reference: Reference | None = None) -> list[Table]:
    """Tables of per-dataset mean / std over seeds, with Average rows and warnings; rows in
    the ``reference``'s dataset order, then by name."""
    order = (reference or Reference()).dataset_order
    tables: dict[tuple, Table] = {}
    merged, duplicates = _merge_seeds(runs)
    for key in sorted(merged, key=lambda k: (k[:4], order(k[4]), k[5])):
        table = tables.setdefault(key[:4], Table(*key[:4], rows=[]))
        table.rows.append(_row(key[4], key[5], merged[key]))
        table.warnings.extend(duplicates.get(key, []))
    for r in runs:
        tables[r.key[:4]].selected.add(r.selected)
    for table in tables.values():
        counts = Counter(r.dataset for r in table.rows)
        for r in table.rows:
            r.label = f"{r.dataset} [{r.config}]" if counts[r.dataset] > 1 else r.dataset
            table.warnings.extend(_row_warnings(r))
        table.average = _average(table.rows, table.split_names)
        if table.average is None and len(counts) < len(table.rows):
            table.warnings.append(
                "No Average row: some datasets were run with several configs (rows [hash])."
            )
        n_seeds = {len(r.seeds) for r in table.rows}
        if len(n_seeds) > 1:
            table.warnings.append(f"Datasets have different numbers of seeds: {sorted(n_seeds)}.")
    return list(tables.values())


def published_average(numbers: Numbers, table: Table) -> tuple[float, float, float] | None:
    """The Average row of published numbers over the table's datasets (mean base, mean
    new, their HM: the paper's convention); None unless all its datasets are published."""
    known = [numbers[r.dataset] for r in table.rows if r.dataset in numbers]
    if not known or len(known) != len(table.rows):
        return None
    base = statistics.fmean(k[0] for k in known)
    new = statistics.fmean(k[1] for k in known)
    return base, new, hm(base, new)


def summarize(
    root: str, reference: Reference | None = None, seeds: list[int] | None = None
) -> list[Table]:
    """collect_runs (+ select_seeds when ``seeds`` are given) + aggregate."""
    runs = collect_runs(root, reference)
    if seeds:
        runs = select_seeds(runs, seeds)
    return aggregate(runs, reference)
