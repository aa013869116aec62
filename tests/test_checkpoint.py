"""Checkpoint IO: Dassl layout, atomic writes, safe loading of foreign (pickled-object) files."""

import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import atomic_write, write_json_atomic
from dassl_ext.utils.checkpoint import (
    Placeholder,
    find_checkpoint,
    load_checkpoint,
    resumable_models,
    save_checkpoint,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(epoch=3):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    return model, {
        "state_dict": sd,
        "epoch": epoch,
        "optimizer": opt.state_dict(),
        "scheduler": {"last_epoch": 2, "base_lrs": [0.1]},
        "val_result": None,
    }


def test_round_trip_dassl_layout(tmp_path):
    model, state = _state()
    path = save_checkpoint(state, str(tmp_path))
    assert os.path.basename(path) == "model.pth.tar-3"
    save_checkpoint({**state, "val_result": 50.0}, str(tmp_path), model_name="model-best.pth.tar")
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model-best.pth.tar", "model.pth.tar-3"]
    assert (tmp_path / "checkpoint").read_text().strip() == "model-best.pth.tar"
    ckpt = torch.load(path, weights_only=True)  # ours hold only tensors and plain containers
    assert set(ckpt["state_dict"]) == {"weight", "bias"}  # 'module.' stripped
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["weight"], model.weight)
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].shape == (2, 3)


def test_atomic_save_leaves_old_file_on_failure(tmp_path, monkeypatch):
    _, state = _state()
    save_checkpoint(state, str(tmp_path))
    before = (tmp_path / "model.pth.tar-3").read_bytes()

    def boom(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(state, str(tmp_path))
    assert (tmp_path / "model.pth.tar-3").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["checkpoint", "model.pth.tar-3"]


class OfficialWarmupScheduler:  # stands in for Dassl's pickled ConstantWarmupScheduler
    def __init__(self):
        self.successor = torch.optim.lr_scheduler.CosineAnnealingLR(
            torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1), T_max=20
        )
        self.last_epoch = 20


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_official_file_with_pickled_objects_yields_weights(tmp_path):
    _, state = _state(epoch=20)
    path = str(tmp_path / "model-best.pth.tar")
    sched = OfficialWarmupScheduler().__dict__
    torch.save({**state, "scheduler": sched, "val_result": 91.2}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 20 and ckpt["val_result"] == 91.2
    assert ckpt["state_dict"]["module.weight"].shape == (2, 3)
    assert isinstance(ckpt["scheduler"]["successor"], Placeholder)
    assert ckpt["scheduler"]["last_epoch"] == 20


def test_code_payload_executes_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = str(tmp_path / "evil.pth.tar")
    _, state = _state()
    torch.save({**state, "scheduler": Payload(str(marker))}, path)
    ckpt = load_checkpoint(path)
    assert not marker.exists()
    assert isinstance(ckpt["scheduler"], Placeholder)
    assert ckpt["scheduler"].name == "system" and ckpt["state_dict"]["module.bias"].shape == (2,)
    # a payload at the top level (no tensors at all) is inert as well
    with open(path, "wb") as f:
        pickle.dump(Payload(str(marker)), f, protocol=2)
    with pytest.raises(UserError):
        load_checkpoint(path)  # not a torch file: a clear error, nothing run
    assert not marker.exists()


def test_missing_file_is_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))


def test_find_checkpoint_best_else_newest(tmp_path):
    folder = tmp_path / "VLPromptLearner"
    assert find_checkpoint(str(folder)) == str(folder / "model-best.pth.tar")  # nothing: best
    folder.mkdir()
    for name in ("model.pth.tar-3", "model.pth.tar-12", "model.pth.tar-7.tmp"):
        (folder / name).write_bytes(b"x")
    assert find_checkpoint(str(folder)) == str(folder / "model.pth.tar-12")  # 12 > 3, not "3"
    assert find_checkpoint(str(folder), epoch=3) == str(folder / "model.pth.tar-3")
    (folder / "model-best.pth.tar").write_bytes(b"x")
    assert find_checkpoint(str(folder)) == str(folder / "model-best.pth.tar")
    assert resumable_models(str(tmp_path)) == ["VLPromptLearner"]


def test_lookup_entry_point_for_the_scripts(tmp_path):
    """`python -m dassl_ext.utils.checkpoint` answers the shell scripts without torch."""
    folder = tmp_path / "run" / "prompt_learner"
    folder.mkdir(parents=True)
    (folder / "model.pth.tar-2").write_bytes(b"x")
    probe = (
        "import runpy, sys; sys.argv = ['x'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('dassl_ext.utils.checkpoint', run_name='__main__')\n"
        "except SystemExit as e:\n    assert 'torch' not in sys.modules; raise\n"
    )

    def lookup(*args):
        cmd = [sys.executable, "-c", probe, *args]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)

    found = lookup("find", str(folder))
    assert (found.returncode, found.stdout.strip()) == (0, str(folder / "model.pth.tar-2"))
    assert lookup("find", str(tmp_path)).returncode == 1
    assert lookup("resumable", str(tmp_path / "run")).returncode == 0
    assert lookup("resumable", str(tmp_path)).returncode == 1
    assert lookup("bogus", str(tmp_path)).returncode == 2


def test_atomic_write_syncs_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "sub" / "results.json"
    write_json_atomic(str(path), {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1} and path.read_text().endswith("\n")
    # the temporary file (renamed since) and the folder holding the new name
    assert len(synced) == 2 and synced[1] == str(tmp_path / "sub")
    assert os.path.dirname(synced[0]) == str(tmp_path / "sub") and synced[0].endswith(".tmp")

    def failing(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(str(path), failing)
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path / "sub") == ["results.json"]  # no temporary file left
