"""The README's "Adding a dataset" and "Adding a trainer" examples run as printed."""

import json
import os
import re
import sys

from conftest import REPO_ROOT
from dataset_fixtures import write_image

import train
from dassl_ext.config import setup as config_setup
from dassl_ext.registry import DATASET_REGISTRY, TRAINER_REGISTRY


def readme_block(first_line: str) -> str:
    """The fenced code block of README.md whose first line is ``first_line``."""
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        text = f.read()
    for block in re.findall(r"```\w*\n(.*?)```", text, flags=re.S):
        if block.startswith(first_line):
            return block
    raise AssertionError(f"README.md has no code block starting with {first_line!r}")


def test_readme_dataset_and_trainer_examples(tmp_path, monkeypatch, tiny_clip_root):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "readme_shapes.py").write_text(readme_block("# datasets/shapes.py"))
    (plugins / "readme_probe.py").write_text(readme_block("# trainers/linear_probe.py"))
    dataset_yaml = tmp_path / "shapes.yaml"
    dataset_yaml.write_text(readme_block("# configs/datasets/shapes.yaml"))
    for c, shape in enumerate(["circle", "square", "triangle", "star"]):
        for i in range(10):
            write_image(
                str(tmp_path / "data" / "shapes" / "images" / shape / f"{i}.png"), c * 10 + i
            )
    monkeypatch.syspath_prepend(str(plugins))
    import readme_probe
    import readme_shapes  # noqa: F401

    try:
        argv = [
            "--root", str(tmp_path / "data"), "--seed", "1", "--trainer", "LinearProbe",
            "--dataset-config-file", str(dataset_yaml), "--output-dir", str(tmp_path / "out"),
            "MODEL.BACKBONE.NAME", "tiny-student", "MODEL.CLIP_ROOT", tiny_clip_root,
            "INPUT.SIZE", "(32, 32)", "OPTIM.MAX_EPOCH", "2", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATASET.EVAL_SPLITS", "base_new",
        ]  # fmt: skip
        assert train.main(argv) == 0
        with open(tmp_path / "out" / "results.json") as f:
            res = json.load(f)
        assert res["trainer"] == "LinearProbe" and res["dataset"] == "Shapes"
        assert {s: r["num_images"] for s, r in res["splits"].items()} == {"base": 6, "new": 6}
        assert os.path.isfile(tmp_path / "out" / "linear" / "model.pth.tar-2")
        assert os.path.isfile(tmp_path / "data" / "shapes" / "split_Shapes.json")
    finally:
        DATASET_REGISTRY.unregister("Shapes")
        TRAINER_REGISTRY.unregister("LinearProbe")
        extension = readme_probe.add_linear_probe_config
        config_setup._EXTENSIONS[:] = [f for f in config_setup._EXTENSIONS if f is not extension]
        for name in ("readme_probe", "readme_shapes"):
            sys.modules.pop(name, None)
