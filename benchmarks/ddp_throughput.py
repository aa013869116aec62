"""PromptKD training throughput on N torchrun processes against one, at the same global batch.

Each count in ``--procs`` is one ``torchrun --standalone`` job (gloo on the CPU, NCCL with
``--device cuda``) running the real training path: train.py's config, the DataManager's
global batches split over the ranks, DistributedDataParallel and SyncBatchNorm. The model is
the demo's: the pretrained ``digits-student`` distilled from a zero-shot ``digits-teacher``
on the built-in Digits (32 px), so nothing is downloaded. On the CPU each process gets
``cores // N`` threads, so every row uses the whole machine. Timed: ``--steps`` training
steps (data loading included) after ``--warmup`` steps. Usage::

    python benchmarks/ddp_throughput.py [--procs 1,2] [--batch 64] [--steps 20] [--warmup 3]
        [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def run_argv(root: str, out: str, batch: int, device: str) -> list[str]:
    """train.py arguments of the measured PromptKD run (the demo's stand-in settings)."""
    return [
        "--root", root, "--seed", "1", "--trainer", "PromptKD", "--output-dir", out,
        "--dataset-config-file", os.path.join(REPO, "configs/datasets/digits.yaml"),
        "--config-file", os.path.join(REPO, "configs/trainers/PromptKD/base2new/digits.yaml"),
        "MODEL.BACKBONE.NAME", "digits-student", "TRAINER.PROMPTKD.TEACHER_NAME",
        "digits-teacher", "TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP",
        "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS", "['random_crop', 'normalize']",
        "INPUT.CROP_PADDING", "2", "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "4",
        "TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT", "4", "DATALOADER.NUM_WORKERS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", str(batch), "USE_CUDA", str(device == "cuda"),
        "TRAINER.PROMPTKD.PREC", "fp16" if device == "cuda" else "fp32",
    ]  # fmt: skip


def worker(args: argparse.Namespace) -> None:
    """One process of a torchrun job: build the trainer, time the steps, rank 0 reports."""
    import torch

    torch.set_num_threads(args.threads)
    import train
    from dassl_ext.config import setup_cfg
    from dassl_ext.engine import build_trainer
    from dassl_ext.utils import set_random_seed
    from dassl_ext.utils.distributed import (
        barrier,
        destroy_distributed,
        get_rank,
        get_world_size,
        init_distributed_from_env,
    )

    train.import_plugins()
    cfg = setup_cfg(train.parse_args(run_argv(args.root, args.out, args.batch, args.device)))
    init_distributed_from_env(use_cuda=args.device == "cuda")
    set_random_seed(1)
    trainer = build_trainer(cfg)
    # train() would build the teacher in its before_train hook when the text features came
    # from the cache (another rank may have written them first); the steps here skip train()
    trainer.ensure_teacher()
    trainer.set_model_mode("train")
    epoch, batches = 0, iter(())
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    start = 0.0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            sync()
            barrier()
            start = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            trainer.dm.set_epoch(epoch)
            epoch += 1
            batches = iter(trainer.train_loader_x)
            batch = next(batches)
        trainer.epoch, trainer.batch_idx = epoch, step
        trainer.forward_backward(batch)
    sync()
    barrier()
    seconds = time.perf_counter() - start
    if get_rank() == 0:
        world = get_world_size()
        row = {
            "procs": world,
            "threads": args.threads,
            "global_batch": trainer.dm.global_batch,
            "per_rank": trainer.dm.global_batch // world,
            "steps": args.steps,
            "s_per_step": seconds / args.steps,
            "img_per_s": trainer.dm.global_batch * args.steps / seconds,
        }
        with open(args.report, "w") as f:
            json.dump(row, f)
    destroy_distributed()


def measure(args: argparse.Namespace, procs: int, root: str) -> dict:
    cores = os.cpu_count() or 1
    threads = 1 if args.device == "cuda" else max(cores // procs, 1)
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "row.json")
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(procs), os.path.abspath(__file__), "--worker",
            "--root", root, "--out", os.path.join(tmp, "out"), "--report", report,
            "--threads", str(threads), "--batch", str(args.batch), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--device", args.device,
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        with open(report) as f:
            return json.load(f)


def table(rows: list[dict]) -> str:
    base = rows[0]["img_per_s"]
    lines = [
        "| processes | threads each | global batch | per rank | s / step | images / s | vs first |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['procs']} | {r['threads']} | {r['global_batch']} | {r['per_rank']} | "
            f"{r['s_per_step']:.3f} | {r['img_per_s']:.1f} | {r['img_per_s'] / base:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    p.add_argument("--batch", type=int, default=64, help="global batch of every row")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--json", default="", help="also write the rows here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--root", "--out", "--report"):
        p.add_argument(hidden, default="", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    from datasets.digits import write_digits

    with tempfile.TemporaryDirectory() as root:
        write_digits(root)
        rows = [measure(args, int(n), root) for n in args.procs.split(",")]
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
