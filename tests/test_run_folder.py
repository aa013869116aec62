"""One live run per output folder, and a folder's record never lies (train.py + run_folder)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from test_engine_tiny import tiny, tiny_argv  # noqa: F401  (fixture)

import train
from dassl_ext.config import get_cfg_default
from dassl_ext.config.compare import config_differences, format_differences
from dassl_ext.engine import scale_for_world_size
from dassl_ext.engine.faults import environment_error
from dassl_ext.utils.atomic import TEMPORARY_NAME, atomic_write, temporary_pid
from dassl_ext.utils.run_lock import INFO_FILE, LOCK_FILE, remove_stale_temporaries

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT_EVERY_EPOCH = ("TRAIN.CHECKPOINT_FREQ", "1")


def snapshot(folder: str) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (the lock file aside: it is never a record)."""
    files = {}
    for here, _, names in os.walk(folder):
        for name in names:
            if name != LOCK_FILE:
                path = os.path.join(here, name)
                with open(path, "rb") as f:
                    files[os.path.relpath(path, folder)] = f.read()
    return files


def refused(capsys, *fragments: str) -> str:
    captured = capsys.readouterr()
    err = captured.err
    assert err.startswith("Error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture
def finished(tiny):  # noqa: F811
    """(data root, a finished run's folder: checkpoints of epochs 1-2 and results.json)."""
    root, out = tiny
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH)) == 0
    assert {"results.json", "config.yaml", "log.txt"} <= set(os.listdir(out))
    return root, out


def _hold_lock(folder: str) -> subprocess.Popen:
    """Another process that holds ``folder``'s run lock until killed."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        from dassl_ext.utils.run_lock import acquire_run_lock
        held = acquire_run_lock({folder!r})  # kept: a collected lock is released
        print("held", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


# ---------------------------------------------------------------- 1. one live run per folder
def test_a_live_run_refuses_a_second_and_a_killed_one_is_taken_over(tiny, capsys):  # noqa: F811
    root, out = tiny
    holder = _hold_lock(out)
    try:
        assert train.main(tiny_argv(root, out)) == 1
        err = refused(capsys, f"{out} is in use by another run: process {holder.pid} on host")
        assert "wait for it to finish" in err and "another --output-dir" in err
        assert sorted(os.listdir(out)) == [INFO_FILE, LOCK_FILE]  # nothing of ours written
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the OS lock goes, its note stays
        holder.wait()
    assert os.path.isfile(os.path.join(out, INFO_FILE))
    assert train.main(tiny_argv(root, out)) == 0
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert f"Took over the lock of {out}: it was left by process {holder.pid} on host" in log
    assert not os.path.exists(os.path.join(out, INFO_FILE))  # released at the end


# ---------------------------------------------------------------- 2. a refusal changes nothing
def test_every_refusal_leaves_the_folder_byte_for_byte(finished, capsys):
    root, out = finished
    before = snapshot(out)
    cases = [
        # checkpoints without --resume
        ((), (), "already holds checkpoints of TinyNet; pass --resume"),
        # --resume with a result-changing difference
        (("--resume", out), ("OPTIM.LR", "0.1"), "OPTIM.LR: 0.5 -> 0.1"),
        # another seed into a finished folder
        ((), (), "already holds the results of another configuration"),
        # eval-only of a trainer that trains, without --model-dir
        (("--eval-only",), (), "--eval-only needs --model-dir RUN"),
        # eval-only from a folder without that epoch
        (("--eval-only", "--model-dir", out, "--load-epoch", "7"), (), "model.pth.tar-7"),
    ]
    for i, (flags, opts, message) in enumerate(cases):
        seed = 2 if i == 2 else 1
        assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, *opts, seed=seed,
                                    flags=flags)) == 1, message  # fmt: skip
        refused(capsys, message)
        assert snapshot(out) == before, message


# ---------------------------------------------------------------- 3. --resume, config changes
def _interrupted(root: str, out: str) -> None:
    """A run of 3 epochs stopped after epoch 2 (its epoch-3 files removed)."""
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, epochs=3)) == 0
    os.remove(os.path.join(out, "TinyNet", "model.pth.tar-3"))
    os.remove(os.path.join(out, "results.json"))


def test_resume_refuses_result_changes_and_allows_neutral_ones(tiny, capsys):  # noqa: F811
    root, out = tiny
    _interrupted(root, out)
    resume = ("--resume", out)
    changed = ("OPTIM.LR", "0.1", "OPTIM.NAME", "adam")
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, *changed, epochs=3,
                                flags=resume)) == 1  # fmt: skip
    err = refused(capsys, f"--resume {out}: this configuration differs from the run's",
                  "OPTIM.LR: 0.5 -> 0.1; OPTIM.NAME: 'sgd' -> 'adam'",
                  "resume with the run's original options", "new --output-dir")  # fmt: skip
    assert err.count("\n") == 1  # one line
    # a longer schedule is refused too, and the message says why
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, epochs=5, flags=resume)) == 1
    refused(capsys, "OPTIM.MAX_EPOCH: 3 -> 5", "another LR schedule, not a continuation")

    neutral = ("TRAIN.PRINT_FREQ", "1", "DATALOADER.TEST.BATCH_SIZE", "3", "DIST.TIMEOUT", "60",
               "DATASET.CHECK_IMAGES", "exists")  # fmt: skip
    argv = tiny_argv(root, out, *CKPT_EVERY_EPOCH, *neutral, epochs=3, flags=resume)
    assert train.main(argv) == 0
    assert os.path.isfile(os.path.join(out, "TinyNet", "model.pth.tar-3"))


def test_a_different_number_of_processes_is_no_difference():
    """Default (global batch): nothing is scaled, so resuming on 2 processes what ran on 1
    is the same run; BATCH_SIZE_PER_RANK scales OPTIM.LR, and another count is a change."""
    saved = get_cfg_default()  # what config.yaml of a 1-process run holds
    again = scale_for_world_size(get_cfg_default(), 2)
    assert config_differences(saved, again) == []
    saved.DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK = True
    per_rank = get_cfg_default()
    per_rank.DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK = True
    assert config_differences(saved, scale_for_world_size(per_rank.clone(), 1)) == []
    diffs = config_differences(saved, scale_for_world_size(per_rank, 2))
    assert format_differences(diffs) == "OPTIM.LR: 0.0003 -> 0.0006"


def test_config_differences_reads_a_dumped_config_as_equal(tmp_path):
    import yaml

    cfg = get_cfg_default()
    saved = yaml.safe_load(cfg.dump())  # tuples became lists, as in config.yaml
    assert config_differences(saved, cfg) == []
    cfg.INPUT.SIZE = (8, 8)
    cfg.OUTPUT_DIR, cfg.DATALOADER.NUM_WORKERS = "elsewhere", 0  # neutral
    del saved["TEST"]["SPLIT"]
    assert format_differences(config_differences(saved, cfg)) == (
        "INPUT.SIZE: [224, 224] -> [8, 8]; TEST.SPLIT: (absent) -> 'test'"
    )


# ---------------------------------------------------------------- 4. --eval-only needs weights
def test_eval_only_without_model_dir_is_refused_before_anything(tiny, capsys):  # noqa: F811
    root, out = tiny
    assert train.main(tiny_argv(root, out, flags=("--eval-only",))) == 1
    refused(capsys, "--eval-only needs --model-dir RUN", "TinyEngineTrainer",
            "as if it were a result")  # fmt: skip
    assert not os.path.exists(out)  # not even the folder


# ---------------------------------------------------------------- 5. finished folders
def test_skip_finished(finished, capsys):
    root, out = finished
    before = snapshot(out)
    skip = ("--skip-finished",)
    # the same configuration (neutral keys aside): done, nothing touched
    argv = tiny_argv(root, out, *CKPT_EVERY_EPOCH, "TRAIN.PRINT_FREQ", "1", flags=skip)
    assert train.main(argv) == 0
    assert capsys.readouterr().out == (
        f"Done, skipped: {out} already holds the results of this configuration (results.json).\n"
    )
    assert snapshot(out) == before
    # another configuration: exit 1 with the differences and what to do, nothing touched
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, seed=2, flags=skip)) == 1
    refused(capsys, f"{out} already holds the results of another configuration",
            f"differences from {out}/config.yaml: SEED: 1 -> 2",
            "choose another --output-dir, or delete")  # fmt: skip
    assert snapshot(out) == before
    # no results.json: runs as usual
    fresh = out + "_fresh"
    assert train.main(tiny_argv(root, fresh, flags=skip)) == 0
    assert os.path.isfile(os.path.join(fresh, "results.json"))


def test_skip_finished_skips_a_run_trained_without_evaluation(tiny, capsys, caplog, monkeypatch):  # noqa: F811,E501
    """TEST.NO_TEST: results.json without splits is the record that the run finished, so a
    re-run with --skip-finished builds nothing; an --eval-only there still evaluates."""
    root, out = tiny
    no_test = (*CKPT_EVERY_EPOCH, "TEST.NO_TEST", "True")
    assert train.main(tiny_argv(root, out, *no_test)) == 0
    before = snapshot(out)
    capsys.readouterr()

    def never(cfg):
        raise AssertionError("built a trainer for a finished run")

    with monkeypatch.context() as m:
        m.setattr(train, "build_trainer", never)
        assert train.main(tiny_argv(root, out, *no_test, flags=("--skip-finished",))) == 0
    assert capsys.readouterr().out == (
        f"Done, skipped: {out} already holds a run of this configuration trained to the end, "
        "without evaluation (TEST.NO_TEST; results.json).\n"
    )
    assert snapshot(out) == before
    # the tables leave it out, with a warning saying why
    from dassl_ext.reporting.aggregate import collect_runs, summarize

    assert collect_runs(os.path.dirname(out)) == [] and summarize(out) == []
    assert f"{out} was trained without evaluation (TEST.NO_TEST): no results" in caplog.text
    # asking for an evaluation (the same configuration) is not answered by that record
    evaluate = ("--eval-only", "--model-dir", out, "--skip-finished")
    assert train.main(tiny_argv(root, out, *no_test, flags=evaluate)) == 0
    with open(os.path.join(out, "results.json")) as f:
        assert set(json.load(f)["splits"]) == {"test"}


def test_finished_folder_takes_a_re_evaluation_of_its_own_config_only(finished, capsys):
    root, out = finished
    evaluate = ("--eval-only", "--model-dir", out, "--load-epoch", "1")
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, flags=evaluate)) == 0
    with open(os.path.join(out, "results.json")) as f:
        assert '"epoch": 1' in f.read()  # the same configuration may overwrite
    before = snapshot(out)
    other = ("DATASET.SUBSAMPLE_CLASSES", "base")
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, *other, flags=evaluate)) == 1
    refused(capsys, "DATASET.SUBSAMPLE_CLASSES: 'all' -> 'base'")
    assert snapshot(out) == before


# ---------------------------------------------------------------- 6. killed writers' temporaries
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_atomic_writers_temporary_names_are_recognised(tmp_path):
    seen = []

    def write(tmp: str) -> None:
        seen.append(os.path.basename(tmp))
        with open(tmp, "w") as f:
            f.write("x")

    atomic_write(str(tmp_path / "model.pth.tar-1"), write)
    assert TEMPORARY_NAME.match(seen[0]) and temporary_pid(seen[0]) == os.getpid()
    for other in ("model.pth.tar-1", ".model.tmp", "notes.1.2.abcdef12.tmp", ".a.1.2.ABCDEF12.tmp"):
        assert temporary_pid(other) is None, other


def test_stale_temporaries_are_removed_when_a_run_takes_the_folder(tiny):  # noqa: F811
    root, out = tiny
    dead = _dead_pid()
    stale = os.path.join(out, "TinyNet", f".model.pth.tar-1.{dead}.1401.0a1b2c3d.tmp")
    live = os.path.join(out, f".metrics.jsonl.{os.getpid()}.1.0a1b2c3d.tmp")  # a live writer's
    look_alike = os.path.join(out, "TinyNet", "notes.tmp")
    nested = os.path.join(out, "other_run", f".results.json.{dead}.1.0a1b2c3d.tmp")
    deep = os.path.join(out, "data", "images", f".x.png.{dead}.1.0a1b2c3d.tmp")  # not a run's
    for path in (stale, live, look_alike, nested, deep):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
    open(os.path.join(out, "other_run", LOCK_FILE), "w").close()  # a run folder of its own

    assert train.main(tiny_argv(root, out)) == 0
    assert not os.path.exists(stale)
    assert all(os.path.exists(p) for p in (live, look_alike, nested, deep))
    removed = f"Removed 1 temporary file(s) of writes that a killed run left unfinished: {stale}"
    with open(os.path.join(out, "log.txt")) as f:
        assert removed in f.read()
    assert remove_stale_temporaries(out) == []


# ---------------------------------------------------------------- 7. the user's environment
def _decode_a_latin1_file(tmp_path) -> UnicodeDecodeError:
    path = tmp_path / "classnames.txt"
    path.write_bytes("Café crème\n".encode("latin-1"))
    try:
        with open(path, encoding="utf-8") as f:
            f.read()
    except UnicodeDecodeError as e:
        return e
    raise AssertionError("decoded")


def test_environment_errors_become_one_sentence(tmp_path):
    def msg(e: BaseException) -> str:
        error = environment_error(e)
        assert error is not None, e
        return str(error)

    denied = PermissionError(errno.EACCES, "Permission denied", "/data/split.json")
    assert msg(denied) == (
        "Cannot use /data/split.json (Permission denied): check its permissions (or run as a "
        "user who may use it)."
    )
    assert "it is a folder where a file is expected" in msg(
        IsADirectoryError(errno.EISDIR, "Is a directory", "/data/x.yaml")
    )
    assert "free space on that disk" in msg(OSError(errno.ENOSPC, "No space left on device"))
    decoded = msg(_decode_a_latin1_file(tmp_path))
    assert f"{tmp_path / 'classnames.txt'} is not utf-8 text" in decoded and "UTF-8" in decoded
    assert "DATALOADER.TRAIN_X.BATCH_SIZE" in msg(MemoryError())
    assert "Out of GPU memory" in msg(torch.OutOfMemoryError("CUDA out of memory"))
    for bug in (TypeError("x"), KeyError("k"), OSError(errno.EINVAL, "Invalid argument")):
        assert environment_error(bug) is None


def test_train_prints_environment_errors_and_raises_bugs(tiny, monkeypatch, capsys):  # noqa: F811
    root, out = tiny

    def denied(cfg):
        raise PermissionError(errno.EACCES, "Permission denied", "/data/tiny/split.json")

    monkeypatch.setattr(train, "build_trainer", denied)
    assert train.main(tiny_argv(root, out)) == 1
    refused(capsys, "Error: Cannot use /data/tiny/split.json (Permission denied)")

    def bug(cfg):
        raise TypeError("a programming error")

    monkeypatch.setattr(train, "build_trainer", bug)
    with pytest.raises(TypeError, match="a programming error"):
        train.main(tiny_argv(root, out + "_2"))
    assert not os.path.exists(os.path.join(out + "_2", INFO_FILE))  # the lock was released


def test_a_refusal_stops_every_torchrun_rank(tiny, monkeypatch, capfd):  # noqa: F811
    """Only rank 0 takes the lock; rank 1 gets its decision and stops with the same sentence
    at once, instead of going on until a collective finds rank 0 gone (NCCL: DIST.TIMEOUT)."""
    import multiprocessing as mp

    from test_ddp import _free_port, _spawned, _torchrun_env

    root, out = tiny
    argv = tiny_argv(root, out, "DIST.TIMEOUT", "120")
    holder = _hold_lock(out)
    port = _free_port()
    child = mp.get_context("spawn").Process(target=_spawned, args=(1, 2, port, argv, ""))
    child.start()
    try:
        with monkeypatch.context() as m:
            for k, v in _torchrun_env(0, 2, port).items():
                m.setenv(k, v)
            assert train.main(argv) == 1
        child.join(timeout=60)  # well before DIST.TIMEOUT
        assert child.exitcode == 1
    finally:
        holder.kill()
        holder.wait()
        if child.is_alive():
            child.kill()
    err = capfd.readouterr().err  # both processes' (the child writes to the same fd)
    assert err.count(f"{out} is in use by another run: process {holder.pid}") == 2, err
    assert "lost the others" not in err and "Traceback" not in err
