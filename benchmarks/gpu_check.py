"""Helpers of ``gpu_check.sh``: the fail-fast GPU check and the one table of its results.

``python benchmarks/gpu_check.py require-gpu`` exits 2 with one sentence when no CUDA GPU is
visible; ``python benchmarks/gpu_check.py report OUT`` prints one table from what
``gpu_check.sh`` left in OUT: ``step_<prec>_b<batch>.json`` of ``promptkd_step.py`` (stored
teacher views included: images/s with and without the views' replay), ``pytest.txt`` and
``data_loading.txt``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys

NAMES = {
    "train-ours": "train, stored text",
    "train-official": "train, official",
    "train-views": "train, stored views",
    "eval-ours": "eval, student only",
    "eval-official": "eval, official",
}

# the official counterpart of a variant (ratios against it)
OFFICIAL = {
    "train-ours": "train-official",
    "train-views": "train-official",
    "eval-ours": "eval-official",
}


def require_gpu() -> int:
    """0 with the GPU's name printed, else 2 with the reason (no torch CUDA, no device)."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda or "none"
        print(
            f"gpu_check: no CUDA GPU visible (torch {torch.__version__}, CUDA build {built}); "
            "run it on a machine with an NVIDIA GPU.",
            file=sys.stderr,
        )
        return 2
    print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    return 0


def load_results(out: str) -> list[dict]:
    """Every result row of the ``step_*.json`` files in ``out``, with the run's precision."""
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "step_*.json"))):
        with open(path) as f:
            run = json.load(f)
        for r in run["results"]:
            rows.append({**r, "prec": run["args"]["prec"], "classes": run["args"]["classes"]})
    return rows


def checkpointing_lines(out: str) -> list[str]:
    """Checkpointing on / off per ``ckpt_*.json`` (the student's blocks recomputed in the
    backward): step time and peak CUDA memory ratios."""
    lines = []
    for path in sorted(glob.glob(os.path.join(out, "ckpt_*.json"))):
        with open(path) as f:
            run = json.load(f)
        by = {r["grad_ckpt"]: r for r in run["results"] if r["variant"] == "train-ours"}
        if "off" in by and "on" in by:
            off, on = by["off"], by["on"]
            lines.append(
                f"{run['args']['prec']}, batch {off['batch']}: checkpointing on / off: step time "
                f"{on['sec_per_step'] / off['sec_per_step']:.2f}x, peak CUDA memory "
                f"{on['peak_cuda_mb'] / max(off['peak_cuda_mb'], 1e-9):.2f}x "
                f"({on['peak_cuda_mb']:.0f} vs {off['peak_cuda_mb']:.0f} MB)"
            )
    return lines


def pytest_summary(out: str) -> str:
    """The last summary line of ``pytest.txt`` ("12 passed, 3 skipped in 80s"), or why not."""
    path = os.path.join(out, "pytest.txt")
    if not os.path.isfile(path):
        return "pytest: not run"
    with open(path) as f:
        lines = [line.strip() for line in f if re.search(r"\d+ (passed|failed|error)", line)]
    return f"pytest: {lines[-1].strip('= ')}" if lines else "pytest: no summary (timed out?)"


def format_report(rows: list[dict], out: str) -> str:
    """One table: precision, variant, batch, ms/step, images/s, peak CUDA MB; then ratios,
    the pytest summary and the data-loading figures."""
    lines = ["prec | variant | teacher | batch | ms / step | images / s | peak CUDA MB"]
    for r in sorted(rows, key=lambda r: (r["prec"], r["variant"], r["batch"])):
        lines.append(
            f"{r['prec']} | {NAMES[r['variant']]} | {r['teacher_prec'] or '-'} | {r['batch']} | "
            f"{1000 * r['sec_per_step']:.1f} | {r['images_per_sec']:.0f} | {r['peak_cuda_mb']:.0f}"
        )
    by = {(r["prec"], r["variant"], r["batch"]): r for r in rows}
    for (prec, variant, batch), r in sorted(by.items()):
        official = by.get((prec, OFFICIAL.get(variant, ""), batch))
        if official:
            what = "step time" if variant.startswith("train") else "eval speed"
            ours = "stored views" if variant == "train-views" else "ours"
            ratio = (
                r["sec_per_step"] / official["sec_per_step"]
                if variant.startswith("train")
                else official["sec_per_step"] / r["sec_per_step"]
            )
            mem = r["peak_cuda_mb"] / max(official["peak_cuda_mb"], 1e-9)
            lines.append(
                f"{prec}, batch {batch}: {what} {ours} / official {ratio:.2f}x, "
                f"peak CUDA memory {mem:.2f}x"
            )
    for (prec, variant, batch), r in sorted(by.items()):
        if variant == "train-views" and r.get("data_sec_per_step"):
            compute = r["sec_per_step"] - r["data_sec_per_step"]
            lines.append(
                f"{prec}, batch {batch}: stored views {r['images_per_sec']:.0f} images/s with the "
                f"views' replay and read in the step ({1000 * r['data_sec_per_step']:.1f} ms), "
                f"{batch / max(compute, 1e-9):.0f} images/s without (a loader's workers replay "
                "in parallel)"
            )
    lines += checkpointing_lines(out)
    lines.append(pytest_summary(out))
    data = os.path.join(out, "data_loading.txt")
    if os.path.isfile(data):
        with open(data) as f:
            lines += ["data loading:"] + [f"  {line.rstrip()}" for line in f if line.strip()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("require-gpu", help="exit 2 unless a CUDA GPU is visible")
    report = sub.add_parser("report", help="print the table of a gpu_check.sh output folder")
    report.add_argument("out")
    args = p.parse_args(argv)
    if args.command == "require-gpu":
        return require_gpu()
    rows = load_results(args.out)
    if not rows:
        print(f"gpu_check: no step_*.json in {args.out}; nothing to report.", file=sys.stderr)
        return 1
    print(format_report(rows, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
