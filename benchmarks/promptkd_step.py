"""PromptKD step time, peak memory and evaluation speed: this project against the official code.

At real sizes (ViT-B/16 student, ViT-L/14 teacher, 4-token prompts of depth 9, random
weights with the real shapes, nothing downloaded), each variant builds its models from
weight files (see ``promptkd_models.py``) and times training steps or test batches:

* ``train-ours``: teacher in ``--teacher-precs`` (each one a run), text features stored;
  with ``--checkpointing off,on`` also with the student's blocks recomputed in the backward
  (``MODEL.GRAD_CHECKPOINTING``), one run each;
* ``train-official``: the teacher text tower re-run on every step;
* ``eval-ours``: the student and the stored class features only;
* ``eval-official``: the teacher (text and image) run for every test batch as well.

Each variant runs in its own process, so its peak resident memory (``ru_maxrss``, which
includes loading) is its own. Times are per step after one warm-up; on a shared CPU the
CPU time per step is the robust figure. Usage::

    python benchmarks/promptkd_step.py [--steps 2] [--classes 100] [--batch 8]
        [--eval-batch 8] [--device cpu] [--prec fp32] [--teacher-precs fp32,bf16]
        [--checkpointing off,on] [--variants train-ours,train-official,eval-ours,eval-official]
        [--json out.json]
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

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.promptkd_models import PAIRS, build_official, build_ours, make_files  # noqa: E402
from dassl_ext.engine import resolve_frozen_precision, resolve_precision  # noqa: E402
from dassl_ext.engine.trainer import enable_grad_checkpointing  # noqa: E402
from trainers.losses import kd_loss  # noqa: E402
from trainers.promptkd_teacher import teacher_text_features  # noqa: E402

VARIANTS = ("train-ours", "train-official", "eval-ours", "eval-official")
NAMES = {
    "train-ours": "train step, stored text features",
    "train-official": "train step, teacher text every step (official)",
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
    t0, c0 = time.perf_counter(), time.process_time()
    if args.variant.endswith("official"):
        m = build_official(args.files, pair, args.classes, prec)
    else:
        m = build_ours(args.files, pair, args.classes, prec, t_prec, with_teacher=training)
        if args.ckpt == "on":  # as MODEL.GRAD_CHECKPOINTING does in register_model
            enable_grad_checkpointing(m.student)
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
            t_logits = teacher_logits()
            with prec.autocast():
                s_logits = student(images, feats)
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
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    _sync(device)
    sec = (time.perf_counter() - t0) / args.steps
    return {
        "variant": args.variant,
        "teacher_prec": m.teacher_prec.effective if teacher is not None else "",
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
    }


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
        "--ckpt", ckpt,
    ]  # fmt: skip


def plan(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(variant, teacher precision, checkpointing) per process: train-ours once per teacher
    precision and checkpointing setting."""
    runs = []
    for variant in args.variants:
        if variant == "train-ours":
            runs += [(variant, p, c) for c in args.checkpointing for p in args.teacher_precs]
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
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    p.add_argument("--teacher-prec", default="", help=argparse.SUPPRESS)  # child process
    p.add_argument("--ckpt", default="off", help=argparse.SUPPRESS)  # child process
    p.add_argument("--make-files", action="store_true", help=argparse.SUPPRESS)  # child process
    args = p.parse_args(argv)
    args.eval_batch = args.eval_batch or args.batch
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
        return 0
    # in a child too: this process stays small, so it cannot inflate the children's peaks
    subprocess.run([sys.executable, os.path.abspath(__file__), "--make-files", "--pair",
                    args.pair, "--files", args.files], check=True)  # fmt: skip
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
