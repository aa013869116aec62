"""torchrun on the CPU (gloo): N processes compute what one process computes.

Rank 0 runs in this process and the other ranks in spawned ones (one slow torch import
fewer). Checks: the same weights at the same global batch (the PromptKD projector's
BatchNorm included), per-rank batches with the LR scaled, evaluation gathered once per image,
only rank 0 writes, a run resumed under another number of processes, and a dead process
stopping the others with one clear sentence.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_engine_tiny import final_weights, register_tiny, tiny, tiny_argv  # noqa: F401
from test_promptkd import student_argv
from test_trainer_all import CONFIGS, argv

import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One full-batch step per epoch: 16 images as 1 x 16 or as 2 ranks x 8; no random flips.
OPTS = ("INPUT.TRANSFORMS", "['normalize']", "TEST.FINAL_MODEL", "best_val", "OPTIM.LR", "0.1")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def _record_writes(out_dir: str) -> list[str]:
    """Audit hook: every file this process opens for writing, renames, creates or removes
    under ``out_dir`` is appended to the returned list."""
    seen: list[str] = []
    out_dir = os.path.realpath(out_dir)

    def under(path) -> bool:
        try:
            return os.path.realpath(os.fsdecode(path)).startswith(out_dir)
        except (TypeError, ValueError):
            return False

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1] or "", args[2] or 0
            writing = any(c in str(mode) for c in "wax+") or (flags & WRITE_FLAGS)
            if writing and under(args[0]):
                seen.append(f"open {args[0]}")
        elif event in ("os.rename", "os.mkdir", "os.remove") and under(args[0]):  # os.replace too
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


def run_ranks(argv: list[str], monkeypatch, world_size: int = 2, record: str = "") -> None:
    """``train.main(argv)`` as ``world_size`` gloo processes; every one must exit 0."""
    port = _free_port()
    ctx = mp.get_context("spawn")
    children = [
        ctx.Process(target=_spawned, args=(r, world_size, port, argv, record))
        for r in range(1, world_size)
    ]
    for child in children:
        child.start()
    try:
        with monkeypatch.context() as m:
            for k, v in _torchrun_env(0, world_size, port).items():
                m.setenv(k, v)
            assert train.main(argv) == 0
        for child in children:
            child.join(timeout=180)
            assert child.exitcode == 0
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
    assert not dist.is_initialized()  # train.main leaves no process group behind


def _spawned(rank: int, world_size: int, port: int, argv: list[str], record: str) -> None:
    os.environ.update(_torchrun_env(rank, world_size, port))
    torch.set_num_threads(1)
    register_tiny()
    seen = _record_writes(argv[argv.index("--output-dir") + 1]) if record else []
    code = train.main(argv)
    if record:
        found = list(seen)  # before the write below (outside the output folder anyway)
        with open(record, "w") as f:
            json.dump(found, f)
    sys.exit(code)


def _results(out: str) -> dict:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def test_two_gloo_ranks_match_one_process(tiny, monkeypatch, tmp_path):  # noqa: F811
    root, out = tiny
    single, ddp, per_rank = out + "_1", out + "_2", out + "_2r"
    batch16 = ("DATALOADER.TRAIN_X.BATCH_SIZE", "16")
    assert train.main(tiny_argv(root, single, *OPTS, *batch16)) == 0
    record = str(tmp_path / "rank1_writes.json")
    run_ranks(tiny_argv(root, ddp, *OPTS, *batch16), monkeypatch, record=record)

    w1, w2 = final_weights(single, 2), final_weights(ddp, 2)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=0, atol=1e-6)
    r1, r2 = _results(single), _results(ddp)
    assert r1["splits"]["test"] == r2["splits"]["test"]  # gathered: all 12 test images once
    assert r2["splits"]["test"]["num_images"] == 12
    assert r1["selection"] == r2["selection"]
    assert (r1["world_size"], r1["global_batch"]) == (1, 16)
    assert (r2["world_size"], r2["global_batch"]) == (2, 16)
    with open(os.path.join(ddp, "log.txt")) as f:
        assert "[rank 1]" not in f.read()  # rank 0 alone writes the log
    with open(record) as f:
        assert json.load(f) == []  # rank 1 wrote nothing in the output folder
    assert sorted(os.listdir(single)) == sorted(os.listdir(ddp))

    # Per-rank batches: 2 x 8 images at LR 0.05 x 2 processes = one process, 16 at 0.1.
    per = ("DATALOADER.TRAIN_X.BATCH_SIZE", "8", "DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK", "True")
    run_ranks(tiny_argv(root, per_rank, *OPTS, *per, "OPTIM.LR", "0.05"), monkeypatch)
    w3 = final_weights(per_rank, 2)
    for k in w1:
        torch.testing.assert_close(w1[k], w3[k], rtol=0, atol=1e-6)
    assert _results(per_rank)["global_batch"] == 16


KD_OPTS = (
    "TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP", "INPUT.TRANSFORMS", "['normalize']",
    "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "8",
    "TEST.SAVE_LOGITS", "True", "TRAINER.PROMPTKD.KD_WEIGHT", "1", "OPTIM.WARMUP_EPOCH", "0",
)  # fmt: skip
# KD weight 1, no warm-up: the prompts move by ~0.15 per epoch while rounding (another thread
# count) moves them by ~2e-7; at the paper's weight 1000 rounding alone grows to ~4e-4.


def _state(out: str, epoch: int) -> dict:
    path = os.path.join(out, "VLPromptLearner", f"model.pth.tar-{epoch}")
    return torch.load(path, weights_only=True)["state_dict"]


def test_promptkd_two_ranks_batchnorm_and_resume_on_one(
    digits_root, tiny_clip_root, tmp_path, monkeypatch
):
    """PromptKD (its projector has a BatchNorm) on 2 ranks = 1 process, to 1e-5, after each of
    2 epochs of 2 steps; the 2-rank run's epoch 1 resumed by ONE process gives epoch 2 again."""
    one, two, resumed = tmp_path / "one", tmp_path / "two", tmp_path / "resumed"
    argv = lambda out: student_argv(digits_root, tiny_clip_root, out, "", *KD_OPTS)  # noqa: E731
    assert train.main(argv(one)) == 0
    run_ranks(argv(two), monkeypatch)

    moved = max((_state(one, 2)[k] - v).abs().max().item() for k, v in _state(one, 1).items())
    assert moved > 0.05  # the weights compared below did change
    for epoch in (1, 2):
        a, b = _state(one, epoch), _state(two, epoch)
        assert any("running_var" in k for k in a)  # BatchNorm statistics are compared too
        for k in a:
            torch.testing.assert_close(
                a[k], b[k], rtol=0, atol=1e-5, msg=lambda m, k=k, e=epoch: f"{k} @ {e}: {m}"
            )
    for split in ("base", "new"):
        ra, rb = _results(one)["splits"][split], _results(two)["splits"][split]
        assert ra["num_images"] == rb["num_images"] and ra["accuracy"] == rb["accuracy"]
        logits = torch.load(two / f"logits_{split}.pt", weights_only=True)
        assert len(set(logits["impaths"])) == len(logits["impaths"]) == rb["num_images"]

    shutil.copytree(two, resumed)  # stopped after epoch 1: drop what epoch 2 wrote
    os.remove(resumed / "VLPromptLearner" / "model.pth.tar-2")
    assert train.main(["--resume", str(resumed), *argv(resumed)]) == 0
    a, c = _state(one, 2), _state(resumed, 2)
    for k in a:
        torch.testing.assert_close(a[k], c[k], rtol=0, atol=1e-5, msg=k)


def test_promptkd_two_ranks_with_checkpointing_match_one_without(
    digits_root, tiny_clip_root, tmp_path, monkeypatch
):
    """MODEL.GRAD_CHECKPOINTING under DDP: the recomputed blocks' gradients are averaged
    like the kept ones (2 ranks with it = 1 process without, to 1e-5, after 1 epoch). Only
    the weights are compared: no evaluation (TEST.NO_TEST), which was most of the time."""
    one, two = tmp_path / "one", tmp_path / "two"
    opts = (*KD_OPTS, "OPTIM.MAX_EPOCH", "1", "TEST.NO_TEST", "True")
    assert train.main(student_argv(digits_root, tiny_clip_root, one, "", *opts)) == 0
    ckpt = ("MODEL.GRAD_CHECKPOINTING", "True")
    run_ranks(student_argv(digits_root, tiny_clip_root, two, "", *opts, *ckpt), monkeypatch)
    a, b = _state(one, 1), _state(two, 1)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


DYING_WORKER = """
import os, sys
sys.path[:0] = [{repo!r}, {tests!r}]
import torch
torch.set_num_threads(1)
import train
from test_engine_tiny import TinyEngineTrainer, register_tiny
register_tiny()
if os.environ["RANK"] == "1":
    step = TinyEngineTrainer.forward_backward
    calls = []
    def dying(self, batch):
        calls.append(1)
        if len(calls) == 2:
            os._exit(3)  # as a killed or crashed process: no message, no cleanup
        return step(self, batch)
    TinyEngineTrainer.forward_backward = dying
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_dead_rank_stops_the_others_with_one_sentence(tiny, tmp_path):  # noqa: F811
    root, out = tiny
    script = tmp_path / "worker.py"
    script.write_text(DYING_WORKER.format(repo=REPO, tests=os.path.join(REPO, "tests")))
    argv = tiny_argv(root, out, *OPTS, "DIST.TIMEOUT", "60", epochs=3)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *argv],
            env={**os.environ, **_torchrun_env(r, 2, port)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    start = time.time()
    try:
        _, err0 = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert time.time() - start < 120
    assert procs[1].wait() == 3
    assert procs[0].returncode == 1, err0
    lines = [ln for ln in err0.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Process 0 of 2 lost the others" in lines[0], err0
    assert "Traceback" not in err0


@pytest.mark.parametrize("world", [2, 3])
def test_sync_batchnorm_matches_batchnorm_on_the_whole_batch(world):
    """Forward, input and parameter gradients, running statistics: SyncBatchNorm over
    ``world`` gloo processes (uneven shares) = BatchNorm1d on the concatenated batch."""
    torch.manual_seed(0)
    x = torch.randn(7, 5, 3) * 3 + 1
    grad_out = torch.randn(7, 5, 3)
    bn = torch.nn.BatchNorm1d(5)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-1, 1)
    xr = x.clone().requires_grad_(True)
    bn.train()(xr).backward(grad_out)
    expected = {
        "x_grad": xr.grad,
        "weight_grad": bn.weight.grad,
        "bias_grad": bn.bias.grad,
        "running_mean": bn.running_mean,
        "running_var": bn.running_var,
    }
    port = _free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    args = (world, port, x, grad_out, bn.weight.data, bn.bias.data, queue)
    procs = [ctx.Process(target=_sync_bn_rank, args=(r, *args)) for r in range(world)]
    for p in procs:
        p.start()
    got = [queue.get() for _ in range(world)]
    got = [{k: v if k == "rank" else torch.tensor(v) for k, v in g.items()} for g in got]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    got.sort(key=lambda g: g["rank"])
    x_grad = torch.cat([g["x_grad"] for g in got])
    torch.testing.assert_close(x_grad, expected["x_grad"], rtol=1e-5, atol=1e-6)
    # DDP averages parameter gradients over ranks; SyncBN's are per-rank partial sums
    for name in ("weight_grad", "bias_grad"):
        total = sum(g[name] for g in got)
        torch.testing.assert_close(total, expected[name], rtol=1e-5, atol=1e-6)
    for g in got:
        for name in ("running_mean", "running_var"):
            torch.testing.assert_close(g[name], expected[name], rtol=1e-5, atol=1e-6)


def _sync_bn_rank(rank, world, port, x, grad_out, weight, bias, queue) -> None:
    from dassl_ext.engine.ddp import convert_sync_batchnorm

    os.environ.update(_torchrun_env(rank, world, port))
    dist.init_process_group("gloo")
    try:
        model = torch.nn.Sequential(torch.nn.BatchNorm1d(5))
        bn = model[0]
        bn.weight.data.copy_(weight)
        bn.bias.data.copy_(bias)
        param = bn.weight
        convert_sync_batchnorm(model)
        assert model[0].weight is param  # the same Parameter: an optimizer keeps working
        share = torch.tensor_split(torch.arange(x.shape[0]), world)[rank]
        xr = x[share].clone().requires_grad_(True)
        model.train()(xr).backward(grad_out[share])
        sbn = model[0]
        # Plain lists, not tensors: a tensor crosses the queue as a shared-memory handle
        # that this process must outlive, and it exits right after.
        found = {"x_grad": xr.grad, "weight_grad": sbn.weight.grad, "bias_grad": sbn.bias.grad,
                 "running_mean": sbn.running_mean, "running_var": sbn.running_var}  # fmt: skip
        queue.put({"rank": rank, **{k: v.tolist() for k, v in found.items()}})
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", ["CoOp", "CoCoOp", "PromptSRC"])
def test_prompt_trainers_on_two_ranks_match_one_process(
    name, digits_root, tiny_clip_root, tmp_path, monkeypatch
):
    """The training forward runs through DDP: 2 ranks x 2 images = 1 x 4 after 2 steps.
    CoOp and CoCoOp save only their prompt learner but train through the whole CLIP (and
    CoCoOp's meta-net); PromptSRC takes logits and features from one forward, then averages
    its prompts (GPA). IVLP and MaPLe take CoOp's path. Tolerance: with the tiny CLIP's logit
    scale of 100, another thread count alone moves CoOp's context by 1.8e-5. The 5 base
    classes x 2 shots (10 images, as 10 x 1 would be) keep the 2 steps and halve the test
    split (271 images): CoCoOp's evaluation, a text forward per image and class, was most of
    the time."""
    opts = ("INPUT.TRANSFORMS", "['normalize']", "OPTIM.WARMUP_EPOCH", "0",
            "DATASET.SUBSAMPLE_CLASSES", "base", "DATASET.NUM_SHOTS", "2")  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main(argv(name, one, digits_root, tiny_clip_root, *opts)) == 0
    run_ranks(argv(name, two, digits_root, tiny_clip_root, *opts), monkeypatch)
    model = CONFIGS[name][1]
    a, b = (torch.load(d / model / "model.pth.tar-1", weights_only=True)["state_dict"]
            for d in (one, two))  # fmt: skip
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
    assert _results(one)["splits"]["test"] == _results(two)["splits"]["test"]
    assert _results(two)["splits"]["test"]["num_images"] == 271  # gathered: each image once
