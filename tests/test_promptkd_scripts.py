"""scripts/promptkd/{base2new,xd}.sh find the teacher (released folder spellings included),
stop with what to do when there is none, and train one only when asked (TRAIN_TEACHER=1) or
for the built-in demo dataset. DRY_RUN=1 prints the python commands, so nothing trains."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from trainers.teacher_folders import TEACHER_ROOTS, teacher_dirs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script: str, tmp_path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    """``bash scripts/promptkd/<script> ARGS`` in dry-run mode, teachers under tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRAIN_TEACHER", "TEACHER_CKPT")}
    env.update(PYTHON=sys.executable, OUTPUT=str(tmp_path / "out"), SEEDS="1", DRY_RUN="1",
               TEACHER_ROOT=str(tmp_path / "teachers"), **extra)  # fmt: skip
    path = os.path.join(REPO, "scripts", "promptkd", script)
    return subprocess.run(["bash", path, *args], env=env, capture_output=True, text=True)


def put_checkpoint(folder, name: str = "model-best.pth.tar") -> str:
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, name), "w").close()
    return str(folder)


def teacher_runs(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if "--trainer PromptSRC" in line]


@pytest.mark.parametrize(
    "dataset,name,released",
    [("fgvc_aircraft", "FGVCAircraft", "FGVCaircraft"),
     ("stanford_cars", "StanfordCars", "StandfordCars"),
     ("oxford_pets", "OxfordPets", None)],
)  # fmt: skip
def test_missing_teacher_stops_and_says_where_and_what(tmp_path, dataset, name, released):
    run = run_script("base2new.sh", tmp_path, dataset)
    assert run.returncode == 1 and not teacher_runs(run.stdout) and "train.py" not in run.stdout
    looked = [os.path.join(tmp_path, "teachers", name, "VLPromptLearner")]
    if released:
        looked.append(os.path.join(tmp_path, "teachers", released, "VLPromptLearner"))
    for folder in looked:
        assert f"  {folder}/" in run.stderr
    own = os.path.join(tmp_path, "out", "promptkd", "teacher", dataset, "VLPromptLearner")
    assert own in run.stderr  # a teacher this script trained before would be used too
    assert "github.com/zhengli97/PromptKD" in run.stderr and "TRAIN_TEACHER=1" in run.stderr
    assert "TEACHER_CKPT" in run.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("folder", ["FGVCAircraft", "FGVCaircraft"])
def test_teacher_in_either_spelling_is_used(tmp_path, folder):
    teacher = put_checkpoint(tmp_path / "teachers" / folder / "VLPromptLearner")
    run = run_script("base2new.sh", tmp_path, "fgvc_aircraft")
    assert run.returncode == 0, run.stderr
    assert f"== Teacher: using {teacher}" in run.stdout and not teacher_runs(run.stdout)
    students = [line for line in run.stdout.splitlines() if "--trainer PromptKD" in line]
    assert len(students) == 1 and f"TRAINER.PROMPTKD.TEACHER_CKPT {teacher}" in students[0]


def test_train_teacher_asks_for_one(tmp_path):
    run = run_script("base2new.sh", tmp_path, "dtd", "OPTIM.MAX_EPOCH", "2", TRAIN_TEACHER="1")
    assert run.returncode == 0, run.stderr
    (teacher,) = teacher_runs(run.stdout)
    assert "DATASET.SUBSAMPLE_CLASSES base" in teacher and teacher.endswith("OPTIM.MAX_EPOCH 2")
    own = os.path.join(tmp_path, "out", "promptkd", "teacher", "dtd", "VLPromptLearner")
    assert f"TEACHER_CKPT {own}" in run.stdout


def test_demo_dataset_trains_its_own_teacher(tmp_path):
    run = run_script("base2new.sh", tmp_path, "digits")
    assert run.returncode == 0, run.stderr
    assert len(teacher_runs(run.stdout)) == 1
    with open(os.path.join(REPO, "scripts", "demo.sh")) as f:
        assert "export TRAIN_TEACHER=1" in f.read()


@pytest.mark.parametrize("script", ["base2new.sh", "xd.sh"])
def test_student_config_can_be_replaced(tmp_path, script):
    """STUDENT_CFG (the demo's stand-in recipe) replaces the students' config, not the
    teacher's; a file that is not there stops the script before anything runs."""
    own = "configs/trainers/PromptKD/base2new/digits_standins.yaml"
    run = run_script(script, tmp_path, "digits", STUDENT_CFG=own, TEACHER_CKPT="/t.pth.tar")
    students = [line for line in run.stdout.splitlines() if "--trainer PromptKD" in line]
    assert run.returncode == 0 and students and all(f"--config-file {own}" in s for s in students)
    missing = run_script(script, tmp_path, "digits", STUDENT_CFG="nope.yaml", TEACHER_CKPT="/t")
    assert missing.returncode == 2 and "train.py" not in missing.stdout
    assert "no student config file nope.yaml" in missing.stderr
    with open(os.path.join(REPO, "scripts", "demo.sh")) as f:
        assert own in f.read()


def test_teacher_trained_here_before_is_reused_only_when_finished(tmp_path):
    """A finished teacher of this script is used through train.py --skip-finished, which
    checks that it was trained with this configuration (tests/test_scripts_trust.py)."""
    own = tmp_path / "out" / "promptkd" / "teacher" / "dtd"
    put_checkpoint(own / "VLPromptLearner", "model.pth.tar-7")  # interrupted at epoch 7
    assert run_script("base2new.sh", tmp_path, "dtd").returncode == 1
    (own / "results.json").write_text("{}")
    run = run_script("base2new.sh", tmp_path, "dtd")
    (teacher,) = teacher_runs(run.stdout)
    assert run.returncode == 0 and f"--output-dir {own} --skip-finished --seed 1" in teacher
    assert "--resume" not in teacher and "done, skipped" in run.stdout
    assert f"TEACHER_CKPT {own / 'VLPromptLearner'}" in run.stdout


def test_cross_dataset_script(tmp_path):
    run = run_script("xd.sh", tmp_path, "dtd")
    assert run.returncode == 1 and "train.py" not in run.stdout
    assert os.path.join(tmp_path, "teachers", "ImageNet-xd", "VLPromptLearner_large") in run.stderr
    teacher = put_checkpoint(tmp_path / "teachers" / "ImageNet-xd" / "VLPromptLearner_large",
                             "model.pth.tar-20")  # fmt: skip
    run = run_script("xd.sh", tmp_path, "dtd")
    assert run.returncode == 0 and f"TEACHER_CKPT {teacher}" in run.stdout
    run = run_script("xd.sh", tmp_path, "dtd", TEACHER_CKPT="/elsewhere/t.pth.tar")
    assert run.returncode == 0 and "TEACHER_CKPT /elsewhere/t.pth.tar" in run.stdout


def test_teacher_folders_lists_every_spelling():
    assert TEACHER_ROOTS == ("teacher_model", "teacher_models")
    assert teacher_dirs("base2novel", "StanfordCars") == [
        os.path.join(root, name, "VLPromptLearner")
        for root in TEACHER_ROOTS
        for name in ("StanfordCars", "StandfordCars")
    ]
    assert teacher_dirs("cross", "ImageNet", ("t",)) == [
        os.path.join("t", "ImageNet-xd", "VLPromptLearner_large")
    ]


def test_nproc_and_nnodes_launch_every_run_through_torchrun(tmp_path):
    """NPROC processes per host: torchrun --standalone; NNODES hosts: c10d rendezvous at
    RDZV_ENDPOINT, with one id per run that every host derives alike."""
    put_checkpoint(tmp_path / "teachers" / "OxfordPets" / "VLPromptLearner")
    one = run_script("base2new.sh", tmp_path, "oxford_pets")
    assert one.returncode == 0 and "torch.distributed.run" not in one.stdout
    two = run_script("base2new.sh", tmp_path, "oxford_pets", NPROC="2")
    runs = [ln for ln in two.stdout.splitlines() if "train.py" in ln]
    assert runs and all(
        "-m torch.distributed.run --nnodes 1 --nproc-per-node 2 --standalone train.py" in ln
        for ln in runs
    ), two.stdout
    no_endpoint = run_script("base2new.sh", tmp_path, "oxford_pets", NPROC="2", NNODES="2")
    assert no_endpoint.returncode != 0 and "RDZV_ENDPOINT" in no_endpoint.stderr
    hosts = [
        run_script(
            "base2new.sh",
            tmp_path,
            "oxford_pets",
            NPROC="4",
            NNODES="2",
            RDZV_ENDPOINT="node0:29400",
        )  # fmt: skip
        for _ in range(2)
    ]
    assert hosts[0].returncode == 0 and hosts[0].stdout == hosts[1].stdout
    launched = [ln for ln in hosts[0].stdout.splitlines() if "train.py" in ln]
    assert all(
        "--nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint node0:29400" in ln
        for ln in launched
    )
    ids = [ln.split("--rdzv-id ")[1].split()[0] for ln in launched]
    assert len(set(ids)) == len(ids)  # one rendezvous per run


FAKE_PYTHON = """#!/bin/bash
# Stands in for python: -c / -m go to the real one; a train.py run records when it started
# and ended (and its threads) next to its folder, sleeps, fails for seed 3 if FAIL3 is set.
if [ "$1" = "-c" ] || [ "$1" = "-m" ]; then exec "$REAL_PYTHON" "$@"; fi
out=""; prev=""
for a in "$@"; do [ "$prev" = "--output-dir" ] && out=$a; prev=$a; done
[ -z "$out" ] && exit 0
exec "$REAL_PYTHON" -c '
import os, signal, sys, time
out = sys.argv[1]
def log(what):
    with open(out + ".trace", "a") as f:
        f.write(" ".join([what, str(time.time()), os.environ["OMP_NUM_THREADS"]]) + chr(10))
def stop(*_):
    log("term")
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
log("start")
time.sleep(float(os.environ.get("SLEEP", "1")))
if out.endswith("seed3") and os.environ.get("FAIL3"):
    sys.exit(3)
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "results.json"), "w").write("{}")
log("end")
' "$out"
"""


def _seed_jobs(tmp_path, **extra) -> tuple[subprocess.Popen, str]:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHON=str(fake), REAL_PYTHON=sys.executable, OUTPUT=str(tmp_path / "out"),
               SEEDS="1 2 3", SEED_JOBS="2", TEACHER_CKPT="/t.pth.tar", **extra)  # fmt: skip
    path = os.path.join(REPO, "scripts", "promptkd", "base2new.sh")
    proc = subprocess.Popen(["bash", path, "digits"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    return proc, str(tmp_path / "out" / "promptkd" / "base2new" / "digits")


def _trace(folder: str, seed: int) -> dict[str, tuple[float, str]]:
    with open(os.path.join(folder, f"seed{seed}.trace")) as f:
        return {w: (float(t), threads) for w, t, threads in (ln.split() for ln in f)}


def test_seed_jobs_train_seeds_side_by_side(tmp_path):
    proc, folder = _seed_jobs(tmp_path)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    one, two, three = (_trace(folder, s) for s in (1, 2, 3))
    assert one["start"][0] < two["end"][0] and two["start"][0] < one["end"][0]  # together
    assert three["start"][0] >= min(one["end"][0], two["end"][0])  # at most 2 at once
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert {t["start"][1] for t in (one, two, three)} == {threads}
    assert f"output in {folder}/seed3/stdout.txt" in out


def test_seed_jobs_dry_run_prints_every_run(tmp_path):
    run = run_script("base2new.sh", tmp_path, "digits", "1", "2", SEED_JOBS="2",
                     TEACHER_CKPT="/t.pth.tar")  # fmt: skip
    students = [line for line in run.stdout.splitlines() if "--trainer PromptKD" in line]
    assert run.returncode == 0 and len(students) == 2


def test_seed_jobs_report_a_failed_seed(tmp_path):
    proc, folder = _seed_jobs(tmp_path, FAIL3="1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"Error: the run in {folder}/seed3 failed; see its stdout.txt" in err
    assert os.path.isfile(os.path.join(folder, "seed1", "results.json"))


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_seed_jobs_stop_their_runs_on_ctrl_c(tmp_path, sig, code):
    """Background runs ignore the terminal's Ctrl-C: the script passes it on as TERM."""
    proc, folder = _seed_jobs(tmp_path, SLEEP="60")
    deadline = time.time() + 30
    while time.time() < deadline and not all(
        os.path.isfile(os.path.join(folder, f"seed{s}.trace")) for s in (1, 2)
    ):
        time.sleep(0.1)
    proc.send_signal(sig)
    proc.communicate(timeout=30)
    assert proc.returncode == code
    for seed in (1, 2):
        assert "term" in _trace(folder, seed)  # each run was told, and stopped
    assert not os.path.exists(os.path.join(folder, "seed3.trace"))  # none started after
