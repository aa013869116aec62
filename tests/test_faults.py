"""Faults during a run, through train.main (and a subprocess for signals) on tiny CLIP +
Digits: each stops with one sentence naming the file or step, no traceback, exit != 0,
nothing partial or overwritten, and a line saying how to resume."""

from __future__ import annotations

import errno
import glob
import hashlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F
from test_trainer_all import argv

import train
from dassl_ext.data import data_manager
from dassl_ext.utils import digest
from dassl_ext.utils.checkpoint import CorruptCheckpointError, load_checkpoint, save_checkpoint
from dassl_ext.utils.digest import file_digest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = "prompt_learner"  # CoOp's registered model: <out>/prompt_learner/model.pth.tar-<N>
EPOCHS = ("OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1")


def coop(out, data, clip_root, *opts, flags=()) -> list[str]:
    """CoOp on Digits with tiny CLIP: 1 shot -> 2 steps of 4 images per epoch."""
    return [str(a) for a in argv("CoOp", out, data, clip_root, *EPOCHS, *opts, flags=flags)]


def ckpt(out, epoch: int) -> str:
    return os.path.join(str(out), MODEL, f"model.pth.tar-{epoch}")


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def temp_files(root) -> list[str]:
    return glob.glob(os.path.join(str(root), "**", ".*.tmp"), recursive=True)


def stopped(capsys, *fragments: str) -> list[str]:
    """stderr lines of a run that stopped on a fault: the sentence, then how to resume."""
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err.strip().splitlines()


# ---------------------------------------------------------------- corrupt checkpoints
@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "text"])
def test_corrupt_checkpoint_is_one_sentence_naming_it(damage, tmp_path):
    path = save_checkpoint({"state_dict": {"w": torch.ones(64, 64)}, "epoch": 1}, str(tmp_path))
    with open(path, "rb") as f:
        data = f.read()
    broken = {
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "garbage": os.urandom(4096),
        "text": b"not a checkpoint\n",
    }[damage]
    with open(path, "wb") as f:
        f.write(broken)
    with pytest.raises(CorruptCheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert path in message and "truncated or corrupt" in message and "\n" not in message


def test_resume_falls_back_to_the_previous_intact_epoch(
    tiny_clip_root, digits_root, tmp_path, capsys
):
    out = tmp_path / "run"
    assert train.main(coop(out, digits_root, tiny_clip_root)) == 0
    os.remove(out / "results.json")
    with open(ckpt(out, 3), "r+b") as f:  # a crash while copying it, a disk fault ...
        f.truncate(os.path.getsize(ckpt(out, 3)) // 3)
    assert train.main(coop(out, digits_root, tiny_clip_root, flags=("--resume", str(out)))) == 0
    log = (out / "log.txt").read_text()
    assert f"Checkpoint {ckpt(out, 3)} is truncated or corrupt" in log
    assert f"Resume {MODEL} from {ckpt(out, 2)} (epoch 2)" in log
    assert load_checkpoint(ckpt(out, 3))["epoch"] == 3  # trained again and written whole
    assert (out / "results.json").is_file()

    # evaluating a corrupt file: one sentence naming it, exit 1
    with open(ckpt(out, 1), "wb") as f:
        f.write(b"\0" * 100)
    flags = ("--eval-only", "--model-dir", str(out), "--load-epoch", "1")
    assert train.main(coop(tmp_path / "eval", digits_root, tiny_clip_root, flags=flags)) == 1
    (line,) = stopped(capsys, ckpt(out, 1), "truncated or corrupt")

    # nothing intact to resume from: one sentence, and no resume line pointing at junk
    for epoch in (2, 3):
        with open(ckpt(out, epoch), "wb") as f:
            f.write(b"junk")
    assert train.main(coop(out, digits_root, tiny_clip_root, flags=("--resume", str(out)))) == 1
    (line,) = stopped(capsys, f"Every model.pth.tar-<epoch> in {out} is truncated or corrupt")


# ---------------------------------------------------------------- disk full
def test_disk_full_while_saving_keeps_the_previous_checkpoint(
    tiny_clip_root, digits_root, tmp_path, capsys, monkeypatch
):
    out, seen = tmp_path / "run", {}
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "model.pth.tar-2" in str(f):  # the device fills up halfway through epoch 2's file
            seen["before"] = sha(ckpt(out, 1))
            with open(f, "wb") as fh:
                fh.write(b"PK\3\4 partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert train.main(coop(out, digits_root, tiny_clip_root)) == 1
    sentence, resume = stopped(capsys, f"Cannot write {ckpt(out, 2)} (No space left on device)")
    assert "nothing there was changed (no partial file" in sentence
    assert resume.startswith(f"Resume from {ckpt(out, 1)} with: python train.py --resume")
    assert sha(ckpt(out, 1)) == seen["before"] and load_checkpoint(ckpt(out, 1))["epoch"] == 1
    assert not os.path.exists(ckpt(out, 2)) and not temp_files(out)
    assert (out / MODEL / "checkpoint").read_text().strip() == "model.pth.tar-1"


def test_read_only_output_is_one_sentence(
    tiny_clip_root, digits_root, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "model.pth.tar-1" in str(f):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    assert train.main(coop(out, digits_root, tiny_clip_root)) == 1
    (sentence,) = stopped(capsys, f"Cannot write {ckpt(out, 1)} (Read-only file system)")
    assert f"make {out / MODEL} writable" in sentence and not temp_files(out)

    def no_log(path, *args, **kwargs):  # the first file a run writes
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(logging, "FileHandler", no_log)
    assert train.main(coop(tmp_path / "locked", digits_root, tiny_clip_root)) == 1
    stopped(capsys, f"Cannot write {tmp_path / 'locked' / 'log.txt'} (Permission denied)")


# ---------------------------------------------------------------- NaN / inf loss
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_naming_step_and_last_checkpoint(
    bad, tiny_clip_root, digits_root, tmp_path, capsys, monkeypatch
):
    out, calls, seen = tmp_path / "run", [0], {}
    real_ce = F.cross_entropy

    def cross_entropy(*args, **kwargs):
        calls[0] += 1
        loss = real_ce(*args, **kwargs)
        if calls[0] == 3:  # epoch 2, batch 1 (2 steps per epoch)
            seen["before"] = sha(ckpt(out, 1))
            return loss * bad
        return loss

    monkeypatch.setattr(F, "cross_entropy", cross_entropy)
    assert train.main(coop(out, digits_root, tiny_clip_root)) == 1
    value = "NaN" if bad != bad else "infinite"
    sentence, resume = stopped(
        capsys,
        f"The loss is {value} at epoch 2/3, batch 1/2",
        f"last good checkpoint is {ckpt(out, 1)}",
    )
    assert resume.startswith(f"Resume from {ckpt(out, 1)} with: ")
    assert sha(ckpt(out, 1)) == seen["before"]  # nothing overwritten
    assert not os.path.exists(ckpt(out, 2)) and not (out / "results.json").exists()


# ---------------------------------------------------------------- images
@pytest.mark.parametrize("fault,workers", [("gone", "0"), ("broken", "0"), ("broken", "1")])
def test_image_that_disappears_or_breaks_mid_run_is_named(
    fault, workers, tiny_clip_root, digits_root, tmp_path, capsys, monkeypatch
):
    data, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(digits_root / "digits", data / "digits")
    real_read = data_manager.read_image
    hit = tmp_path / "hit.txt"

    def read_image(path):
        if os.path.exists(ckpt(out, 1)) and not hit.exists():  # mid-run: epoch 1 is saved
            hit.write_text(path)
            if fault == "gone":
                os.remove(path)
            else:
                with open(path, "wb") as f:
                    f.write(b"\x89PNG\r\n\x1a\n broken")
        return real_read(path)

    monkeypatch.setattr(data_manager, "read_image", read_image)
    opts = ("DATALOADER.NUM_WORKERS", workers)
    assert train.main(coop(out, data, tiny_clip_root, *opts)) == 1
    path = hit.read_text()
    what = "no longer exists" if fault == "gone" else "Cannot decode image"
    sentence, resume = stopped(capsys, path, what)
    assert resume.startswith(f"Resume from {ckpt(out, 1)} with: ")


# ---------------------------------------------------------------- signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_leaves_nothing_partial_and_says_how_to_resume(
    sig, tiny_clip_root, digits_root, tmp_path
):
    out = tmp_path / "run"
    args = coop(out, digits_root, tiny_clip_root, "DATASET.NUM_SHOTS", "8")  # 20 steps/epoch
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=REPO, stderr=subprocess.PIPE, text=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.time() + 600
    while not os.path.exists(ckpt(out, 1)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and not temp_files(out)
    line = err.strip().splitlines()[-1]
    name = signal.Signals(sig).name
    assert line.startswith(f"Interrupted by {name} at epoch ") and "no partial file" in line
    head, command = line.split(" with: ")
    last = head.rsplit("Resume from ", 1)[1]
    assert load_checkpoint(last)["epoch"] >= 1  # whole
    resume_args = shlex.split(command)
    assert resume_args[:4] == ["python", "train.py", "--resume", str(out)]
    assert resume_args[4:] == args  # exactly the run's own arguments
    if sig == signal.SIGTERM:  # and it works
        assert train.main(resume_args[2:]) == 0
        assert (out / "results.json").is_file()
        assert f"Resume {MODEL} from {last}" in (out / "log.txt").read_text()


# ---------------------------------------------------------------- content digests
def test_digest_follows_content_not_size_and_mtime(tmp_path, monkeypatch):
    """A file replaced by one of the same size and mtime (cp -p, os.utime), in place or by
    rename, gets a new digest; the (path, size, mtime ...) shortcut never hides it."""
    path, store = tmp_path / "teacher.pt", str(tmp_path / "digests.json")
    path.write_bytes(b"a" * 1000)
    st = os.stat(path)
    first = file_digest(str(path), store)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_digest(str(path), store) == first

    with open(path, "r+b") as f:  # cp -p onto the file: same inode, size, mtime
        f.write(b"b" * 1000)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = file_digest(str(path), store)
    assert second == hashlib.sha256(b"b" * 1000).hexdigest()

    other = tmp_path / "other.pt"  # a copy renamed over it: new inode, same size and mtime
    other.write_bytes(b"c" * 1000)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    third = file_digest(str(path), store)
    assert third == hashlib.sha256(b"c" * 1000).hexdigest()

    # computed once per file version: a later run reads it from the store
    digest._memory.clear()
    monkeypatch.setattr(digest, "sha256_of", lambda p: pytest.fail("hashed again"))
    assert file_digest(str(path), store) == third


def test_the_resume_line_under_torchrun_names_torchrun(monkeypatch):
    from dassl_ext.engine.faults import resume_command

    argv = ["--trainer", "PromptKD", "--output-dir", "out/run"]
    assert resume_command(argv, "out/run").startswith("python train.py --resume out/run")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resume_command(argv, "out/run").startswith(
        "torchrun --nproc-per-node=4 --standalone train.py --resume out/run --trainer PromptKD"
    )
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert "--nproc-per-node=4 --nnodes=2 --rdzv-endpoint=HOST:PORT train.py" in resume_command(
        argv, "out/run"
    )


def test_corrupt_export_and_corrupt_gpa_state_are_named_not_tracebacks(tmp_path, caplog, capsys):
    """A student export cut short: predict.py says which file, exit 1. A cut
    gpa_state.pt on --resume: a warning naming it, and the aggregate restarts."""
    import importlib.util
    import types

    from dassl_ext.engine.hooks import ParameterAveraging

    bad = tmp_path / "student.pt"
    torch.save({"format": "x", "state_dict": {"w": torch.zeros(100)}}, bad)
    bad.write_bytes(bad.read_bytes()[:50])
    spec = importlib.util.spec_from_file_location(
        "predict", os.path.join(os.path.dirname(__file__), "..", "scripts", "predict.py")
    )
    predict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(predict)
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert predict.main(["-m", str(bad), str(image)]) == 1
    err = capsys.readouterr().err
    assert f"Checkpoint {bad} is truncated or corrupt" in err and "Traceback" not in err

    (tmp_path / "gpa_state.pt").write_bytes(b"not a checkpoint")
    hook = ParameterAveraging(
        [0.5, 0.5], [torch.nn.Parameter(torch.zeros(2))], "gpa_state.pt", "GPA"
    )
    hook.trainer = types.SimpleNamespace(
        start_epoch=1, device=torch.device("cpu"), cfg=types.SimpleNamespace(RESUME=str(tmp_path))
    )
    with caplog.at_level(logging.WARNING):
        hook.before_train()
    assert hook.sum is None and "gpa_state.pt is truncated or corrupt" in caplog.text
