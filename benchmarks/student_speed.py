"""Inference speed of the exported PromptKD student against its teacher, in images/s.

    python benchmarks/student_speed.py [--size real|standins|tiny] [--batches 1 32]
        [--backends eager compile onnx] [--iters 3] [--threads N] [--device cpu]

The student is written by ``export_student`` (student.pt) and ``export_onnx``
(student.onnx) and read back as ``predict.py`` reads it; it is then timed with PyTorch
eager, ``torch.compile`` (inductor; a failure is reported in the table, not raised) and
onnxruntime. The teacher is the image side PromptKD distils from at test time: its prompted
image encoder and the logits against the stored class text features (no text tower), timed
the same way (its ONNX model through the same exporter). Sizes, all with random weights:

* real: student ViT-B/16 (prompts 4 x depth 9, projector to 768), teacher ViT-L/14
  (prompts 4 x depth 9), 100 classes, 224 px (the shapes of ``promptkd_models.SHAPES``);
* standins: the packaged digits-student / digits-teacher towers, 10 classes, 32 px;
* tiny: a few-layer pair at 32 px (the smoke test).

Each cell: ``--warmup`` untimed calls (at least one for compile: it compiles), then the
median of at least ``--iters`` timed calls (and ``--min-time`` seconds) on preprocessed
random images (no image decoding). Every backend gets ``--threads`` threads.
The table ends with the student/teacher speed-up per backend and batch size; on a shared
machine compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.promptkd_models import SHAPES  # noqa: E402
from dassl_ext.config import apply_config_extensions, get_cfg_default  # noqa: E402
from dassl_ext.modeling import PromptedImageEncoder, clip, load_clip  # noqa: E402
from trainers.promptkd_export import ExportedStudent, export_student  # noqa: E402
from trainers.promptkd_student import PromptKDStudent  # noqa: E402

BACKENDS = ("eager", "compile", "onnx")


class Tower(NamedTuple):
    """A CLIP image tower: ``VisionTransformer(resolution, patch, width, layers, heads, dim)``
    with random weights, or the packaged stand-in ``standin``."""

    resolution: int = 224
    patch: int = 16
    width: int = 768
    layers: int = 12
    output_dim: int = 512
    standin: str = ""

    def build(self, seed: int) -> nn.Module:
        if self.standin:
            return load_clip(self.standin, tempfile.gettempdir()).visual.float()
        torch.manual_seed(seed)
        heads = self.width // 64 or 1
        args = (self.resolution, self.patch, self.width, self.layers, heads, self.output_dim)
        return clip.model.VisionTransformer(*args)


def _tower(name: str) -> Tower:
    embed, resolution, layers, width, patch = SHAPES[name][:5]
    return Tower(resolution, patch, width, layers, embed)


# (student tower, teacher tower, classes, prompt length, prompt depth)
SIZES = {
    "real": (_tower("ViT-B/16"), _tower("ViT-L/14"), 100, 4, 9),
    "standins": (
        Tower(32, standin="digits-student"),
        Tower(32, standin="digits-teacher"),
        10,
        4,
        4,
    ),  # fmt: skip
    "tiny": (Tower(32, 8, 64, 2, 32), Tower(32, 8, 128, 3, 48), 10, 2, 2),
}


class TeacherLogits(nn.Module):
    """The teacher at test time: ``exp(scale) * norm(enc(x)) @ W^T`` with fixed W (C, E)."""

    def __init__(self, encoder: nn.Module, class_features: torch.Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("class_features", class_features)
        self.register_buffer("logit_scale", torch.tensor(100.0).log())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(self.encoder(image), dim=-1)
        return self.logit_scale.exp() * feats @ self.class_features.t()


def build_models(size: str, folder: str) -> tuple[str, nn.Module, int]:
    """(the exported student's .pt file, the teacher's logits module, input resolution)."""
    s_tower, t_tower, classes, n_ctx, depth = SIZES[size]
    teacher_encoder = PromptedImageEncoder(t_tower.build(seed=1), n_ctx, depth)
    teacher_dim = teacher_encoder.output_dim
    features = F.normalize(torch.randn(classes, teacher_dim), dim=-1)
    teacher = TeacherLogits(teacher_encoder, features).eval()
    encoder = PromptedImageEncoder(s_tower.build(seed=2), n_ctx, depth)
    student = PromptKDStudent(encoder, torch.tensor(100.0).log(), encoder.output_dim, teacher_dim)
    student.set_class_text_features(features)
    cfg = apply_config_extensions(get_cfg_default())
    cfg.INPUT.SIZE = (encoder.input_resolution, encoder.input_resolution)
    path = os.path.join(folder, "student.pt")
    names = [f"class {i}" for i in range(classes)]
    export_student(SimpleNamespace(model=student.eval(), classnames=names, cfg=cfg), path)
    return path, teacher, encoder.input_resolution


def time_calls(
    run: Callable[[], object],
    iters: int,
    sync: Callable[[], None],
    warmup: int = 1,
    min_time: float = 0.0,
) -> float:
    """Median seconds of one call of ``run``, after ``warmup`` calls: at least ``iters``
    calls, and more until they took ``min_time`` seconds in all."""
    for _ in range(warmup):
        run()
        sync()
    times = []
    while len(times) < iters or sum(times) < min_time:
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:90]}"


def runners(
    model: nn.Module, onnx_file: Callable[[], str], backends, device: torch.device, threads: int
):
    """``{backend: (batch -> a call running it) or the reason it is not available}``."""
    from trainers.promptkd_onnx import onnx_session

    out = {}
    model = model.to(device).eval()
    for backend in backends:
        try:
            if backend == "eager":
                fn = model
            elif backend == "compile":
                fn = torch.compile(model, dynamic=False)
            else:
                session = onnx_session(onnx_file(), str(device), threads)

                def fn(x, session=session):
                    return session.run(["logits"], {"image": x.cpu().numpy()})[0]

            out[backend] = fn
        except Exception as e:  # noqa: BLE001  any failure is a row of the table
            out[backend] = _reason(e)
    return out


def measure(args) -> list[dict]:
    """One row per (model, backend, batch): images/s, or the error that stopped it."""
    from trainers.promptkd_onnx import (
        OPSET,
        Probabilities,
        StudentLogits,
        export_onnx,
        write_onnx,
    )

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        pt, teacher, res = build_models(args.size, folder)
        student = ExportedStudent(pt).model  # as predict.py reads it
        student_logits = StudentLogits(student)

        def student_onnx() -> str:
            export_onnx(pt, os.path.join(folder, "student.onnx"))
            return os.path.join(folder, "student.onnx")

        def teacher_onnx() -> str:
            path = os.path.join(folder, "teacher.onnx")
            example = torch.randn(2, 3, res, res)
            write_onnx(Probabilities(teacher), example, path, {"format": "teacher"}, OPSET)
            return path

        for name, model, onnx_file, backends in (
            ("student", student_logits, student_onnx, args.backends),
            ("teacher", teacher, teacher_onnx, args.teacher_backends or args.backends),
        ):
            params = sum(p.numel() for p in model.parameters())
            for backend, fn in runners(model, onnx_file, backends, device, args.threads).items():
                for batch in args.batches:
                    row = {"model": name, "backend": backend, "batch": batch, "params": params}
                    if isinstance(fn, str):
                        rows.append({**row, "error": fn})
                        continue
                    x = torch.randn(batch, 3, res, res, device=device)
                    try:
                        with torch.no_grad():
                            warmup = max(args.warmup, backend == "compile")  # compiles
                            sec = time_calls(
                                lambda fn=fn, x=x: fn(x), args.iters, sync, warmup, args.min_time
                            )
                        rows.append({**row, "sec": sec, "images_per_s": batch / sec})
                    except Exception as e:  # noqa: BLE001
                        rows.append({**row, "error": _reason(e)})
                    print(_row_text(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _row_text(r: dict) -> str:
    if "error" in r:
        return f"{r['model']:8} {r['backend']:8} {r['batch']:>5}  failed: {r['error']}"
    return (
        f"{r['model']:8} {r['backend']:8} {r['batch']:>5} {r['images_per_s']:>10.1f} "
        f"{1000 * r['sec']:>10.1f}"
    )


def speedups(rows: list[dict]) -> list[dict]:
    """Student images/s over teacher images/s, per backend and batch size."""
    ips = {(r["model"], r["backend"], r["batch"]): r.get("images_per_s") for r in rows}
    out = []
    for (model, backend, batch), s in ips.items():
        t = ips.get(("teacher", backend, batch))
        if model == "student" and s and t:
            out.append({"backend": backend, "batch": batch, "speedup": s / t})
    return out


def table(rows: list[dict], args) -> str:
    lines = [
        f"size {args.size}, device {args.device}, {args.threads} thread(s), median of >= "
        f"{args.iters} call(s) (>= {args.min_time:g} s) after {args.warmup} warm-up(s) "
        f"(compile >= 1); load average before "
        f"{args.load_before:.1f}, after {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPU(s)",
        f"{'model':8} {'backend':8} {'batch':>5} {'images/s':>10} {'ms/batch':>10}",
    ]
    lines += [_row_text(r) for r in rows]
    lines.append("student / teacher images/s:")
    lines += [
        f"  {s['backend']:8} batch {s['batch']:>3}: {s['speedup']:.2f}x" for s in speedups(rows)
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", choices=list(SIZES), default="standins")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--teacher-backends", nargs="+", choices=BACKENDS, help="(--backends)")
    p.add_argument("--iters", type=int, default=3, help="timed calls per cell (median)")
    p.add_argument("--min-time", type=float, default=0.0, help="and calls until this many s")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (compile: >= 1)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    args.load_before = os.getloadavg()[0]  # other processes on a shared machine
    rows = measure(args)
    print(table(rows, args))
    return rows


if __name__ == "__main__":
    main()
