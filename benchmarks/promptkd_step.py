"""PromptKD step time, peak memory and evaluation speed: stored vs recomputed teacher text.

At real sizes (ViT-B/16 student, ViT-L/14 teacher, both with 4-token prompts of depth 9,
random weights with the shapes of ``clip.model.CLIP``, nothing downloaded), compares

* a training step with the teacher's text features stored once (this project) against the
  same step re-running the teacher text tower for all classes (the official code), and
* evaluation with the student and the stored features only against running the whole
  teacher for every test batch as well (the official ``PromptKD.test``).

Each variant runs in its own process so that its peak resident memory (``ru_maxrss``) is
its own. Usage::

    python benchmarks/promptkd_step.py [--steps 3] [--classes 100] [--batch 8]
                                       [--teacher-bf16] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dassl_ext.modeling import (  # noqa: E402
    PromptedImageEncoder,
    PromptedTextEncoder,
    clip,
    set_trainable,
)
from trainers.losses import kd_loss  # noqa: E402
from trainers.promptkd_student import PromptKDStudent  # noqa: E402

# clip.model.CLIP(embed_dim, image_resolution, vision_layers, vision_width, patch_size,
#                 context_length, vocab_size, text_width, text_heads, text_layers)
SHAPES = {
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
}
VARIANTS = ("train-stored", "train-official", "eval-student", "eval-official")


def build(args: argparse.Namespace, with_text: bool) -> dict:
    """Teacher and student with random weights; the teacher text tower only if ``with_text``.

    Without it, the teacher's text features come "from the cache" (a random (C, 768) tensor
    here), as in any run after the first one; the first run computes them once, then
    drops the tower as well.
    """
    torch.manual_seed(0)
    dev = torch.device(args.device)
    t_dtype = torch.bfloat16 if args.teacher_bf16 else torch.float32
    m = {"dev": dev, "t_dtype": t_dtype, "t_scale": torch.tensor(4.6052, device=dev)}
    if with_text:
        t_clip = clip.model.CLIP(*SHAPES["ViT-L/14"]).eval().requires_grad_(False)
        t_visual = t_clip.visual
        m["t_text"] = PromptedTextEncoder(t_clip, 4, 9).requires_grad_(False).to(dev, t_dtype)
        tokenized = clip.tokenize([f"X X X X class {i}." for i in range(args.classes)])
        with torch.no_grad():
            prompts = t_clip.token_embedding(tokenized)  # (C, 77, 768)
        m["prompts"], m["tokenized"] = prompts.to(dev), tokenized.to(dev)
        del t_clip  # token_embedding is only needed to build the prompts
    else:
        t_visual = clip.model.VisionTransformer(224, 14, 1024, 24, 16, 768)
        m["stored"] = F.normalize(torch.randn(args.classes, 768, device=dev), dim=-1)
    m["t_image"] = PromptedImageEncoder(t_visual, 4, 9).eval().requires_grad_(False)
    m["t_image"].to(dev, t_dtype)
    s_visual = clip.model.VisionTransformer(224, 16, 768, 12, 12, 512)
    student = PromptKDStudent(PromptedImageEncoder(s_visual, 4, 9), torch.tensor(4.6052), 512, 768)
    set_trainable(student, student.trainable_parameters())
    m["student"] = student.to(dev)
    return m


def teacher_autocast(m: dict):
    if m["t_dtype"] == torch.float32:
        return torch.autocast(m["dev"].type, enabled=False)
    return torch.autocast(m["dev"].type, dtype=m["t_dtype"])


@torch.no_grad()
def teacher_text(m: dict) -> torch.Tensor:
    with teacher_autocast(m):
        return F.normalize(m["t_text"](m["prompts"], m["tokenized"]).float(), dim=-1)


@torch.no_grad()
def teacher_logits(m: dict, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    with teacher_autocast(m):
        img = F.normalize(m["t_image"](images).float(), dim=-1)
    return m["t_scale"].exp() * img @ text.t()


def run_variant(args: argparse.Namespace) -> dict:
    """Run one variant in this process; returns seconds per step / images per second, memory."""
    torch.set_num_threads(os.cpu_count() or 1)
    m = build(args, with_text=args.variant.endswith("official"))
    student, variant = m["student"], args.variant
    stored = m["stored"] if "stored" in m else teacher_text(m)
    opt = torch.optim.SGD(
        [p for p in student.parameters() if p.requires_grad], lr=0.005, momentum=0.9
    )
    images = torch.randn(args.batch, 3, 224, 224, device=m["dev"])

    def step() -> None:
        if variant.startswith("train"):
            student.train()
            text = teacher_text(m) if variant == "train-official" else stored
            t_logits = teacher_logits(m, images, text)
            loss = 1000.0 * kd_loss(student(images, stored), t_logits)
            opt.zero_grad()
            loss.backward()
            opt.step()
        else:
            student.eval()
            with torch.no_grad():
                if variant == "eval-official":  # the official test runs the teacher as well
                    teacher_logits(m, images, teacher_text(m))
                student(images, stored).argmax(dim=1)

    step()  # warm-up
    if m["dev"].type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    if m["dev"].type == "cuda":
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / args.steps
    cpu_sec = (time.process_time() - c0) / args.steps  # CPU time: robust to a busy machine
    return {
        "variant": variant,
        "sec_per_step": sec,
        "cpu_sec_per_step": cpu_sec,
        "images_per_sec": args.batch / sec,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if m["dev"].type == "cuda" else 0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after 1 warm-up)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher-bf16", action="store_true", help="teacher in bf16 under autocast")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # child process
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    res = {}
    for variant in VARIANTS:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--variant",
            variant,
            "--steps",
            str(args.steps),
            "--classes",
            str(args.classes),
            "--batch",
            str(args.batch),
            "--device",
            args.device,
        ] + (["--teacher-bf16"] if args.teacher_bf16 else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res[variant] = json.loads(out.strip().splitlines()[-1])
        print(f"done: {variant}", file=sys.stderr)
    _print_table(res, args)


def _print_table(res: dict, args: argparse.Namespace) -> None:
    from tabulate import tabulate

    ts, to = res["train-stored"], res["train-official"]
    es, eo = res["eval-student"], res["eval-official"]
    mem = "peak_cuda_mb" if args.device.startswith("cuda") else "peak_rss_mb"
    names = {
        "train-stored": "train step: stored text features",
        "train-official": "train step: teacher text every step",
        "eval-student": "eval: student + stored features",
        "eval-official": "eval: + teacher forward (official)",
    }
    rows = [
        [names[k], f"{r['sec_per_step']:.3f}", f"{r['cpu_sec_per_step']:.3f}", f"{r[mem]:.0f}",
         f"{r['images_per_sec']:.1f}" if k.startswith("eval") else ""]
        for k, r in res.items()
    ]  # fmt: skip
    print(
        f"PromptKD, ViT-B/16 student <- ViT-L/14 teacher, {args.classes} classes, batch "
        f"{args.batch}, {args.device}, teacher {'bf16' if args.teacher_bf16 else 'fp32'}, "
        f"{args.steps} timed steps"
    )
    headers = ["variant", "s / batch", "CPU s / batch", f"peak {mem[5:]}", "images / s"]
    print(tabulate(rows, headers=headers))
    for label, key in (("wall", "sec_per_step"), ("CPU-time", "cpu_sec_per_step")):
        print(
            f"{label}: step time stored / official {ts[key] / to[key]:.2f}x; "
            f"eval speed student-only / official {eo[key] / es[key]:.1f}x"
        )
    print(f"peak memory of a training step, stored / official: {ts[mem] / to[mem]:.2f}x")


if __name__ == "__main__":
    main()
