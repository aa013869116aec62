"""The val-only copy that the demo recipe is chosen on, and the stand-ins' environment record."""

from __future__ import annotations

import json
import os

import pytest
import torch

from scripts import choose_standin_recipe as choose
from scripts import pretrain_clip

SPLIT = "split_zhou_Digits.json"


def test_val_copy_holds_train_and_val_only(digits_root, tmp_path):
    with open(os.path.join(digits_root, "digits", SPLIT)) as f:
        original = json.load(f)
    copy_dir = choose.make_val_copy(str(digits_root), str(tmp_path / "copy"))
    with open(os.path.join(copy_dir, SPLIT)) as f:
        copy = json.load(f)
    assert copy == {"train": original["train"], "val": original["val"], "test": original["val"]}
    images = {
        os.path.relpath(os.path.join(d, n), os.path.join(copy_dir, "images"))
        for d, _, names in os.walk(os.path.join(copy_dir, "images"))
        for n in names
    }
    assert images == {r[0] for r in original["train"] + original["val"]}
    assert not images & {r[0] for r in original["test"]}  # no test image can be read


def test_val_copy_refuses_a_folder_with_another_split(digits_root, tmp_path):
    copy_dir = choose.make_val_copy(str(digits_root), str(tmp_path / "copy"))
    with open(os.path.join(copy_dir, SPLIT)) as f:
        split = json.load(f)
    split["test"] = split["train"][:3]
    with open(os.path.join(copy_dir, SPLIT), "w") as f:
        json.dump(split, f)
    with pytest.raises(SystemExit, match="another split"):
        choose.make_val_copy(str(digits_root), str(tmp_path / "copy"))


def test_pretrain_manifest_records_torch_cpu_and_threads(digits_root, tmp_path):
    threads = torch.get_num_threads()
    try:
        pretrain_clip.main(
            ["digits-student", "--root", str(digits_root), "--out", str(tmp_path)]
            + ["--steps", "2", "--log-every", "0", "--threads", "1"]
        )
    finally:
        torch.set_num_threads(threads)
    with open(tmp_path / "digits-student.json") as f:
        env = json.load(f)["environment"]
    assert env["torch"] == torch.__version__
    assert env["threads"] == 1
    assert env["cpu"] == pretrain_clip.cpu_model() != "unknown"
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
