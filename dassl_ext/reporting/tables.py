"""Aggregated tables as Markdown (printed by scripts/parse_results.py) and CSV; with a
``Reference``, base-to-new tables get the published numbers beside ours and the HM gap."""

from __future__ import annotations

import csv
import io

from tabulate import tabulate

from dassl_ext.reporting.aggregate import Row, Stat, Table, published_average
from dassl_ext.reporting.reference import Numbers, Reference
from dassl_ext.utils.atomic import write_text_atomic


def _cell(stat: Stat | None) -> str:
    if stat is None or not stat.values:
        return "-"
    return f"{stat.mean:.2f}" if stat.n < 2 else f"{stat.mean:.2f} ± {stat.std:.2f}"


def _paper_cells(numbers: Numbers, table: Table, row: Row) -> list[str]:
    ref = published_average(numbers, table) if row is table.average else numbers.get(row.dataset)
    if ref is None:
        return ["-", "-"]
    delta = f"{row.hm - ref[2]:+.2f}" if row.hm is not None else "-"
    return [f"{ref[0]:.2f} / {ref[1]:.2f} / {ref[2]:.2f}", delta]


def table_rows(table: Table, ci: bool = False, paper: Reference | None = None) -> tuple[list, list]:
    """(headers, rows of strings) for one table; ``paper``: add its published numbers."""
    names = table.split_names
    b2n = "base" in names and "new" in names
    headers = ["Dataset", "Seeds"] + [n.capitalize() if n != "test" else "Accuracy" for n in names]
    if b2n:
        headers += ["HM", "HM (per-seed)"]
    if ci:
        headers += [f"{h} 95% CI" for h in headers[2 : 2 + len(names)]]
    published = paper.numbers_for(table.trainer) if paper and b2n else None
    if published:
        headers += [f"Paper {published[0]} B / N / HM", "Δ HM"]
    out = []
    for row in table.rows + ([table.average] if table.average else []):
        if row is table.average:
            name, seeds = "Average", f"{len(table.rows)} datasets"
        else:
            name, seeds = row.label or row.dataset, ",".join(str(s) for s in row.seeds)
        cells = [name, seeds] + [_cell(row.stats.get(n)) for n in names]
        if b2n:
            cells += [f"{row.hm:.2f}" if row.hm is not None else "-", _cell(row.hm_seeds)]
        if ci:
            cells += [
                f"± {row.stats[n].ci95:.2f}" if n in row.stats and row.stats[n].n > 1 else "-"
                for n in names
            ]
        if published:
            cells += _paper_cells(published[1], table, row)
        out.append(cells)
    return headers, out


def to_markdown(tables: list[Table], ci: bool = False, paper: Reference | None = None) -> str:
    """All tables as Markdown: title, protocol, table, conventions, warnings."""
    parts = []
    for t in tables:
        headers, rows = table_rows(t, ci=ci, paper=paper)
        parts.append(f"### {t.title}\n")
        parts.append(f"Protocol: {t.protocol_text}\n")
        parts.append(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))
        note = "\nMean ± sample std over seeds."
        if "HM" in headers:
            note += (
                " HM = harmonic mean of the mean base and mean new accuracy; HM (per-seed)"
                " averages each seed's HM; the Average row's HM is the HM of the averaged"
                " base and new (the paper's convention)."
            )
        else:
            note += " The Average row is the mean over datasets."
        parts.append(note + "\n")
        parts.extend(f"- WARNING: {w}" for w in t.warnings)
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


def write_csv(tables: list[Table], path: str) -> None:
    """One CSV line per row (Average included), numbers unformatted."""
    fields = ["trainer", "protocol", "eval_splits", "backbone", "dataset", "config", "seeds"]
    lines = []
    for t in tables:
        for row in t.rows + ([t.average] if t.average else []):
            seeds = " ".join(str(s) for s in row.seeds)
            values = [t.trainer, t.protocol, t.eval_splits, t.backbone, row.dataset, row.config]
            line = dict(zip(fields, [*values, seeds]))  # the first seven fields
            for n, s in row.stats.items():
                line.update({f"{n}_mean": s.mean, f"{n}_std": s.std, f"{n}_ci95": s.ci95})
                line[f"{n}_n"] = s.n
            if row.hm is not None:
                line["hm"] = row.hm
            if row.hm_seeds is not None:
                line.update(hm_seed_mean=row.hm_seeds.mean, hm_seed_std=row.hm_seeds.std)
            fields += [k for k in line if k not in fields]
            lines.append(line)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(lines)
    write_text_atomic(path, text.getvalue())
