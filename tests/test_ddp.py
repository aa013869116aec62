"""A 2-process gloo run (torchrun environment) agrees with one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_engine_tiny import final_weights, register_tiny, tiny, tiny_argv  # noqa: F401

import train

# One full-batch step per epoch: 16 images as 1 x 16 or as 2 ranks x 8; no random flips.
OPTS = ("INPUT.TRANSFORMS", "['normalize']", "TEST.FINAL_MODEL", "best_val", "OPTIM.LR", "0.1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _worker(rank: int, world_size: int, port: int, argv: list[str]) -> None:
    os.environ.update(_torchrun_env(rank, world_size, port))
    torch.set_num_threads(1)
    register_tiny()
    sys.exit(train.main(argv))


def test_two_gloo_ranks_match_one_process(tiny, monkeypatch):  # noqa: F811
    root, out = tiny
    single, ddp = out + "_1", out + "_2"
    assert train.main(tiny_argv(root, single, *OPTS, "DATALOADER.TRAIN_X.BATCH_SIZE", "16")) == 0
    argv = tiny_argv(root, ddp, *OPTS, "DATALOADER.TRAIN_X.BATCH_SIZE", "8")
    # Rank 1 in a fresh process, rank 0 in this one (saves a second slow torch import).
    port = _free_port()
    child = mp.get_context("spawn").Process(target=_worker, args=(1, 2, port, argv))
    child.start()
    try:
        for k, v in _torchrun_env(0, 2, port).items():
            monkeypatch.setenv(k, v)
        assert train.main(argv) == 0
        child.join(timeout=120)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()

    w1, w2 = final_weights(single, 2), final_weights(ddp, 2)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-6)
    with (
        open(os.path.join(single, "results.json")) as f1,
        open(os.path.join(ddp, "results.json")) as f2,
    ):
        r1, r2 = json.load(f1), json.load(f2)
    assert r1["splits"]["test"] == r2["splits"]["test"]  # gathered: all 12 test images
    assert r1["selection"] == r2["selection"]
    assert not dist.is_initialized()  # train.main leaves no process group behind
    with open(os.path.join(ddp, "log.txt")) as f:
        assert "[rank 1]" not in f.read()  # rank 0 alone writes the log
