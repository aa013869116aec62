"""Digits written as image files into the folders ImageFolder reads (unlabeled, labeled)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from datasets.digits import CLASSNAMES

# What `write_digit` can write, as (PIL mode, extension): the modes and bit depths a
# user's folder may mix.
MODES = (("L", ".png"), ("RGB", ".jpg"), ("RGBA", ".png"), ("P", ".png"), ("I;16", ".png"),
         ("RGB", ".bmp"), ("RGB", ".webp"), ("L", ".tif"), ("P", ".gif"))  # fmt: skip


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # ships its data; no network

    d = load_digits()
    return (d.images * (255.0 / 16.0)).round().astype(np.uint8), d.target


def digit_pixels(label: int, k: int) -> np.ndarray:
    """The k-th image of digit ``label``, 32x32 uint8 gray (as datasets/digits.py writes it)."""
    images, targets = _digits()
    gray = images[np.flatnonzero(targets == label)[k]]
    return np.kron(gray, np.ones((4, 4), np.uint8))


def write_digit(path: str, label: int, k: int, mode: str = "RGB") -> str:
    """Write digit image (label, k) to ``path`` in PIL ``mode`` (format by extension)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    gray = digit_pixels(label, k)
    if mode == "I;16":  # 16-bit gray: the 8-bit value in the high byte
        img = Image.fromarray(gray.astype(np.uint16) * 257)
        assert img.mode == "I;16", img.mode
    else:
        img = Image.fromarray(gray, mode="L")
        img = img.convert("RGB").quantize(16) if mode == "P" else img.convert(mode)
    img.save(path)
    return path


@dataclass
class Folders:
    train_dir: str
    class_file: str
    eval_dir: str
    names: list[str]


def write_folders(
    root: str,
    n_classes: int = 4,
    n_train: int = 3,
    n_eval: int = 5,
    mixed: bool = False,
    prompts: dict[str, str] | None = None,
) -> Folders:
    """Under ``root``: ``unlabeled/`` (n_train images of each of the first n_classes digits,
    nested two deep, names that do not reveal the class), ``classes.txt`` and ``labeled/<name>/``
    (n_eval other images per class). ``mixed``: the images cycle through :data:`MODES`."""
    names = list(CLASSNAMES[:n_classes])
    train_dir, eval_dir = os.path.join(root, "unlabeled"), os.path.join(root, "labeled")
    i = 0
    for label, name in enumerate(names):
        for k in range(n_train):
            mode, ext = MODES[i % len(MODES)] if mixed else ("RGB", ".png")
            write_digit(os.path.join(train_dir, f"batch{k % 2}", "day1", f"img{i:03d}{ext}"),
                        label, k, mode)  # fmt: skip
            i += 1
        for k in range(n_eval):
            mode, ext = MODES[(i + k) % len(MODES)] if mixed else ("RGB", ".png")
            write_digit(os.path.join(eval_dir, name, f"{k:02d}{ext}"), label, n_train + k, mode)
    class_file = os.path.join(root, "classes.txt")
    with open(class_file, "w", encoding="utf-8") as f:
        for name in names:
            prompt = (prompts or {}).get(name)
            f.write(f"{name}\t{prompt}\n" if prompt else f"{name}\n")
    return Folders(train_dir, class_file, eval_dir, names)
