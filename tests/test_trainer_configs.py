"""Trainer configs (official file names and values, spec §8) and the experiment scripts."""

from __future__ import annotations

import glob
import os
import subprocess

import pytest

import train
from dassl_ext.config import setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG_DIR = os.path.join(REPO, "configs", "trainers")
METHODS = ("CoOp", "CoCoOp", "IVLP", "MaPLe", "PromptSRC")
CONFIG_FILES = sorted(
    os.path.relpath(p, CFG_DIR) for m in METHODS for p in glob.glob(os.path.join(CFG_DIR, m, "*"))
)


def load(rel: str, *opts: str):
    train.import_plugins()
    trainer = rel.split(os.sep)[0]
    args = ["--trainer", trainer, "--config-file", os.path.join(CFG_DIR, rel), *opts]
    return setup_cfg(train.parse_args(args))


@pytest.mark.parametrize("rel", CONFIG_FILES)
def test_every_config_loads_with_the_shared_block(rel):
    cfg = load(rel)
    assert cfg.INPUT.INTERPOLATION == "bicubic" and cfg.DATALOADER.NUM_WORKERS == 8
    assert list(cfg.INPUT.PIXEL_MEAN) == [0.48145466, 0.4578275, 0.40821073]
    if rel.endswith("rn50_val.yaml"):  # only DATALOADER / INPUT / MODEL sections
        assert cfg.OPTIM.NAME == "adam" and cfg.DATALOADER.TEST.BATCH_SIZE == 200
        return
    assert tuple(cfg.INPUT.TRANSFORMS) == ("random_resized_crop", "random_flip", "normalize")
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR_SCHEDULER) == ("sgd", "cosine")
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE) == (1, "constant")
    assert cfg.OPTIM.WARMUP_CONS_LR == 1e-5 and cfg.DATALOADER.TEST.BATCH_SIZE == 100


# file -> {key: value} from the spec §8 table
EXPECTED = {
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": 4, "OPTIM.LR": 0.0025, "OPTIM.MAX_EPOCH": 20,
        "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 9, "TRAINER.PROMPTSRC.GPA_MEAN": 15,
        "TRAINER.PROMPTSRC.GPA_STD": 1, "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT": 25,
        "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT": 10, "TEST.FINAL_MODEL": "last_step",
    },
    "PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml": {
        "MODEL.BACKBONE.NAME": "ViT-L/14", "DATALOADER.TRAIN_X.BATCH_SIZE": 8,
        "OPTIM.LR": 0.005, "OPTIM.MAX_EPOCH": 20, "TRAINER.PROMPTSRC.N_CTX_VISION": 4,
        "TRAINER.PROMPTSRC.N_CTX_TEXT": 4, "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 9,
        "TRAINER.PROMPTSRC.GPA_MEAN": 15, "TRAINER.PROMPTSRC.GPA_STD": 1,
        "TRAINER.PROMPTSRC.PREC": "fp16", "TRAINER.PROMPTSRC.CTX_INIT": "a photo of a",
    },
    "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": 8, "OPTIM.LR": 0.005,
        "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION": 3, "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT": 3,
        "TRAINER.PROMPTSRC.GPA_MEAN": 6, "TRAINER.PROMPTSRC.GPA_STD": 10,
    },
    "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": 8, "OPTIM.MAX_EPOCH": 50, "TEST.FINAL_MODEL": "best_val",
        "TRAINER.PROMPTSRC.GPA_MEAN": 30, "TRAINER.PROMPTSRC.GPA_STD": 30,
    },
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": 4, "OPTIM.LR": 0.0035, "OPTIM.MAX_EPOCH": 5,
        "TEST.FINAL_MODEL": "best_val", "TRAINER.MAPLE.PROMPT_DEPTH": 9,
    },
    "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml": {
        "OPTIM.LR": 0.0026, "OPTIM.MAX_EPOCH": 2, "TRAINER.MAPLE.PROMPT_DEPTH": 3,
    },
    "IVLP/vit_b16_c2_ep20_batch8_4+4ctx.yaml": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": 8, "TRAINER.IVLP.N_CTX_VISION": 4,
        "TRAINER.IVLP.N_CTX_TEXT": 4,
    },
    "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": 8, "OPTIM.LR": 0.002, "OPTIM.MAX_EPOCH": 10,
        "TRAINER.COCOOP.N_CTX": 4, "TRAINER.COCOOP.CTX_INIT": "a photo of a",
    },
    "CoCoOp/vit_b16_c16_ep10_batch1.yaml": {
        "DATALOADER.TRAIN_X.BATCH_SIZE": 1, "TRAINER.COCOOP.N_CTX": 16,
    },
    "CoOp/vit_b16.yaml": {"OPTIM.MAX_EPOCH": 200, "TRAIN.PRINT_FREQ": 50},
    "CoOp/rn50_ep50_ctxv1.yaml": {
        "MODEL.BACKBONE.NAME": "RN50", "OPTIM.MAX_EPOCH": 50, "TRAIN.PRINT_FREQ": 5,
        "DATALOADER.TRAIN_X.BATCH_SIZE": 32, "TRAINER.COOP.CTX_INIT": "a photo of a",
        "TRAINER.COOP.N_CTX": 16, "TRAINER.COOP.CLASS_TOKEN_POSITION": "end",
    },
}  # fmt: skip


@pytest.mark.parametrize("rel", list(EXPECTED))
def test_official_values(rel):
    cfg = load(rel)
    for key, value in EXPECTED[rel].items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, key


def test_official_code_defaults():
    cfg = load("IVLP/vit_b16_c2_ep20_batch8_4+4ctx.yaml")
    assert (cfg.TRAINER.IVLP.PREC, cfg.TRAINER.MAPLE.N_CTX, cfg.TRAINER.COCOOP.N_CTX) == (
        "fp16",
        2,
        16,
    )
    assert cfg.TRAINER.COOP.CSC is False and cfg.TRAINER.COOP.CTX_INIT == ""


SCRIPT_DIRS = ("zsclip", "coop", "cocoop", "ivlp", "maple", "promptsrc")
SCRIPTS = sorted(
    p for d in SCRIPT_DIRS for p in glob.glob(os.path.join(REPO, "scripts", d, "*.sh"))
)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: os.path.relpath(p, REPO))
def test_script_syntax(script):
    subprocess.run(["bash", "-n", script], check=True)


def test_base2new_script_loops_seeds_passes_opts_and_skips_finished(tmp_path):
    script = os.path.join(REPO, "scripts", "promptsrc", "base2new_train.sh")
    done = tmp_path / "base2new/train_base/oxford_pets/shots_16/PromptSRC"
    done = done / "vit_b16_c2_ep20_batch4_4+4ctx/seed2"
    done.mkdir(parents=True)
    (done / "results.json").write_text("{}")
    unfinished = done.parent / "seed3" / "VLPromptLearner"
    unfinished.mkdir(parents=True)
    (unfinished / "model.pth.tar-4").write_text("")
    env = dict(os.environ, PYTHON="echo", OUTPUT=str(tmp_path), DATA="/data")
    out = subprocess.run(
        ["bash", script, "oxford_pets", "OPTIM.MAX_EPOCH", "2"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    runs = [line for line in out.splitlines() if line.startswith("train.py")]
    # every seed goes to train.py, which skips seed 2 if its results are of this configuration
    assert len(runs) == 3 and all("--skip-finished" in r for r in runs)
    assert all("--root /data" in r and "--trainer PromptSRC" in r for r in runs)
    assert all(r.endswith("DATASET.SUBSAMPLE_CLASSES base OPTIM.MAX_EPOCH 2") for r in runs)
    assert "--resume" not in runs[0] and "--resume" not in runs[1]  # seed 2 is finished
    assert f"--resume {unfinished.parent}" in runs[2]
    assert "--gpu" not in out and "CUDA_VISIBLE_DEVICES" not in out


def test_base2new_test_script_evaluates_new_classes(tmp_path):
    script = os.path.join(REPO, "scripts", "maple", "base2new_test.sh")
    env = dict(os.environ, PYTHON="echo", OUTPUT=str(tmp_path), SEEDS="1")
    out = subprocess.run(
        ["bash", script, "dtd"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "--eval-only" in out and "--load-epoch 5" in out
    assert "DATASET.SUBSAMPLE_CLASSES new" in out and "train_base/dtd" in out
