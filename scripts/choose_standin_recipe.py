"""Choose the demo student's recipe (digits_standins.yaml) on Digits VAL, never on test.

Under DATASET.PROTOCOL paper the framework's "val" of a base-to-new run IS the base test
split (dassl_ext/data/base_dataset.py, ``_assign_roles``), so scoring recipes on a run's
val would be scoring them on test. This script therefore builds a VAL-ONLY copy of the
data first: a data root whose Digits split file has train = the original train and
val = test = the original val; the original test images are not copied at all, so no run
made here can read one. On that copy it trains the PromptSRC teacher and the students as
scripts/demo.sh does (scripts/promptkd/base2new.sh with the demo's STANDIN_OPTS), one
process on one thread at a time, scores every candidate recipe by the student's HM of
base and new on the copy's "test" (= original val) over the seeds, and names the winner
by the rule fixed before running: the highest mean val HM over the seeds.

    python scripts/choose_standin_recipe.py [--work DIR] [--seeds 1 2 3] [--only NAME ...]
        [--out FILE] [--pretrain-steps 1000 1500 2000 --pretrain-seeds 1 2]

--pretrain-steps (optional stage): re-pretrains the student stand-in for each number of
steps (scripts/pretrain_clip.py, one thread, on the copy's train split) and scores each
with the winning recipe on the same copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from dassl_ext.utils.atomic import write_text_atomic  # noqa: E402
from datasets.digits import write_digits  # noqa: E402

SPLIT = "split_zhou_Digits.json"
OFFICIAL = "configs/trainers/PromptKD/base2new/digits.yaml"


def last_epoch(lr: str, temperature: str, epochs: str) -> list[str]:
    """Overrides of a candidate that keeps the last epoch."""
    return [
        "TEST.FINAL_MODEL", "last_step", "OPTIM.LR", lr,
        "TRAINER.PROMPTKD.TEMPERATURE", temperature, "OPTIM.MAX_EPOCH", epochs,
    ]  # fmt: skip


# The candidates (name, KEY VALUE overrides of the official Digits recipe). The first one
# has no overrides: it runs first and trains the teacher (base2new.sh passes KEY VALUE
# pairs to the teacher too), which the others then reuse through TEACHER_CKPT.
CANDIDATES: list[tuple[str, list[str]]] = [
    ("official: LR 0.005, T 1, 20 ep, best val epoch", []),
    ("LR 0.005, T 1, 20 ep, last epoch", last_epoch("0.005", "1.0", "20")),
    ("LR 0.002, T 2, 20 ep, last epoch", last_epoch("0.002", "2.0", "20")),
    ("LR 0.002, T 2, 40 ep, last epoch", last_epoch("0.002", "2.0", "40")),
    ("LR 0.001, T 2, 40 ep, last epoch", last_epoch("0.001", "2.0", "40")),
    ("LR 0.005, T 2, 40 ep, last epoch", last_epoch("0.005", "2.0", "40")),
]
# scripts/demo.sh's STANDIN_OPTS, as they are there.
STANDIN_OPTS = [
    "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS", "['random_crop', 'normalize']",
    "INPUT.CROP_PADDING", "2",
    "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "4", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "4",
    "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "4", "TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT", "4",
    "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TEST.BATCH_SIZE", "256", "TRAIN.PRINT_FREQ", "100",
]  # fmt: skip


def make_val_copy(src_root: str, dst_root: str) -> str:
    """Write ``dst_root/digits``: the original train and val images only, with a split file
    whose val and test are both the original val. Returns that folder."""
    src = write_digits(src_root)
    with open(os.path.join(src, SPLIT)) as f:
        split = json.load(f)
    dst = os.path.join(dst_root, "digits")
    if os.path.isfile(os.path.join(dst, SPLIT)):
        with open(os.path.join(dst, SPLIT)) as f:
            have = json.load(f)
        if have == {"train": split["train"], "val": split["val"], "test": split["val"]}:
            return dst
        raise SystemExit(f"{dst} holds another split; delete it or pick another --work.")
    for rel, _, _ in split["train"] + split["val"]:
        os.makedirs(os.path.dirname(os.path.join(dst, "images", rel)), exist_ok=True)
        shutil.copyfile(os.path.join(src, "images", rel), os.path.join(dst, "images", rel))
    copy = {"train": split["train"], "val": split["val"], "test": split["val"]}
    test_paths = {r[0] for r in split["test"]}
    copied = {r[0] for r in copy["train"] + copy["val"]}
    assert not test_paths & copied, "a test image would be in the val-only copy"
    with open(os.path.join(dst, SPLIT), "w") as f:
        json.dump(copy, f, indent=4)
    return dst


def run_candidate(work: str, name: str, overrides: list[str], seeds: list[int], env: dict) -> None:
    """Students of one candidate (and, for the first, the teacher) via base2new.sh."""
    cmd = ["bash", "scripts/promptkd/base2new.sh", "digits", *map(str, seeds)]
    cmd += STANDIN_OPTS + overrides
    log = os.path.join(env["OUTPUT"], "log.txt")
    os.makedirs(env["OUTPUT"], exist_ok=True)
    print(f"== {name}: {env['OUTPUT']} (log {log})", flush=True)
    with open(log, "a") as f:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def student_scores(out: str, seeds: list[int]) -> dict[int, dict]:
    """Base, new (accuracy, %) and HM of each seed's student, from its results.json."""
    scores = {}
    for seed in seeds:
        path = os.path.join(out, "promptkd", "base2new", "digits", f"seed{seed}", "results.json")
        with open(path) as f:
            rec = json.load(f)
        base, new = (rec["splits"][s]["accuracy"] for s in ("base", "new"))
        scores[seed] = {"base": base, "new": new, "hm": 2 * base * new / (base + new)}
    return scores


def table(rows: list[tuple[str, dict[int, dict]]], seeds: list[int]) -> str:
    """Markdown: mean base / new / HM over the seeds, then the HM of each seed."""
    head = "| candidate | base | new | HM (mean) | " + " | ".join(f"HM s{s}" for s in seeds) + " |"
    lines = [head, "|" + "---|" * (4 + len(seeds))]
    for name, sc in rows:
        mean = {k: statistics.mean(sc[s][k] for s in seeds) for k in ("base", "new", "hm")}
        per = " | ".join(f"{sc[s]['hm']:.2f}" for s in seeds)
        lines.append(
            f"| {name} | {mean['base']:.2f} | {mean['new']:.2f} | {mean['hm']:.2f} | {per} |"
        )
    return "\n".join(lines) + "\n"


def mean_hm(sc: dict[int, dict]) -> float:
    return statistics.mean(v["hm"] for v in sc.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="output/choose_standin_recipe", help="copy and runs here")
    p.add_argument("--source-root", default="./data", help="the original DATA root")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--only", nargs="+", type=int, help="candidate indices (0 = official)")
    p.add_argument("--out", help="also write the report (Markdown) here")
    p.add_argument("--note", default="", help="a line added to the report (e.g. the commit)")
    p.add_argument("--pretrain-steps", type=int, nargs="*", default=[])
    p.add_argument("--pretrain-seeds", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)

    work = os.path.abspath(args.work)
    data = os.path.join(work, "data")
    with open(os.path.join(make_val_copy(args.source_root, data), SPLIT)) as f:
        n_val = len(json.load(f)["test"])
    base_env = dict(os.environ, DATA=data, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    base_env.update(
        TEACHER_BACKBONE="digits-teacher", STUDENT_BACKBONE="digits-student", TRAIN_TEACHER="1",
        STUDENT_CFG=OFFICIAL, SEED_JOBS="1",
    )  # fmt: skip
    teacher = os.path.join(work, "c0", "promptkd", "teacher", "digits", "VLPromptLearner")
    chosen = range(len(CANDIDATES)) if args.only is None else args.only
    rows = []
    for i in chosen:
        name, overrides = CANDIDATES[i]
        env = dict(base_env, OUTPUT=os.path.join(work, f"c{i}"))
        if i != 0:  # the teacher comes from candidate 0's run (trained with no overrides)
            if not os.path.isdir(teacher):
                raise SystemExit(f"no teacher in {teacher}: run candidate 0 first (--only 0)")
            env["TEACHER_CKPT"] = teacher
        run_candidate(work, name, overrides, args.seeds, env)
        rows.append((name, student_scores(env["OUTPUT"], args.seeds)))
        print(table(rows[-1:], args.seeds), flush=True)

    rule = "highest mean val HM over the seeds (fixed before running)"
    winner = max(rows, key=lambda r: mean_hm(r[1]))[0]
    report = [
        "# The demo student's recipe, scored on Digits VAL only",
        "",
        f"Made by `python scripts/choose_standin_recipe.py` (seeds {args.seeds}): a val-only",
        f"copy of Digits (train = train, val = test = the original val split, {n_val}",
        "images; no original test image copied), the PromptSRC teacher and the students",
        "trained there as scripts/demo.sh does (one thread, one run at a time). Student",
        "accuracy (%) on the copy's test = the original VAL split. The official row selects",
        "its epoch on the copy's val, i.e. on the same base images it is scored on",
        "(optimistic for that row).",
        "",
        *([args.note, ""] if args.note else []),
        table(rows, args.seeds),
        f"Rule: {rule}. Winner: **{winner}**.",
        "",
    ]
    if args.pretrain_steps:
        report += pretrain_stage(work, data, base_env, teacher, rows, winner, args)
    text = "\n".join(report)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


def pretrain_stage(work, data, base_env, teacher, rows, winner, args) -> list[str]:
    """Student stand-ins pretrained here for each of --pretrain-steps, scored by the winner,
    beside the packaged digits-student (made elsewhere; from the winner's own runs)."""
    overrides = dict(CANDIDATES)[winner]
    index = [name for name, _ in CANDIDATES].index(winner)
    env = dict(base_env, OUTPUT=os.path.join(work, f"c{index}"), TEACHER_CKPT=teacher)
    run_candidate(work, winner, overrides, args.pretrain_seeds, env)  # done above: skipped
    packaged = student_scores(env["OUTPUT"], args.pretrain_seeds)
    stage = []
    for steps in args.pretrain_steps:
        weights = os.path.join(work, f"student_{steps}")
        pt = os.path.join(weights, "digits-student.pt")
        if not os.path.isfile(pt):
            cmd = [sys.executable, "scripts/pretrain_clip.py", "digits-student", "--root", data]
            cmd += ["--out", weights, "--steps", str(steps), "--threads", "1", "--log-every", "0"]
            print(f"== pretraining the student for {steps} steps -> {pt}", flush=True)
            subprocess.run(cmd, cwd=REPO, env=base_env, check=True)
        with open(pt, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        env = dict(base_env, OUTPUT=os.path.join(work, f"p{steps}"), TEACHER_CKPT=teacher)
        env["STUDENT_BACKBONE"] = pt
        run_candidate(work, f"{steps} steps", overrides, args.pretrain_seeds, env)
        scores = student_scores(env["OUTPUT"], args.pretrain_seeds)
        stage.append((f"pretrained here, {steps} steps (sha256 {digest}...)", scores))
    best = max(stage, key=lambda r: mean_hm(r[1]))[0]
    return [
        "## Student stand-in pretraining length, scored with the winner",
        "",
        "Each student stand-in pretrained here (scripts/pretrain_clip.py, one thread, the",
        "copy's train split = the original train split), and the packaged digits-student (1500",
        "steps, made earlier in an unrecorded environment; a re-run here gives another file).",
        "",
        table([("packaged digits-student (1500 steps)", packaged), *stage], args.pretrain_seeds),
        f"Best of those pretrained here, by the same rule: **{best}**.",
        "",
    ]


if __name__ == "__main__":
    sys.exit(main())
