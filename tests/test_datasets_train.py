"""Every benchmark fixture, and a dataset added from its own module, run through train.py."""

import json
import os
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from dataset_fixtures import TEST_ONLY, WRITERS
from torch import nn

import train
from dassl_ext.engine import TrainerX
from dassl_ext.optim import build_lr_scheduler, build_optimizer
from dassl_ext.registry import DATASET_REGISTRY, TRAINER_REGISTRY

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "datasets")
CONFIG_OF = {}
for _f in os.listdir(CONFIGS):
    with open(os.path.join(CONFIGS, _f)) as _fh:
        CONFIG_OF[_fh.read().split('NAME: "')[1].split('"')[0]] = os.path.join(CONFIGS, _f)


class PooledLinearData(TrainerX):
    """A linear classifier on 2x2-pooled pixels: enough to exercise the data path."""

    def build_model(self) -> None:
        self.model = nn.Linear(12, self.num_classes).to(self.device)
        self.optim = build_optimizer(self.model, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("linear", self.model, self.optim, self.sched)

    def forward_backward(self, batch: dict) -> dict:
        image, label = self.parse_batch_train(batch)
        pooled = F.adaptive_avg_pool2d(image, 2).flatten(1)
        loss = F.cross_entropy(self.training_module()(pooled), label)
        self.model_backward_and_update(loss)
        return {"loss": loss.item()}

    def model_inference_all(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(F.adaptive_avg_pool2d(image, 2).flatten(1))  # (B, 12) -> (B, C)

    def model_inference(self, image: torch.Tensor) -> torch.Tensor:
        return self.model_inference_all(image)[:, self.eval_class_ids]


@pytest.fixture(autouse=True, scope="module")
def trainer_registered():
    TRAINER_REGISTRY.register(PooledLinearData)
    yield
    TRAINER_REGISTRY.unregister("PooledLinearData")


def argv(root, out, *opts, config=None, name=None):
    data = ["--dataset-config-file", config] if config else []
    named = ["DATASET.NAME", name] if name else []
    return [
        "--root",
        str(root),
        "--trainer",
        "PooledLinearData",
        "--output-dir",
        str(out),
        "--seed",
        "1",
        *data,
        *named,
        "USE_CUDA",
        "False",
        "OPTIM.NAME",
        "sgd",
        "OPTIM.LR",
        "0.1",
        "OPTIM.MAX_EPOCH",
        "1",
        "DATALOADER.NUM_WORKERS",
        "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE",
        "4",
        "INPUT.SIZE",
        "(8, 8)",
        "INPUT.TRANSFORMS",
        "['random_flip', 'normalize']",
        *opts,
    ]


def run(*args, **kwargs) -> dict:
    assert train.main(argv(*args, **kwargs)) == 0
    with open(os.path.join(args[1], "results.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_benchmark_through_train_py(tmp_path, name):
    expected = WRITERS[name](str(tmp_path / "data"))
    mode = "standard" if name in TEST_ONLY else "base_new"
    res = run(
        tmp_path / "data", tmp_path / "out", "DATASET.EVAL_SPLITS", mode, config=CONFIG_OF[name]
    )
    assert res["dataset"] == name
    n_test = expected.counts["test"]
    if mode == "standard":
        assert res["splits"]["test"]["num_images"] == n_test
    else:
        base, new = res["splits"]["base"], res["splits"]["new"]
        assert base["num_images"] + new["num_images"] == n_test
        m = (len(expected.classnames) + 1) // 2
        assert base["num_images"] == n_test * m // len(expected.classnames)


def test_digits_through_train_py_with_few_shots(tmp_path, digits_root):
    res = run(
        digits_root,
        tmp_path / "out",
        "DATASET.NUM_SHOTS",
        "2",
        "DATASET.SUBSAMPLE_CLASSES",
        "base",
        config=CONFIG_OF["Digits"],
    )
    split = json.loads((digits_root / "digits" / "split_zhou_Digits.json").read_text())
    n_base = sum(label < 5 for _, label, _ in split["test"])  # classes zero..four
    assert res["splits"]["test"]["num_images"] == n_base
    assert (digits_root / "digits" / "split_fewshot" / "shot_2-seed_1.json").is_file()


NEW_DATASET_MODULE = '''
"""A user's own dataset: one file, registered by decorator."""

from dassl_ext.data import DATASET_REGISTRY, DatasetBase


@DATASET_REGISTRY.register()
class Shapes(DatasetBase):
    dataset_dir = "shapes"
    image_dir = "images"
    split_file = "split_Shapes.json"

    def read_raw(self):
        return self.read_and_split_data(self.require(self.image_dir))
'''


def test_new_dataset_from_its_own_module(tmp_path, monkeypatch):
    from dataset_fixtures import write_image

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "my_shapes.py").write_text(textwrap.dedent(NEW_DATASET_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    for c, shape in enumerate(["circle", "square", "triangle", "star"]):
        for i in range(10):
            write_image(
                str(tmp_path / "data" / "shapes" / "images" / shape / f"{i}.png"), c * 10 + i
            )
    __import__("my_shapes")
    try:
        res = run(
            tmp_path / "data",
            tmp_path / "out",
            "DATASET.EVAL_SPLITS",
            "base_new",
            "DATASET.PROTOCOL",
            "clean",
            "TEST.FINAL_MODEL",
            "best_val",
            name="Shapes",
        )
    finally:
        DATASET_REGISTRY.unregister("Shapes")
        sys.modules.pop("my_shapes", None)
    assert (tmp_path / "data" / "shapes" / "split_Shapes.json").is_file()
    assert res["protocol"] == "clean"
    assert res["splits"]["base"]["num_images"] == 6 and res["splits"]["new"]["num_images"] == 6


def test_missing_dataset_fails_with_one_sentence(tmp_path, capsys):
    assert train.main(argv(tmp_path, tmp_path / "out", config=CONFIG_OF["OxfordPets"])) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: OxfordPets:") and "download_data.py oxford_pets" in err
    assert "Traceback" not in err
