"""Interrupted training + ``--resume`` ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from test_engine_tiny import final_weights, tiny, tiny_argv  # noqa: F401  (fixture)

import train

DEVICES = [
    pytest.param((), id="cpu"),
    # fp16 autocast + gradient scaler on the CPU (test-only switch): the scaler state resumes
    pytest.param(("TRAINER.TINY.PREC", "fp16"), id="cpu-fp16"),
    pytest.param(
        ("USE_CUDA", "True", "TRAINER.TINY.PREC", "amp"),
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(),
            reason="CUDA-specific: the CUDA RNG state and CUDA kernels resume bit-identically",
        ),
        id="cuda-amp",
    ),
]


@pytest.mark.parametrize("device_opts", DEVICES)
def test_resume_matches_uninterrupted_run(tiny, device_opts, cpu_fp16):  # noqa: F811
    root, out = tiny
    opts = ("TRAIN.CHECKPOINT_FREQ", "1", "TEST.FINAL_MODEL", "best_val", *device_opts)
    assert train.main(tiny_argv(root, out, *opts, epochs=4)) == 0
    straight = final_weights(out, 4)

    # Simulate a crash after epoch 2: keep only what existed then.
    crashed = out + "_crashed"
    shutil.copytree(out, crashed)
    for f in ("model.pth.tar-3", "model.pth.tar-4"):
        os.remove(os.path.join(crashed, "TinyNet", f))
    os.remove(os.path.join(crashed, "results.json"))
    ckpt2 = torch.load(os.path.join(crashed, "TinyNet", "model.pth.tar-2"), weights_only=True)
    assert {"rng_state", "best_result"} <= set(ckpt2)
    assert (ckpt2["scaler"] is not None) == ("TRAINER.TINY.PREC" in device_opts)

    assert train.main(tiny_argv(root, "", *opts, epochs=4, flags=("--resume", crashed))) == 0
    resumed = final_weights(crashed, 4)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    scalers = [
        torch.load(os.path.join(d, "TinyNet", "model.pth.tar-4"), weights_only=True)["scaler"]
        for d in (out, crashed)
    ]
    assert scalers[0] == scalers[1]  # fp16: the growth tracker counts on from epoch 2's value
    with open(os.path.join(crashed, "metrics.jsonl")) as f:
        assert [json.loads(r)["epoch"] for r in f] == [1, 2, 3, 4]
    with (
        open(os.path.join(out, "results.json")) as f1,
        open(os.path.join(crashed, "results.json")) as f2,
    ):
        a, b = json.load(f1), json.load(f2)
    assert a["selection"] == b["selection"] and a["splits"] == b["splits"]


def test_resume_without_checkpoint_is_a_clear_error(tiny, capsys):  # noqa: F811
    root, out = tiny
    os.makedirs(out)
    assert train.main(tiny_argv(root, out, flags=("--resume", out))) == 1
    assert "Nothing to resume" in capsys.readouterr().err
