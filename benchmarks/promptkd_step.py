"""PromptKD step time, peak memory and evaluation speed: this project against the official code.

At real sizes (ViT-B/16 student, ViT-L/14 teacher, 4-token prompts of depth 9, random
weights with the real shapes, nothing downloaded), each variant builds its models from
weight files (see ``promptkd_models.py``) and times training steps or test batches:

* ``train-ours``: teacher in ``--teacher-precs`` (each one a run), text features stored;
  with ``--checkpointing off,on`` also with the student's blocks recomputed in the backward
  (``MODEL.GRAD_CHECKPOINTING``), one run each;
* ``train-official``: the teacher text tower re-run on every step;
* ``train-views``: stored teacher views (``TRAINER.PROMPTKD.STORED_VIEWS``): the teacher is
  never loaded; each step replays the batch's stored view parameters on in-memory images
  (``StoredViewDataset``: ``ReplayTransform.apply`` on random uint8 PIL images of
  ``--source-size`` px) and reads their stored teacher features (``--view-dtype``, width
  of the teacher) from a memory-mapped ``ShardedStore`` of random values written once
  into ``--files`` (``--bank-images`` images x ``--views`` views); the replay and read are
  timed apart as well (a live loader pays the augmentation too, in its workers);
* ``eval-ours``: the student and the stored class features only;
* ``eval-official``: the teacher (text and image) run for every test batch as well.

Each variant runs in its own process, so its peak resident memory (``ru_maxrss``, which
includes loading) is its own. Times are per step after one warm-up; on a shared CPU the
CPU time per step is the robust figure. Usage::

    python benchmarks/promptkd_step.py [--steps 2] [--classes 100] [--batch 8]
        [--eval-batch 8] [--device cpu] [--prec fp32] [--teacher-precs fp32,bf16]
        [--checkpointing off,on] [--views 20] [--bank-images 512] [--source-size 224]
        [--view-dtype float16] [--json out.json]
        [--variants train-ours,train-official,train-views,eval-ours,eval-official]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.promptkd_models import (  # noqa: E402
    PAIRS,
    SHAPES,
    Pair,
    build_official,
    build_ours,
    make_files,
)
from dassl_ext.config import get_cfg_default, merge_from_file  # noqa: E402
from dassl_ext.data.splits import Datum  # noqa: E402
from dassl_ext.data.views import (  # noqa: E402
    PARAMS_PER_VIEW,
    ReplayTransform,
    StoredViewDataset,
    draw_views,
    views_for_epoch,
)
from dassl_ext.engine import resolve_frozen_precision, resolve_precision  # noqa: E402
from dassl_ext.engine.trainer import enable_grad_checkpointing  # noqa: E402
from dassl_ext.modeling.tiny import build_tiny_clip  # noqa: E402
from dassl_ext.utils.shard_store import ArraySpec, ShardedStore  # noqa: E402
from trainers.losses import kd_loss  # noqa: E402
from trainers.promptkd_teacher import teacher_text_features  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the input block of every PromptKD config (random_resized_crop, random_flip, normalize)
INPUT_CFG = os.path.join(REPO, "configs", "trainers", "_base_", "prompt_sgd.yaml")
BANK_SHARD_IMAGES = 128  # train-views: images per shard of the benchmark's bank
SOURCE_IMAGES = 16  # train-views: distinct random images behind the rows (row i: i % 16)
VARIANTS = ("train-ours", "train-official", "train-views", "eval-ours", "eval-official")
NAMES = {
    "train-ours": "train step, stored text features",
    "train-official": "train step, teacher text every step (official)",
    "train-views": "train step, stored teacher views",
    "eval-ours": "eval, student + stored features",
    "eval-official": "eval, + teacher forward (official)",
}


def run_variant(args: argparse.Namespace) -> dict:
    """Build and time one variant in this process; seconds per step, memory."""
    torch.set_num_threads(os.cpu_count() or 1)
    device, pair = torch.device(args.device), PAIRS[args.pair]
    prec = resolve_precision(args.prec, device)
    t_prec = resolve_frozen_precision(args.teacher_prec or args.prec, device)
    training = args.variant.startswith("train")
    from_views = args.variant == "train-views"
    t0, c0 = time.perf_counter(), time.process_time()
    if args.variant.endswith("official"):
        m = build_official(args.files, pair, args.classes, prec)
    else:  # stored views: no teacher; its text features come from the cache (random here)
        with_teacher = training and not from_views
        m = build_ours(args.files, pair, args.classes, prec, t_prec, with_teacher=with_teacher)
        if args.ckpt == "on":  # as MODEL.GRAD_CHECKPOINTING does in register_model
            enable_grad_checkpointing(m.student)
    views = StoredViews(args, pair, device) if from_views else None
    build_sec, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    build_peak_mb = peak_rss_mb()
    gc.collect()
    reset_peak_memory(device)  # from here: what the steps keep and use, not the loading
    student, teacher, feats = m.student, m.teacher, m.class_features
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.005)
    scaler = torch.amp.GradScaler(device.type, enabled=prec.use_scaler)
    batch = args.batch if training else args.eval_batch
    images = torch.randn(batch, 3, pair.size, pair.size, device=device)

    def teacher_logits() -> torch.Tensor:
        text = feats
        if m.recompute_text:
            text = teacher_text_features(teacher, args.classes, m.teacher_prec, args.classes)
        with torch.no_grad(), m.teacher_prec.autocast():
            img = teacher.image_features(images).float()
        return teacher.logit_scale.float().exp() * img @ text.t()

    def step() -> None:
        if training:
            student.train()
            if views is not None:  # the batch's replayed views and the teacher's features
                x, t_feats = views.batch()
                t_logits = views.logit_scale.exp() * t_feats @ feats.t()
            else:
                x, t_logits = images, teacher_logits()
            with prec.autocast():
                s_logits = student(x, feats)
            loss = 1000.0 * kd_loss(s_logits.float(), t_logits)
            opt.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            student.eval()
            with torch.no_grad():
                if teacher is not None:  # the official test runs the teacher as well
                    teacher_logits()
                with prec.autocast():
                    student(images, feats).argmax(dim=1)

    step()  # warm-up
    _sync(device)
    if views is not None:
        views.data_sec = views.data_cpu_sec = 0.0
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    _sync(device)
    sec = (time.perf_counter() - t0) / args.steps
    if views is not None:
        t_name = f"views {args.view_dtype}"
    else:
        t_name = m.teacher_prec.effective if teacher is not None else ""
    return {
        "variant": args.variant,
        "teacher_prec": t_name,
        "grad_ckpt": args.ckpt,
        "batch": batch,
        "sec_per_step": sec,
        "cpu_sec_per_step": (time.process_time() - c0) / args.steps,
        "images_per_sec": batch / sec,
        "build_sec": build_sec,
        "build_cpu_sec": build_cpu,
        "peak_rss_mb": max(build_peak_mb, peak_rss_mb()),  # the whole process, loading included
        "step_rss_mb": peak_rss_mb(),  # the steps only (Linux; else the whole process)
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0,
        # stored views: the replay of the crops and the read of the features, per step
        "data_sec_per_step": views.data_sec / args.steps if views else 0.0,
        "data_cpu_sec_per_step": views.data_cpu_sec / args.steps if views else 0.0,
    }


def teacher_width(pair: Pair) -> int:
    """The teacher's embedding width: what a bank stores per view."""
    if pair.teacher in SHAPES:
        return SHAPES[pair.teacher][0]
    return int(build_tiny_clip(pair.teacher)["text_projection"].shape[1])


def replay_transform(size: int) -> ReplayTransform:
    """The train transform of the PromptKD configs at ``size`` px, replayable."""
    cfg = get_cfg_default()
    merge_from_file(cfg, INPUT_CFG)
    cfg.INPUT.SIZE = (size, size)
    return ReplayTransform.from_cfg(cfg)


def view_bank(args: argparse.Namespace, pair: Pair) -> ShardedStore:
    """The benchmark's bank in ``--files``: ``--bank-images`` x ``--views`` views of
    ``--source-size`` px images (parameters drawn as a real build draws them) and random
    unit-length teacher features in ``--view-dtype``."""
    k, n, width, src = args.views, args.bank_images, teacher_width(pair), args.source_size
    folder = os.path.join(args.files, f"views_n{n}_k{k}_e{width}_{args.view_dtype}_s{src}")
    arrays = [
        ArraySpec("params", (k, PARAMS_PER_VIEW), "int32"),
        ArraySpec("features", (k, width), args.view_dtype),
    ]
    meta = {"benchmark": "promptkd_step", "image_size": pair.size, "source_size": src}
    return ShardedStore(folder, n, arrays, BANK_SHARD_IMAGES, meta)


def make_view_bank(args: argparse.Namespace, pair: Pair) -> None:
    """Write the benchmark's bank (if it is not complete already)."""
    store = view_bank(args, pair)
    if store.is_complete():
        return
    replay, k, width = replay_transform(pair.size), args.views, teacher_width(pair)
    gen = torch.Generator().manual_seed(0)

    def compute(start: int, stop: int) -> dict[str, torch.Tensor]:
        params = [draw_views(replay, args.source_size, args.source_size, 1, i, k)
                  for i in range(start, stop)]  # fmt: skip
        feats = torch.randn(stop - start, k, width, generator=gen)
        return {"params": torch.stack(params),
                "features": torch.nn.functional.normalize(feats, dim=-1)}  # fmt: skip

    store.build(compute, progress=None)
    store.finish()


class _InMemoryImages:
    """image_reader's stand-in: the path is the row's number; random uint8 PIL images of
    ``size`` px (no decoding: the live loader decodes as well)."""

    def __init__(self, size: int) -> None:
        rng = np.random.default_rng(0)
        self.images = [
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
            for _ in range(SOURCE_IMAGES)
        ]

    def __call__(self, path: str) -> Image.Image:
        return self.images[int(path) % len(self.images)]


class StoredViews:
    """The train-views batches: per step ``--batch`` random images of the bank, the view
    each uses in that step's epoch (``views_for_epoch``), replayed and read through
    ``StoredViewDataset`` as a student run does; times the replay and read apart."""

    def __init__(self, args: argparse.Namespace, pair: Pair, device: torch.device) -> None:
        arrays = view_bank(args, pair).open()
        n = args.bank_images
        data = [Datum(impath=str(i)) for i in range(n)]
        self.dataset = StoredViewDataset(
            data, replay_transform(pair.size), _InMemoryImages(args.source_size),
            arrays["params"], arrays["features"],
        )  # fmt: skip
        self.n, self.k, self.batch_size, self.device = n, args.views, args.batch, device
        self.rng, self.epoch = np.random.default_rng(1), 0
        self.logit_scale = torch.tensor(np.log(100.0), device=device)  # CLIP's, stored
        self.data_sec = self.data_cpu_sec = 0.0

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, 3, S, S), teacher features (B, E) float) of the next step."""
        t0, c0 = time.perf_counter(), time.process_time()
        index = self.rng.choice(self.n, self.batch_size, replace=False)
        view = views_for_epoch(1, self.epoch, index, self.k)
        self.epoch += 1
        items = [self.dataset[(i, v)] for i, v in zip(index.tolist(), view.tolist())]
        images = torch.stack([it["img"] for it in items]).to(self.device)
        feats = torch.stack([it["view_features"] for it in items]).to(self.device).float()
        self.data_sec += time.perf_counter() - t0
        self.data_cpu_sec += time.process_time() - c0
        return images, feats


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak-memory count afresh: CUDA's allocator statistics, and on Linux the
    process's ``VmHWM`` (writing 5 to ``/proc/self/clear_refs`` resets it to the current
    resident size)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` where Linux has it (``ru_maxrss`` keeps
    the parent's resident size at the fork, which would hide a smaller child), else
    ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def child_argv(args: argparse.Namespace, variant: str, teacher_prec: str, ckpt: str) -> list[str]:
    """The command line of one variant's process."""
    return [
        sys.executable, os.path.abspath(__file__), "--variant", variant, "--steps",
        str(args.steps), "--classes", str(args.classes), "--batch", str(args.batch),
        "--eval-batch", str(args.eval_batch), "--device", args.device, "--prec", args.prec,
        "--teacher-prec", teacher_prec, "--pair", args.pair, "--files", args.files,
        "--ckpt", ckpt, "--views", str(args.views), "--bank-images", str(args.bank_images),
        "--source-size", str(args.source_size), "--view-dtype", args.view_dtype,
    ]  # fmt: skip


def plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(variant, teacher precision, checkpointing) per process: train-ours once per teacher
    precision and checkpointing setting."""
    runs = []
    for variant in args.variants:
        if variant == "train-ours":
            runs += [(variant, p, c) for c in args.checkpointing for p in args.teacher_precs]
        elif variant == "train-views":
            runs += [(variant, "", c) for c in args.checkpointing]
        else:
            runs.append((variant, "", "off"))
    return runs


def format_table(results: list[dict], args: argparse.Namespace) -> str:
    """The results as a table, then the ratios between variants (CPU time on a CPU)."""
    from tabulate import tabulate

    mem = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    key = "sec_per_step" if args.device.startswith("cuda") else "cpu_sec_per_step"
    rows = [
        [NAMES[r["variant"]], r["teacher_prec"] or "-", r["grad_ckpt"], r["batch"],
         f"{r['sec_per_step']:.3f}",
         f"{r['cpu_sec_per_step']:.3f}", f"{r['images_per_sec']:.1f}", f"{r[mem]:.0f}",
         f"{r.get('step_rss_mb', 0):.0f}", f"{r['build_sec']:.1f}"]
        for r in results
    ]  # fmt: skip
    head = ["variant", "teacher", "ckpt", "batch", "s/step", "CPU s/step", "images/s", mem[:-3],
            "steps_rss", "build s"]  # fmt: skip
    lines = [
        f"PromptKD {PAIRS[args.pair].student} <- {PAIRS[args.pair].teacher}, {args.classes} "
        f"classes, {args.device}, student {args.prec}, {args.steps} timed steps",
        tabulate(rows, headers=head),
    ]
    by = {(r["variant"], r["teacher_prec"], r["grad_ckpt"]): r for r in results}
    official = next((r for r in results if r["variant"] == "train-official"), None)
    ours = [r for r in results if r["variant"] == "train-ours"]
    what = "time" if key == "sec_per_step" else "CPU time"
    for r in ours:
        if official:
            lines.append(
                f"train step {what}, ours (teacher {r['teacher_prec']}, checkpointing "
                f"{r['grad_ckpt']}) / official: "
                f"{r[key] / official[key]:.3f}x; peak memory {r[mem] / official[mem]:.2f}x"
                + (f", during the steps {r['step_rss_mb'] / official['step_rss_mb']:.2f}x"
                   if mem == "peak_rss_mb" and official.get("step_rss_mb") else "")
            )  # fmt: skip
    if ("train-ours", "fp32", "off") in by and ("train-ours", "bf16", "off") in by:
        ratio = by["train-ours", "fp32", "off"][key] / by["train-ours", "bf16", "off"][key]
        lines.append(f"train step {what}, teacher fp32 / teacher bf16: {ratio:.2f}x")
    for p in args.teacher_precs:
        if ("train-ours", p, "off") in by and ("train-ours", p, "on") in by:
            off, on = by["train-ours", p, "off"], by["train-ours", p, "on"]
            lines.append(
                f"checkpointing on / off (teacher {p}): step {what} {on[key] / off[key]:.2f}x, "
                f"peak memory {on[mem] / off[mem]:.2f}x"
            )
    lines += views_lines(results, key, mem, what)
    es, eo = (
        by.get(("eval-ours", "", "off")),
        next((r for r in results if r["variant"] == "eval-official"), None),
    )
    if es and eo:
        lines.append(
            f"eval speed, student-only / official: {eo[key] / es[key]:.1f}x; "
            f"peak memory {es[mem] / eo[mem]:.2f}x"
        )
    return "\n".join(lines)


def views_lines(results: list[dict], key: str, mem: str, what: str) -> list[str]:
    """Stored views against the official step (the issue's targets: <= 0.30x step, <= 0.40x
    peak memory) and against ours with the teacher at every step."""
    lines = []
    for views in (r for r in results if r["variant"] == "train-views"):
        lines += _views_lines(views, results, key, mem, what)
    return lines


def _views_lines(views: dict, results: list[dict], key: str, mem: str, what: str) -> list[str]:
    lines = []
    data_key = "data_sec_per_step" if key == "sec_per_step" else "data_cpu_sec_per_step"
    official = next((r for r in results if r["variant"] == "train-official"), None)
    if views["grad_ckpt"] == "on":
        what += " (stored views with MODEL.GRAD_CHECKPOINTING)"
    if official:
        step, peak = views[key] / official[key], views[mem] / official[mem]
        lines.append(
            f"train step {what}, stored views / official: {step:.3f}x "
            f"({(views[key] - views.get(data_key, 0.0)) / official[key]:.3f}x without the "
            f"views' replay and read, {views.get(data_key, 0.0):.3f} s/step, which a live "
            f"loader's augmentation costs as well); peak memory {peak:.2f}x"
            + (f", during the steps {views['step_rss_mb'] / official['step_rss_mb']:.2f}x"
               if mem == "peak_rss_mb" and official.get("step_rss_mb") else "")
            + "; target <= 0.30x step, <= 0.40x memory: "
            + ("met" if step <= 0.30 and peak <= 0.40 else "NOT met")
        )  # fmt: skip
    for r in results:
        if r["variant"] == "train-ours" and r["grad_ckpt"] == "off":
            lines.append(
                f"train step {what}, stored views / ours (teacher {r['teacher_prec']}): "
                f"{views[key] / r[key]:.3f}x; peak memory {views[mem] / r[mem]:.2f}x"
            )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2, help="timed steps per variant (after 1 warm-up)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=8, help="training batch")
    p.add_argument("--eval-batch", type=int, default=None, help="test batch (default: --batch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prec", default="fp32", help="the student's precision (PREC)")
    p.add_argument("--teacher-precs", default=None, type=_names,
                   help='teacher precisions of train-ours, one run each (default: "fp32,bf16" '
                        'with an fp32 student, else the student\'s)')  # fmt: skip
    p.add_argument("--checkpointing", default=["off"], type=_names,
                   help='"off", "on" or "off,on": train-ours without / with the student\'s '
                        "blocks recomputed in the backward")  # fmt: skip
    p.add_argument("--variants", default=list(VARIANTS), type=_names)
    p.add_argument("--pair", default="real", choices=sorted(PAIRS))
    p.add_argument("--files", default=os.path.join(tempfile.gettempdir(), "promptkd_bench"),
                   help="folder of the weight files (written once)")  # fmt: skip
    p.add_argument("--views", type=int, default=20,
                   help="train-views: views per image in the bank (K)")  # fmt: skip
    p.add_argument("--bank-images", type=int, default=512,
                   help="train-views: images in the bank (random rows per step)")  # fmt: skip
    p.add_argument("--source-size", type=int, default=None,
                   help="train-views: side of the images the views are replayed on (default: "
                        "the input size)")  # fmt: skip
    p.add_argument("--view-dtype", default="float16", choices=("float16", "bfloat16", "float32"),
                   help="train-views: the stored teacher features' dtype")  # fmt: skip
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    p.add_argument("--teacher-prec", default="", help=argparse.SUPPRESS)  # child process
    p.add_argument("--ckpt", default="off", help=argparse.SUPPRESS)  # child process
    p.add_argument("--make-files", action="store_true", help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    args.eval_batch = args.eval_batch or args.batch
    args.source_size = args.source_size or PAIRS[args.pair].size
    if args.views < 1 or args.bank_images < args.batch:
        p.error("--views must be at least 1 and --bank-images at least --batch")
    if args.teacher_precs is None:
        args.teacher_precs = ["fp32", "bf16"] if args.prec == "fp32" else [args.prec]
    if any(c not in ("off", "on") for c in args.checkpointing):
        p.error("--checkpointing takes off, on or off,on")
    bad = [v for v in args.variants if v not in VARIANTS]
    if bad:
        p.error(f"unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    return args


def _names(text: str) -> list[str]:
    return [t for t in text.split(",") if t]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args)))
        return 0
    if args.make_files:
        make_files(args.files, PAIRS[args.pair])
        if "train-views" in args.variants:
            make_view_bank(args, PAIRS[args.pair])
        return 0
    # in a child too: this process stays small, so it cannot inflate the children's peaks
    subprocess.run([sys.executable, os.path.abspath(__file__), "--make-files", "--pair",
                    args.pair, "--files", args.files, "--variants", ",".join(args.variants),
                    "--views", str(args.views), "--bank-images", str(args.bank_images),
                    "--source-size", str(args.source_size), "--view-dtype", args.view_dtype,
                    "--batch", str(args.batch)], check=True)  # fmt: skip
    results = []
    for variant, teacher_prec, ckpt in plan(args):
        cmd = child_argv(args, variant, teacher_prec, ckpt)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"variant {variant} failed (exit {done.returncode})")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"done: {variant} {teacher_prec} {ckpt}", file=sys.stderr, flush=True)
    print(format_table(results, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "results": results}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
