"""The experiment scripts trust a finished run only when train.py --skip-finished says it was
made with this configuration, keep a finished seed's files as they are under SEED_JOBS, pass
their seeds to the tables, and stop on bad arguments with one "Error:" line (exit 2)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest

import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Stands in for python: -c / -m go to the real one. A train.py run with --skip-finished in a
# folder with results.json answers as train.py does: skipped, or (a file "differs" there)
# refused with exit 1; otherwise it writes results.json after a short sleep.
FAKE_PYTHON = """#!/bin/bash
if [ "$1" = "-c" ] || [ "$1" = "-m" ]; then exec "$REAL_PYTHON" "$@"; fi
out=""; prev=""; skip=0
for a in "$@"; do
  [ "$prev" = "--output-dir" ] && out=$a
  [ "$a" = "--skip-finished" ] && skip=1
  prev=$a
done
[ -z "$out" ] && exit 0
if [ -f "$out/results.json" ] && [ "$skip" = 1 ]; then
  if [ -f "$out/differs" ]; then
    echo "Error: $out already holds the results of another configuration" >&2; exit 1
  fi
  echo "Done, skipped: $out already holds the results of this configuration (results.json)."
  exit 0
fi
echo "started $out" >> "$TRACE"
sleep "${SLEEP:-0.3}"
mkdir -p "$out/VLPromptLearner" && echo '{}' > "$out/results.json"
touch "$out/VLPromptLearner/model-best.pth.tar"
"""


def script(path: str, tmp_path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """``bash scripts/<path> ARGS`` with the fake python and OUTPUT under tmp_path."""
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("TEACHER_CKPT", "TRAIN_TEACHER")}
    env.update(
        PYTHON=str(fake),
        REAL_PYTHON=sys.executable,
        OUTPUT=str(tmp_path / "out"),
        SEEDS="1",
        TRACE=str(tmp_path / "trace"),
        TEACHER_ROOT=str(tmp_path / "t"),
    )
    env.update(extra)  # fmt: skip
    cmd = ["bash", os.path.join(REPO, "scripts", path), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def started(tmp_path) -> list[str]:
    trace = tmp_path / "trace"
    return trace.read_text().split("\n")[:-1] if trace.exists() else []


def finished(folder, differs: bool = False) -> None:
    os.makedirs(folder, exist_ok=True)
    (folder / "results.json").write_text('{"config_hash": "old"}')
    (folder / "stdout.txt").write_text("the first run's output\n")
    if differs:
        (folder / "differs").write_text("")


@pytest.mark.parametrize(
    "path,args",
    [("coop/base2new_train.sh", ["dtd"]), ("coop/base2new_test.sh", ["dtd"]),
     ("promptsrc/few_shot.sh", ["dtd", "4"]), ("maple/xd_test.sh", ["dtd"]),
     ("zsclip/zeroshot.sh", ["dtd"]), ("promptkd/base2new.sh", ["dtd"])],
)  # fmt: skip
def test_every_run_asks_train_py_whether_it_is_finished(tmp_path, path, args):
    """A folder with results.json is never skipped by the shell alone: train.py gets
    --skip-finished (and no --resume), and a dry run says what it will do."""
    run = script(path, tmp_path, *args, DRY_RUN="1", TEACHER_CKPT="/t.pth.tar")
    runs = [ln for ln in run.stdout.splitlines() if " train.py --root" in ln]
    assert run.returncode == 0 and runs and all("--skip-finished" in ln for ln in runs)
    for ln in runs:
        finished(tmp_path / shlex.split(ln)[shlex.split(ln).index("--output-dir") + 1])
    again = script(path, tmp_path, *args, DRY_RUN="1", TEACHER_CKPT="/t.pth.tar")
    assert again.returncode == 0 and again.stdout.count(" train.py --root") == len(runs)
    assert again.stdout.count('says "done, skipped" if it was made with this configuration') == (
        len(runs)
    )
    assert "--resume" not in again.stdout


def test_seed_jobs_skip_a_finished_seed_in_the_foreground(tmp_path):
    """SEED_JOBS: train.py answers for a finished seed on the console; its stdout.txt is
    kept; the other seeds train."""
    out = tmp_path / "out" / "promptkd" / "base2new" / "digits"
    finished(out / "seed2")
    run = script("promptkd/base2new.sh", tmp_path, "digits", "1", "2", "3", SEED_JOBS="2",
                 TEACHER_CKPT="/t.pth.tar")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"Done, skipped: {out / 'seed2'} already holds the results" in run.stdout
    assert (out / "seed2" / "stdout.txt").read_text() == "the first run's output\n"
    assert sorted(started(tmp_path)) == [f"started {out / 'seed1'}", f"started {out / 'seed3'}"]


def test_seed_jobs_stop_at_a_finished_seed_of_another_configuration(tmp_path):
    out = tmp_path / "out" / "promptkd" / "base2new" / "digits"
    finished(out / "seed2", differs=True)
    run = script("promptkd/base2new.sh", tmp_path, "digits", "1", "2", "3", SEED_JOBS="2",
                 TEACHER_CKPT="/t.pth.tar", SLEEP="1")  # fmt: skip
    assert run.returncode == 1
    assert f"Error: {out / 'seed2'} already holds the results of another" in run.stderr
    assert started(tmp_path) == [f"started {out / 'seed1'}"]  # seed 3 never started
    assert (out / "seed1" / "results.json").exists()  # the running seed was let finish


@pytest.mark.parametrize("differs", [False, True])
def test_a_teacher_trained_here_before_is_checked(tmp_path, differs):
    own = tmp_path / "out" / "promptkd" / "teacher" / "dtd"
    finished(own, differs)
    (own / "VLPromptLearner").mkdir()
    (own / "VLPromptLearner" / "model-best.pth.tar").write_text("")
    run = script("promptkd/base2new.sh", tmp_path, "dtd")
    if differs:
        assert run.returncode == 1 and not started(tmp_path)  # no student ran
        assert (
            f"Error: the teacher in {own} was trained with another configuration (above); "
            f"delete {own} to train one with this configuration, or set "
            f"TEACHER_CKPT={own}/VLPromptLearner to use it as it is."
        ) in run.stderr
    else:
        assert run.returncode == 0, run.stderr
        assert f"Done, skipped: {own} already holds" in run.stdout
        out = tmp_path / "out" / "promptkd" / "base2new" / "dtd" / "seed1"
        assert started(tmp_path) == [f"started {out}"]


def test_a_finished_run_is_skipped_only_for_its_own_configuration(tmp_path, digits_root):
    """End to end with train.py: the script's re-run of the same configuration says "done,
    skipped"; another one is refused (exit 1); the finished run's files are untouched."""
    opts = ["MODEL.BACKBONE.NAME", "tiny-student", "INPUT.SIZE", "(32, 32)",
            "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip
    out = tmp_path / "out" / "ZeroshotCLIP" / "vit_b16" / "digits" / "all"
    first = ["--root", str(digits_root), "--output-dir", str(out), "--eval-only",
             "--trainer", "ZeroshotCLIP", "--dataset-config-file",
             os.path.join(REPO, "configs/datasets/digits.yaml"), "--config-file",
             os.path.join(REPO, "configs/trainers/CoOp/vit_b16.yaml"),
             "DATASET.SUBSAMPLE_CLASSES", "all", *opts]  # fmt: skip
    assert train.main(first) == 0
    before = {p: p.read_bytes() for p in out.iterdir() if p.is_file()}
    env = {"PYTHON": sys.executable, "DATA": str(digits_root)}
    same = script("zsclip/zeroshot.sh", tmp_path, "digits", *opts, **env)
    assert same.returncode == 0, same.stderr
    assert f"Done, skipped: {out} already holds the results of this configuration" in same.stdout
    # Another configuration: refused, exit 1 (the scripts stop on it: see the tests above).
    other = [*first, "--skip-finished", "INPUT.INTERPOLATION", "bilinear"]
    assert train.main(other) == 1
    assert {p: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_the_tables_take_the_seeds_of_the_call(tmp_path):
    run = script("promptkd/base2new.sh", tmp_path, "dtd", "3", "5", DRY_RUN="1",
                 PYTHON=sys.executable, TEACHER_CKPT="/t")  # fmt: skip
    assert run.stdout.splitlines()[-1].endswith("parse_results.py " + shlex.quote(
        str(tmp_path / "out" / "promptkd" / "base2new" / "dtd")) + " --seeds 3 5")  # fmt: skip
    demo = script("demo.sh", tmp_path, "4", "7", DRY_RUN="1", PYTHON=sys.executable)
    assert demo.returncode == 0, demo.stderr
    tables = [ln for ln in demo.stdout.splitlines() if "demo_table.py" in ln or "plot_res" in ln]
    assert len(tables) == 2 and all(ln.endswith("--seeds 4 7") for ln in tables)


ERR = "Error: "
SEED = "is not a non-negative integer without leading zeros (0, 1, 2, ...)"


@pytest.mark.parametrize(
    "path,args,env,message",
    [("promptkd/base2new.sh", ["my data"], {}, "dataset 'my data' is not a config stem"),
     ("promptkd/base2new.sh", ["../datasets/dtd"], {}, "dataset '../datasets/dtd' is not a"),
     ("coop/base2new_train.sh", ["/etc/dtd"], {}, "dataset '/etc/dtd' is not a config stem"),
     ("coop/base2new_train.sh", [], {}, "no dataset given; pass one of: caltech101 digits"),
     ("coop/few_shot.sh", [], {}, "no dataset given"),
     ("promptsrc/few_shot.sh", ["dtd"], {}, "SHOTS '' (the argument after the dataset)"),
     ("promptkd/base2new.sh", ["dtd", "01"], {}, f"seed '01' {SEED}"),
     ("promptkd/base2new.sh", ["dtd", "-1"], {}, f"seed '-1' {SEED}"),
     ("promptkd/xd.sh", ["dtd"], {"SEEDS": "1 x"}, f"seed 'x' {SEED}"),
     ("maple/base2new_train.sh", ["dtd"], {"SEEDS": "-3"}, f"seed '-3' {SEED}"),
     ("promptkd/base2new.sh", ["dtd", "1", "OPTIM.MAX_EPOCH"], {},
      "the options after the dataset must be KEY VALUE pairs; got an odd number (1): "
      "OPTIM.MAX_EPOCH"),
     ("cocoop/xd_test.sh", ["dtd", "OPTIM.LR", "1", "5"], {},
      "the options after the dataset must be KEY VALUE pairs; got an odd number (3)"),
     ("zsclip/zeroshot.sh", ["dtd", "lr", "1"], {}, "'lr' is not a config KEY"),
     ("promptkd/xd.sh", ["dtd"], {"SOURCE": "image net"}, "dataset 'image net' is not")],
)  # fmt: skip
def test_bad_arguments_stop_with_one_line(tmp_path, path, args, env, message):
    run = script(path, tmp_path, *args, DRY_RUN="1", TEACHER_CKPT="/t", **env)
    assert run.returncode == 2 and run.stderr.startswith(ERR + message), run.stderr
    assert run.stderr.count("\n") == 1 and "train.py" not in run.stdout


def test_paths_with_spaces_are_printed_as_one_argument(tmp_path):
    data, out = tmp_path / "my data", tmp_path / "my out"
    run = script("coop/base2new_train.sh", tmp_path, "dtd", "INPUT.SIZE", "(224, 224)",
                 DRY_RUN="1", DATA=str(data), OUTPUT=str(out))  # fmt: skip
    argv = shlex.split(run.stdout.splitlines()[0].removeprefix("DRY_RUN: "))
    assert argv[argv.index("--root") + 1] == str(data) and argv[-1] == "(224, 224)"
    assert argv[argv.index("--output-dir") + 1].startswith(str(out) + "/base2new/")
