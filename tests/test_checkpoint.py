"""Checkpoint IO: Dassl layout, atomic writes, safe loading of foreign (pickled-object) files."""

import os
import pickle

import pytest
import torch

from dassl_ext.errors import UserError
from dassl_ext.utils.checkpoint import Placeholder, load_checkpoint, save_checkpoint


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
