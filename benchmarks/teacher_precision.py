"""Student accuracy with the frozen teacher in fp32 and in bf16 (``TRAINER.PROMPTKD.TEACHER_PREC``).

Runs the same PromptKD base-to-new distillation once per teacher precision (same seed,
data and student precision) through ``train.py`` and prints base / new / HM accuracy and
their differences from the first precision. Point it at pretrained weights to check that
a bf16 teacher costs under 0.5 points::

    python benchmarks/teacher_precision.py --root DATA --clip-root CLIPS \\
        --student digits-student --teacher digits-teacher --teacher-trainer PromptSRC \\
        --teacher-ckpt teacher_model/Digits/VLPromptLearner [--precs fp32,bf16] [KEY VALUE ...]

Trailing ``KEY VALUE`` pairs go to every run (e.g. ``OPTIM.MAX_EPOCH 5``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DIGITS = os.path.join(REPO, "configs", "datasets", "digits.yaml")
KD_DIGITS = os.path.join(REPO, "configs", "trainers", "PromptKD", "base2new", "digits.yaml")


def run_teacher_precisions(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One distillation per precision in ``args.precs``; returns {prec: {base, new, HM}}."""
    import train

    results = {}
    for prec in args.precs:
        out = os.path.join(args.output_dir, f"teacher_{prec}")
        argv = [
            "--root", args.root, "--seed", str(args.seed), "--trainer", "PromptKD",
            "--dataset-config-file", args.dataset_config, "--config-file", args.config_file,
            "--output-dir", out, "MODEL.CLIP_ROOT", args.clip_root,
            "MODEL.BACKBONE.NAME", args.student, "TRAINER.PROMPTKD.TEACHER_NAME", args.teacher,
            "TRAINER.PROMPTKD.TEACHER_TRAINER", args.teacher_trainer,
            "TRAINER.PROMPTKD.TEACHER_CKPT", args.teacher_ckpt,
            "TRAINER.PROMPTKD.TEACHER_PREC", prec, *args.opts,
        ]  # fmt: skip
        if train.main(argv) != 0:
            raise SystemExit(f"the run with TEACHER_PREC {prec} failed; see {out}/log.txt")
        with open(os.path.join(out, "results.json")) as f:
            splits = json.load(f)["splits"]
        base, new = splits["base"]["accuracy"], splits["new"]["accuracy"]
        results[prec] = {"base": base, "new": new, "HM": 2 * base * new / max(base + new, 1e-12)}
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Accuracy per teacher precision, and its difference from the first one (points)."""
    first = next(iter(results.values()))
    lines = ["teacher prec |   base |    new |     HM | Δbase | Δnew |  ΔHM"]
    for prec, r in results.items():
        deltas = " | ".join(f"{r[k] - first[k]:+5.2f}" for k in ("base", "new", "HM"))
        lines.append(f"{prec:>12} | {r['base']:6.2f} | {r['new']:6.2f} | {r['HM']:6.2f} | {deltas}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", required=True, help="DATASET.ROOT")
    p.add_argument("--clip-root", required=True, help="folder of the CLIP weight files")
    p.add_argument("--student", default="ViT-B/16")
    p.add_argument("--teacher", default="ViT-L/14")
    p.add_argument("--teacher-trainer", default="PromptSRC")
    p.add_argument("--teacher-ckpt", default="", help="teacher model file or folder")
    p.add_argument("--dataset-config", default=DIGITS)
    p.add_argument("--config-file", default=KD_DIGITS)
    p.add_argument("--precs", default="fp32,bf16", type=lambda s: s.split(","))
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output-dir", default="output/teacher_precision")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs for every run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    results = run_teacher_precisions(parse_args(argv))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
