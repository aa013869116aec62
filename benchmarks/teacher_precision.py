"""Student accuracy with the frozen teacher in fp32 and in bf16 (``TRAINER.PROMPTKD.TEACHER_PREC``).

Runs the same PromptKD base-to-new distillation once per teacher precision and seed (same
data and student precision) through ``train.py`` and prints base / new / HM accuracy and
their differences from the first precision, per seed and averaged over the seeds (one run
moves by a point with any change of rounding at KD weight 1000, so judge the mean). Point
it at pretrained weights to check that a bf16 teacher costs under 0.5 points::

    python benchmarks/teacher_precision.py --root DATA --clip-root CLIPS \\
        --student digits-student --teacher digits-teacher --teacher-trainer PromptSRC \\
        --teacher-ckpt teacher_model/Digits/VLPromptLearner [--precs fp32,bf16] [--seeds 1,2]
        [KEY VALUE ...]

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


def run_teacher_precisions(args: argparse.Namespace) -> dict[tuple[str, int], dict[str, float]]:
    """One distillation per precision in ``args.precs`` and seed in ``args.seeds``; returns
    {(prec, seed): {base, new, HM}}."""
    import train

    results = {}
    for seed in args.seeds:
        for prec in args.precs:
            out = os.path.join(args.output_dir, f"seed{seed}", f"teacher_{prec}")
            argv = [
                "--root", args.root, "--seed", str(seed), "--trainer", "PromptKD",
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
            hm = 2 * base * new / max(base + new, 1e-12)
            results[prec, seed] = {"base": base, "new": new, "HM": hm}
    return results


def format_table(results: dict[tuple[str, int], dict[str, float]]) -> str:
    """Accuracy per teacher precision and seed, its difference from the first precision at
    the same seed (points), and with several seeds the means over them."""
    precs = list(dict.fromkeys(p for p, _ in results))
    seeds = list(dict.fromkeys(s for _, s in results))
    rows = {(p, str(s)): r for (p, s), r in results.items()}
    if len(seeds) > 1:
        for p in precs:
            rows[p, "mean"] = {k: sum(results[p, s][k] for s in seeds) / len(seeds)
                               for k in ("base", "new", "HM")}  # fmt: skip
    lines = ["teacher prec | seed |   base |    new |     HM | Δbase | Δnew |  ΔHM"]
    for seed in [str(s) for s in seeds] + (["mean"] if len(seeds) > 1 else []):
        first = rows[precs[0], seed]
        for p in precs:
            r = rows[p, seed]
            deltas = " | ".join(f"{r[k] - first[k]:+5.2f}" for k in ("base", "new", "HM"))
            accs = " | ".join(f"{r[k]:6.2f}" for k in ("base", "new", "HM"))
            lines.append(f"{p:>12} | {seed:>4} | {accs} | {deltas}")
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
    p.add_argument("--seeds", default=[1], type=lambda s: [int(x) for x in s.split(",")],
                   help="comma-separated seeds, e.g. 1,2,3")  # fmt: skip
    p.add_argument("--output-dir", default="output/teacher_precision")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE pairs for every run")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    results = run_teacher_precisions(parse_args(argv))
    print(format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
