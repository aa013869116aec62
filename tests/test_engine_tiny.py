"""End-to-end runs of ``train.main`` with a tiny trainer on a tiny dataset written here.

Also the helpers other engine tests import: ``write_tiny_dataset``, ``register_tiny``,
``tiny_argv``, ``final_weights``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import train
from dassl_ext.config import setup as config_setup
from dassl_ext.data import DatasetBase
from dassl_ext.engine import TrainerX
from dassl_ext.engine.hooks import HookBase, Priority
from dassl_ext.optim import build_lr_scheduler, build_optimizer
from dassl_ext.registry import DATASET_REGISTRY, TRAINER_REGISTRY

CLASSES = ["red", "green", "blue", "gray"]
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 120)]


class TinyEngineSet(DatasetBase):
    dataset_dir = "tinyset"
    image_dir = "images"
    split_file = "split_zhou_TinyEngineSet.json"


class TinyNet(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))  # (B, 3*2*2) -> (B, C)


def add_tiny_config(cfg) -> None:
    cfg.TRAINER.TINY = type(cfg)()
    cfg.TRAINER.TINY.PREC = "fp32"


class TinyEngineTrainer(TrainerX):
    """Linear classifier on 2x2-pooled pixels."""

    prec_section = "TINY"

    def build_model(self) -> None:
        self.model = TinyNet(self.num_classes).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("TinyNet", self.model, self.optim, self.sched)

    def forward_backward(self, batch: dict) -> dict:
        image, label = self.parse_batch_train(batch)
        with self.prec.autocast():
            loss = F.cross_entropy(self.training_module()(image), label)
        self.model_backward_and_update(loss)
        return {"loss": loss.item()}

    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)[:, self.eval_class_ids]  # logits of the split's classes only


def register_tiny() -> None:
    for reg, obj in ((DATASET_REGISTRY, TinyEngineSet), (TRAINER_REGISTRY, TinyEngineTrainer)):
        if obj.__name__ not in reg:
            reg.register(obj)
    config_setup.register_config_extension(add_tiny_config)


def unregister_tiny() -> None:
    DATASET_REGISTRY.unregister("TinyEngineSet")
    TRAINER_REGISTRY.unregister("TinyEngineTrainer")
    config_setup._EXTENSIONS[:] = [f for f in config_setup._EXTENSIONS if f is not add_tiny_config]


def write_tiny_dataset(root: str, per_split=(4, 2, 3), size: int = 8, seed: int = 0) -> str:
    """Noisy solid-colour PNGs (one class per colour) and a CoOp split file under root."""
    rng = np.random.default_rng(seed)
    base = os.path.join(root, "tinyset")
    split: dict[str, list] = {"train": [], "val": [], "test": []}
    for label, (name, color) in enumerate(zip(CLASSES, COLORS)):
        os.makedirs(os.path.join(base, "images", name), exist_ok=True)
        n = 0
        for part, count in zip(split, per_split):
            for _ in range(count):
                pixels = np.clip(np.array(color) + rng.normal(0, 40, (size, size, 3)), 0, 255)
                rel = f"{name}/{n}.png"
                Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(base, "images", rel))
                split[part].append([rel, label, name])
                n += 1
    with open(os.path.join(base, "split_zhou_TinyEngineSet.json"), "w") as f:
        json.dump(split, f, indent=4)
    return root


def tiny_argv(
    root: str, out: str, *opts: str, epochs: int = 2, seed: int = 1, flags: tuple = ()
) -> list[str]:
    """train.py arguments for the tiny run; ``flags`` go before the trailing KEY VALUE pairs."""
    return [
        "--root", root, "--trainer", "TinyEngineTrainer", "--output-dir", out,
        "--seed", str(seed), *flags,
        "DATASET.NAME", "TinyEngineSet", "USE_CUDA", "False",
        "OPTIM.NAME", "sgd", "OPTIM.LR", "0.5", "OPTIM.MAX_EPOCH", str(epochs),
        "OPTIM.LR_SCHEDULER", "cosine", "OPTIM.WARMUP_EPOCH", "1",
        "OPTIM.WARMUP_TYPE", "constant", "OPTIM.WARMUP_CONS_LR", "0.01",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "5", "INPUT.SIZE", "(8, 8)",
        "INPUT.TRANSFORMS", "['random_flip', 'normalize']", "TRAIN.PRINT_FREQ", "2",
        *opts,
    ]  # fmt: skip


def final_weights(out: str, epoch: int) -> dict:
    path = os.path.join(out, "TinyNet", f"model.pth.tar-{epoch}")
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.fixture
def tiny(tmp_path):
    """(data root, output dir) with the tiny dataset and trainer registered."""
    register_tiny()
    yield write_tiny_dataset(str(tmp_path / "data")), str(tmp_path / "out")
    unregister_tiny()


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_train_last_step_writes_dassl_outputs(tiny):
    root, out = tiny
    assert train.main(tiny_argv(root, out, epochs=3)) == 0
    assert sorted(os.listdir(os.path.join(out, "TinyNet"))) == ["checkpoint", "model.pth.tar-3"]
    ckpt = torch.load(os.path.join(out, "TinyNet", "model.pth.tar-3"), weights_only=True)
    assert {"state_dict", "epoch", "optimizer", "scheduler", "val_result"} <= set(ckpt)
    assert ckpt["epoch"] == 3 and ckpt["val_result"] is None
    for name in ("log.txt", "config.yaml", "results.json", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(out, name)), name
    assert any(f.startswith("events") for f in os.listdir(os.path.join(out, "tensorboard")))
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert "* accuracy:" in log and "epoch [3/3] batch [4/4]" in log
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert res["trainer"] == "TinyEngineTrainer" and res["dataset"] == "TinyEngineSet"
    assert res["seed"] == 1 and res["protocol"] == "paper" and res["selection"] is None
    split = res["splits"]["test"]
    assert split["num_images"] == 12 and split["epoch"] == 3
    assert split["accuracy"] == pytest.approx(100 - split["error_rate"])
    assert split["accuracy"] >= 50.0  # 4 colours: chance is 25 (seeds 1-3: 83, 92, 83)
    rows = _read_jsonl(os.path.join(out, "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # LR steps once per epoch after the last batch: warm-up, then cosine over MAX_EPOCH (spec §5.3).
    assert [r["lr"] for r in rows] == pytest.approx([0.01, 0.5, 0.375])
    assert all(r["val_accuracy"] is None and "loss" in r["loss"] for r in rows)


def test_best_val_selects_strictly_better_and_eval_only_reloads(tiny):
    root, out = tiny
    argv = tiny_argv(root, out, "TEST.FINAL_MODEL", "best_val", "TEST.SAVE_LOGITS", "True")
    assert train.main(argv + ["TRAIN.CHECKPOINT_FREQ", "1"]) == 0
    files = sorted(os.listdir(os.path.join(out, "TinyNet")))
    assert files == ["checkpoint", "model-best.pth.tar", "model.pth.tar-1", "model.pth.tar-2"]
    rows = _read_jsonl(os.path.join(out, "metrics.jsonl"))
    vals = [r["val_accuracy"] for r in rows]
    best_epoch = 1 + vals.index(max(vals))  # first maximum: later ties do not replace it
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert res["selection"] == {"split": "val", "accuracy": max(vals), "epoch": best_epoch}
    assert res["splits"]["test"]["epoch"] == best_epoch
    logits = torch.load(os.path.join(out, "logits_test.pt"), weights_only=True)
    assert logits["logits"].shape == (12, 4) and len(logits["impaths"]) == 12

    out2 = out + "_eval"
    flags = ("--eval-only", "--model-dir", out, "--load-epoch", "1")
    assert train.main(tiny_argv(root, out2, flags=flags)) == 0
    with open(os.path.join(out2, "results.json")) as f:
        assert json.load(f)["splits"]["test"]["epoch"] == 1


def test_base_new_splits_use_eval_class_ids(tiny):
    root, out = tiny
    argv = tiny_argv(root, out, "DATASET.EVAL_SPLITS", "base_new", "TRAIN.CHECKPOINT_FREQ", "1")
    assert train.main(argv) == 0
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert set(res["splits"]) == {"base", "new"}
    assert res["splits"]["base"]["num_images"] == 6 and res["splits"]["new"]["num_images"] == 6
    # trained on the 2 base colours: at least 5 of their 6 test images (chance: 3; seeds 1-3: 6)
    assert res["splits"]["base"]["accuracy"] >= 100 * 5 / 6 - 1e-9


def test_no_test_skips_evaluation(tiny):
    root, out = tiny
    assert train.main(tiny_argv(root, out, "TEST.NO_TEST", "True", epochs=1)) == 0
    with open(os.path.join(out, "results.json")) as f:  # the record that it finished
        res = json.load(f)
    assert res["splits"] == {} and res["no_test"] is True and res["trainer"] == "TinyEngineTrainer"
    with open(os.path.join(out, "log.txt")) as f:
        assert "* accuracy:" not in f.read()  # nothing evaluated
    assert os.path.exists(os.path.join(out, "TinyNet", "model.pth.tar-1"))


def test_existing_checkpoints_need_resume(tiny, capsys):
    root, out = tiny
    assert train.main(tiny_argv(root, out, "TEST.NO_TEST", "True", epochs=1)) == 0
    assert train.main(tiny_argv(root, out, "TEST.NO_TEST", "True", epochs=1)) == 1
    assert "--resume" in capsys.readouterr().err


def test_fp16_on_cpu_warns_and_trains_fp32(tiny, caplog, monkeypatch):
    from dassl_ext.engine import precision

    monkeypatch.setattr(precision, "_warned", set())
    root, out = tiny
    assert train.main(tiny_argv(root, out, "TRAINER.TINY.PREC", "fp16", epochs=1)) == 0
    assert "Precision fp16 needs CUDA; running fp32 on cpu" in caplog.text
    assert all(v.dtype == torch.float32 for v in final_weights(out, 1).values())


@pytest.mark.parametrize("prec", ["amp", "fp16", "bf16", "fp32"])
def test_precisions_train_fp32_master_weights(tiny, prec, cpu_fp16):
    """Every precision trains (fp16 / amp with a live gradient scaler, kept on the CPU by the
    test-only switch) with fp32 master weights, and learns the colours."""
    root, out = tiny
    assert train.main(tiny_argv(root, out, "TRAINER.TINY.PREC", prec, epochs=2)) == 0
    ckpt = torch.load(os.path.join(out, "TinyNet", "model.pth.tar-2"), weights_only=True)
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values())
    assert (ckpt["scaler"] is not None) == (prec in ("amp", "fp16"))
    if ckpt["scaler"] is not None:  # 2 epochs x 4 batches, none skipped for overflow
        assert ckpt["scaler"]["_growth_tracker"] == 8 and ckpt["scaler"]["scale"] == 2.0**16
    with open(os.path.join(out, "results.json")) as f:
        test = json.load(f)["splits"]["test"]
    assert test["num_images"] == 12 and test["accuracy"] >= 50.0  # 4 classes: chance is 25


class Recorder(HookBase):
    """Logs each stage it is called in, with what the hooks before it have done."""

    def __init__(self, name: str, log: list, priority: int) -> None:
        self.name, self.log, self.priority = name, log, priority

    def before_train(self) -> None:
        self.log.append((self.name, "before_train", self.trainer.start_epoch))

    def before_epoch(self) -> None:
        self.log.append((self.name, "before_epoch", self.trainer.epoch))

    def after_epoch(self) -> None:
        folder = os.path.join(self.trainer.output_dir, "TinyNet")
        files = os.listdir(folder) if os.path.isdir(folder) else []
        saved = sorted(f for f in files if f.startswith("model"))
        self.log.append((self.name, "after_epoch", self.trainer.epoch, saved))

    def after_train(self) -> None:
        self.log.append((self.name, "after_train"))


class HookedTrainer(TinyEngineTrainer):
    log: list = []

    def build_hooks(self):  # registered in the opposite order: the priorities decide
        early = Recorder("early", self.log, Priority.NORMAL)
        return [Recorder("late", self.log, Priority.LAST), *super().build_hooks(), early]


def test_hooks_run_in_priority_order(tiny):
    root, out = tiny
    TRAINER_REGISTRY.register(HookedTrainer)
    try:
        argv = tiny_argv(root, out, "TEST.FINAL_MODEL", "best_val", epochs=2)
        argv[argv.index("TinyEngineTrainer")] = "HookedTrainer"
        assert train.main(argv) == 0
    finally:
        TRAINER_REGISTRY.unregister("HookedTrainer")
    best, last = "model-best.pth.tar", "model.pth.tar-2"
    assert HookedTrainer.log == [
        ("early", "before_train", 0),
        ("late", "before_train", 0),
        ("early", "before_epoch", 0),
        ("late", "before_epoch", 0),
        ("early", "after_epoch", 0, []),  # before selection: nothing saved yet
        ("late", "after_epoch", 0, [best]),  # after selection and checkpointing
        ("early", "before_epoch", 1),
        ("late", "before_epoch", 1),
        ("early", "after_epoch", 1, [best]),
        ("late", "after_epoch", 1, [best, last]),
        ("early", "after_train"),
        ("late", "after_train"),
    ]
