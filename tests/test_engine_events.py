"""The trainer's EventStorage (values hooks share) and the hooks' priority order."""

import pytest
import torch

from dassl_ext.engine import TrainerBase
from dassl_ext.engine.events import EventStorage
from dassl_ext.engine.hooks import HookBase, MetricsWriter, ModelSelection, Priority
from dassl_ext.errors import UserError
from dassl_ext.utils.checkpoint import load_weights, save_checkpoint


def test_storage_keeps_the_latest_value_and_its_epoch():
    storage = EventStorage()
    storage.put_scalar("train/loss", 2.0, step=0)
    storage.put_scalar("train/lr", 0.1, step=0)
    storage.put_scalar("train/loss", 1.5, step=1)  # running mean after the last step
    storage.epoch = 1
    storage.put_scalar("val/accuracy", 75, step=1)
    assert storage.latest() == {
        "train/loss": (1.5, 0),
        "train/lr": (0.1, 0),
        "val/accuracy": (75.0, 1),
    }
    assert storage.epoch_scalars("val/") == {"accuracy": 75.0}
    assert storage.epoch_scalars("train/") == {}  # nothing put in epoch 1 yet
    storage.put_scalar("train/lr", 0.05)
    assert storage.epoch_scalars("train/") == {"lr": 0.05}


def test_hooks_sorted_by_priority_then_registration():
    trainer = TrainerBase()
    a, b = HookBase(), HookBase()  # NORMAL
    last = HookBase()
    last.priority = Priority.LAST
    selection, metrics = ModelSelection(), MetricsWriter()
    trainer.register_hooks([last, metrics, a])
    trainer.register_hooks([selection, b])
    assert trainer.hooks == [a, b, selection, metrics, last]
    assert all(h.trainer == trainer for h in trainer.hooks)


def test_one_strict_loader_names_the_key(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint({"state_dict": model.state_dict(), "epoch": 1}, str(tmp_path))
    other = torch.nn.Linear(4, 2)
    with pytest.raises(
        UserError, match=r"key 'weight' has shape \(2, 3\), the model expects \(2, 4\)"
    ):
        load_weights(other, path)
    with pytest.raises(UserError, match="lacks key 'bias'"):
        load_weights(torch.nn.Linear(3, 2), path, select=lambda sd: {"weight": sd["weight"]})
    bigger = torch.nn.Sequential(torch.nn.Linear(3, 2))
    with pytest.raises(UserError, match="has unexpected key 'weight'"):
        load_weights(bigger, path)
    fresh = torch.nn.Linear(3, 2)
    assert load_weights(fresh, path)["epoch"] == 1
    assert torch.equal(fresh.weight, model.weight)
