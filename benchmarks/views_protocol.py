"""The stored-views protocol on the stand-ins, against today's recipe: wall time and accuracy.

On the demo's Digits with the pretrained stand-ins (scripts/demo.sh: digits-teacher,
digits-student, its recipe and input options, read from demo.sh itself), in OUT:

1. ``teacher``: the PromptSRC teacher, trained once (not counted in either arm; both use it);
2. ``live``: PromptKD students for ``--seeds`` with the teacher at every step
   (scripts/promptkd/base2new.sh, today's recipe);
3. ``bank``: the stored teacher views, K = the students' epoch count
   (scripts/promptkd/teacher_views.sh, TRAINER.PROMPTKD.STORED_VIEWS K);
4. ``views``: the same students trained from the bank (base2new.sh with STORED_VIEWS K).

Then the wall time of each part and a base / new / HM table per seed and the mean of
both arms (the issue's target: the mean HM of the views arm within 0.5 points of the live
arm's). Both arms train SEED_JOBS seeds side by side (demo.sh's 2, unless --seed-jobs).
Re-running skips finished runs (their parts then take seconds: use a fresh --out to time).

    python benchmarks/views_protocol.py [--out output/views_protocol] [--seeds 1 2 3 4 5]
        [--epochs N] [--seed-jobs 2] [--dry-run] [--json FILE]

``--epochs N``: OPTIM.MAX_EPOCH N for every run (teacher too) and K = N (a quick check);
``--dry-run``: print the python commands of every part (DRY_RUN=1), run none.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dassl_ext.config import apply_config_extensions, get_cfg_default, merge_from_file  # noqa: E402
from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.reporting.aggregate import collect_runs, hm  # noqa: E402

DEMO = os.path.join(REPO, "scripts", "demo.sh")
STUDENT_CFG = "configs/trainers/PromptKD/base2new/digits_standins.yaml"
DATASET = "digits"
TARGET_HM_POINTS = 0.5
# base2new.sh's first step alone: find the teacher, else train it (TRAIN_TEACHER=1)
TEACHER_ONLY = """source scripts/promptkd/common.sh
parse_args "$@"
TEACHER_DIR=$OUTPUT/promptkd/teacher/$DATASET
find_teacher base2novel "$(dataset_name "$DATASET")" "$TEACHER_DIR"
if [ -z "$TEACHER" ]; then train_teacher "$DATASET" base "$TEACHER_DIR"; fi"""


def standin_opts(demo: str = DEMO) -> list[str]:
    """The KEY VALUE options of demo.sh's ``STANDIN_OPTS=( ... )`` (input size, transforms,
    prompt depths, loader): the stand-ins' settings, read from the demo itself."""
    with open(demo) as f:
        text = f.read()
    match = re.search(r"^STANDIN_OPTS=\((.*?)^\)", text, re.S | re.M)
    if not match:
        raise UserError(f"{demo} has no STANDIN_OPTS=( ... ) block; update {__file__}.")
    return shlex.split(match.group(1), comments=True)


def recipe_epochs() -> int:
    """OPTIM.MAX_EPOCH of the stand-ins' student recipe."""
    import trainers  # noqa: F401  (registers the trainers' config keys)

    cfg = apply_config_extensions(get_cfg_default())
    merge_from_file(cfg, os.path.join(REPO, STUDENT_CFG))
    return int(cfg.OPTIM.MAX_EPOCH)


def parts(args: argparse.Namespace) -> list[tuple[str, dict, list[str]]]:
    """(name, extra environment, command) of each part, in order."""
    opts = standin_opts()
    if args.epochs:
        opts += ["OPTIM.MAX_EPOCH", str(args.epochs)]
    k = args.epochs or recipe_epochs()
    views = ["TRAINER.PROMPTKD.STORED_VIEWS", str(k)]
    seeds = [str(s) for s in args.seeds]
    teacher = os.path.join(args.out, "teacher", "promptkd", "teacher", DATASET, "VLPromptLearner")
    live, banked = os.path.join(args.out, "live"), os.path.join(args.out, "views")
    b2n = ["bash", "scripts/promptkd/base2new.sh", DATASET]
    return [
        ("teacher", {"OUTPUT": os.path.join(args.out, "teacher")},
         ["bash", "-c", TEACHER_ONLY, "teacher_only", DATASET, *opts]),
        ("live", {"OUTPUT": live, "TEACHER_CKPT": teacher}, [*b2n, *seeds, *opts]),
        ("bank", {"OUTPUT": banked, "TEACHER_CKPT": teacher},
         ["bash", "scripts/promptkd/teacher_views.sh", DATASET, *opts, *views]),
        ("views", {"OUTPUT": banked, "TEACHER_CKPT": teacher}, [*b2n, *seeds, *opts, *views]),
    ]  # fmt: skip


def environment(args: argparse.Namespace) -> dict:
    """demo.sh's environment for the stand-ins, shared by every part."""
    env = {
        **os.environ,
        "DATA": os.environ.get("DATA", "./data"),
        "TEACHER_BACKBONE": "digits-teacher",
        "STUDENT_BACKBONE": "digits-student",
        "TRAIN_TEACHER": "1",
        "STUDENT_CFG": STUDENT_CFG,
        "SEED_JOBS": str(args.seed_jobs),
        "PYTHON": os.environ.get("PYTHON", sys.executable),
    }
    env.pop("TEACHER_CKPT", None)
    if args.dry_run:
        env["DRY_RUN"] = "1"
    return env


def accuracies(root: str, seeds: list[int]) -> dict[int, tuple[float, float, float]]:
    """seed -> (base, new, HM) of the runs under ``root``."""
    out = {}
    for run in collect_runs(root):
        if run.seed in seeds and {"base", "new"} <= set(run.accuracy):
            base, new = run.accuracy["base"], run.accuracy["new"]
            out[run.seed] = (base, new, hm(base, new))
    missing = [s for s in seeds if s not in out]
    if missing:
        raise UserError(f"No base/new results of seeds {missing} under {root}; see the log above.")
    return out


def format_report(times: dict[str, float], live: dict, views: dict, k: int) -> str:
    """Wall times, then base / new / HM per seed and the means of both arms."""
    lines = ["| part | wall time s |", "|---|---|"]
    for name, what in (("teacher", "teacher (shared, in neither arm)"),
                       ("live", "students, teacher at every step"),
                       ("bank", f"bank of stored views (K = {k})"),
                       ("views", "students from the bank")):  # fmt: skip
        lines.append(f"| {what} | {times[name]:.1f} |")
    both = times["bank"] + times["views"]
    lines += [
        f"| stored views, bank + students | {both:.1f} |",
        "",
        f"stored views / live, students only: {times['views'] / times['live']:.2f}x; "
        f"with the bank: {both / times['live']:.2f}x",
        "",
        "| seed | live base | live new | live HM | views base | views new | views HM | HM diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed in sorted(live):
        (lb, ln, lh), (vb, vn, vh) = live[seed], views[seed]
        lines.append(f"| {seed} | {lb:.2f} | {ln:.2f} | {lh:.2f} | {vb:.2f} | {vn:.2f} | "
                     f"{vh:.2f} | {vh - lh:+.2f} |")  # fmt: skip
    mean = [statistics.mean(r[i] for r in arm.values()) for arm in (live, views) for i in range(3)]
    diff = mean[5] - mean[2]
    lines.append("| mean | " + " | ".join(f"{m:.2f}" for m in mean) + f" | {diff:+.2f} |")
    ok = "met" if abs(diff) <= TARGET_HM_POINTS else "NOT met"
    lines.append(f"\nmean HM (the mean of the seeds' HMs), views - live: {diff:+.2f} points "
                 f"(target within {TARGET_HM_POINTS}: {ok})")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.path.join("output", "views_protocol"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--epochs", type=int, default=0,
                   help="OPTIM.MAX_EPOCH of every run and K (0: the recipe's, K = it)")  # fmt: skip
    p.add_argument("--seed-jobs", type=int, default=2, help="seeds trained side by side")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run none")
    p.add_argument("--json", help="also write the times and accuracies to this file")
    args = p.parse_args(argv)
    if args.epochs < 0 or args.seed_jobs < 1 or min(args.seeds) < 0:
        p.error("--epochs must be >= 0, --seed-jobs >= 1 and the seeds >= 0")
    args.out = os.path.abspath(args.out)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env, times = environment(args), {}
    try:
        steps = parts(args)
        for name, extra, cmd in steps:
            print(f"== views_protocol: {name}", flush=True)
            start = time.perf_counter()
            done = subprocess.run(cmd, cwd=REPO, env={**env, **extra})
            times[name] = time.perf_counter() - start
            if done.returncode != 0:
                print(f"Error: part {name} failed (exit {done.returncode}); see above.",
                      file=sys.stderr)  # fmt: skip
                return done.returncode
        if args.dry_run:
            return 0
        root = os.path.join("promptkd", "base2new", DATASET)
        live = accuracies(os.path.join(args.out, "live", root), args.seeds)
        views = accuracies(os.path.join(args.out, "views", root), args.seeds)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    k = args.epochs or recipe_epochs()
    report = format_report(times, live, views, k)
    print(report)
    with open(os.path.join(args.out, "views_protocol.md"), "w") as f:
        f.write(report + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"times": times, "live": live, "views": views, "k": k}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
