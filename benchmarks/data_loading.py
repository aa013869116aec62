"""Images per second one data-loader worker delivers, against what the model step consumes.

Writes ``--images`` real-size JPEGs (500x375, like the benchmark datasets' photos) into a
temporary folder and times, in one process with one thread (as a DataLoader worker),
decoding plus the train transform (random resized crop, flip, normalise) and the test
transform (resize, centre crop, normalise) of the PromptKD configs, for each
``INPUT.BACKEND``: ``pil`` (Dassl's: PIL decode and transforms) and ``tensor``
(torchvision's JPEG decoder and v2 transforms on uint8 tensors). ``--step-json`` reads
the images/s of the model step from ``promptkd_step.py --json`` and says how many workers
keep up with it. Usage::

    python benchmarks/data_loading.py [--images 64] [--step-json step.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dassl_ext.config import get_cfg_default, merge_from_file  # noqa: E402
from dassl_ext.data.data_manager import image_reader  # noqa: E402
from dassl_ext.data.transforms import build_transform  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the input settings of every prompt-learning config (PromptKD included)
INPUT_CFG = os.path.join(REPO, "configs", "trainers", "_base_", "prompt_sgd.yaml")
BACKENDS = ("pil", "tensor")


def write_jpegs(
    folder: str, n: int, size: tuple[int, int] = (500, 375), seed: int = 0
) -> list[str]:
    """``n`` photo-like JPEGs (smooth colour fields, edges and grain; quality 90)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        img = np.zeros((h, w, 3), np.float32)
        for c in range(3):  # a few low-frequency waves per channel
            for _ in range(3):
                fx, fy, ph = rng.uniform(0.002, 0.03, 2).tolist() + [rng.uniform(0, 6.3)]
                img[..., c] += np.sin(xx * fx * 6.3 + yy * fy * 6.3 + ph)
        for _ in range(6):  # objects with sharp edges
            x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
            img[y0 : y0 + rng.integers(20, 150), x0 : x0 + rng.integers(20, 150)] += rng.normal(
                0, 1.5, 3
            )
        img = (img - img.min()) / (img.max() - img.min()) * 255 + rng.normal(0, 6, img.shape)
        path = os.path.join(folder, f"img_{i:04d}.jpg")
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def loader_cfg(backend: str):
    """The PromptKD config's input settings with ``INPUT.BACKEND`` = ``backend``."""
    cfg = get_cfg_default()
    merge_from_file(cfg, INPUT_CFG)
    cfg.INPUT.BACKEND = backend
    return cfg


def images_per_second(paths: list[str], backend: str, is_train: bool, rounds: int = 2) -> float:
    """Decode + transform throughput of one single-threaded worker (best of ``rounds``)."""
    cfg = loader_cfg(backend)
    read, transform = image_reader(cfg), build_transform(cfg, is_train=is_train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        transform(read(paths[0]))  # warm-up
        best = math.inf
        for _ in range(rounds):
            t0 = time.process_time()
            for p in paths:
                transform(read(p))
            best = min(best, time.process_time() - t0)
    finally:
        torch.set_num_threads(threads)
    return len(paths) / best


def step_rates(path: str) -> dict[str, float]:
    """images/s of the model step from ``promptkd_step.py --json``: train and eval (ours)."""
    with open(path) as f:
        results = json.load(f)["results"]
    rates = {}
    for r in results:
        if r["variant"] == "train-ours":
            rates["train"] = max(rates.get("train", 0.0), r["images_per_sec"])
        if r["variant"] == "eval-ours":
            rates["test"] = r["images_per_sec"]
    return rates


def format_table(rates: dict[tuple[str, str], float], step: dict[str, float]) -> str:
    """images/s per worker for each backend and transform; workers needed by the step."""
    lines = ["transform | backend | images/s per worker | model step images/s | workers needed"]
    for (split, backend), r in rates.items():
        need = step.get(split)
        tail = f"{need:.1f} | {math.ceil(need / r)}" if need else "- | -"
        lines.append(f"{split} | {backend} | {r:.1f} | {tail}")
    for split in ("train", "test"):
        if (split, "pil") in rates and (split, "tensor") in rates:
            gain = rates[(split, "tensor")] / rates[(split, "pil")]
            lines.append(f"{split}: tensor / pil images/s per worker {gain:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--backends", default=",".join(BACKENDS), type=lambda s: s.split(","))
    p.add_argument("--step-json", help="promptkd_step.py --json output: the model's images/s")
    args = p.parse_args(argv)
    step = step_rates(args.step_json) if args.step_json else {}
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(folder, args.images)
        rates = {
            (split, backend): images_per_second(paths, backend, split == "train")
            for split in ("train", "test")
            for backend in args.backends
        }
    print(f"{args.images} JPEGs 500x375, decode + transform, one worker (1 thread), CPU time")
    print(format_table(rates, step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
