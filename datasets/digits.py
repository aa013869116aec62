"""Digits: scikit-learn's 1,797 handwritten digits, written once in CoOp layout (no download).

`<root>/digits/images/<zero..nine>/<n>.png` (32x32 RGB) plus split_zhou_Digits.json
(50/20/30 per class, fixed seed). The offline demo and many tests run on it.
"""

import os
import shutil

import numpy as np
from PIL import Image

from dassl_ext.data import DATASET_REGISTRY, DatasetBase
from dassl_ext.data.splits import save_split, split_by_class
from dassl_ext.errors import UserError

CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digits(root: str) -> str:
    """Write the digits under `root/digits/` unless already there; returns that folder."""
    from sklearn.datasets import load_digits  # ships its data; no network

    root = os.path.abspath(os.path.expanduser(root))
    out = os.path.join(root, "digits")
    if os.path.isfile(os.path.join(out, "split_zhou_Digits.json")):
        return out
    # Write into a private folder and rename it into place, so an interrupted or
    # concurrent (one per DDP rank) write never leaves a half-written dataset.
    tmp = f"{out}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    digits = load_digits()
    image_dir = os.path.join(tmp, "images")
    paths: list[list[str]] = [[] for _ in CLASSNAMES]
    for i, (pixels, label) in enumerate(zip(digits.images, digits.target)):
        folder = os.path.join(image_dir, CLASSNAMES[label])
        os.makedirs(folder, exist_ok=True)
        gray = (pixels * (255.0 / 16.0)).round().astype(np.uint8)  # values are 0..16
        img = Image.fromarray(gray, mode="L").resize((32, 32), Image.NEAREST).convert("RGB")
        paths[label].append(os.path.join(folder, f"{i:04d}.png"))
        img.save(paths[label][-1])
    # Label = the digit (not the alphabetical folder order).
    train, val, test = split_by_class(list(zip(range(10), CLASSNAMES, paths)))
    splits = {"train": train, "val": val, "test": test}
    save_split(splits, os.path.join(tmp, "split_zhou_Digits.json"), image_dir)
    try:
        os.rename(tmp, out)
    except OSError:  # another process finished first (or a stale folder is in the way)
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(out, "split_zhou_Digits.json")):
            raise UserError(f"{out} exists without split_zhou_Digits.json; delete it.") from None
    return out


@DATASET_REGISTRY.register()
class Digits(DatasetBase):
    dataset_dir = "digits"
    image_dir = "images"
    split_file = "split_zhou_Digits.json"

    def __init__(self, cfg) -> None:
        write_digits(cfg.DATASET.ROOT)
        super().__init__(cfg)
