"""Pretrain the tiny CLIP stand-ins on Digits, CLIP-style, for the offline demo.

    python scripts/pretrain_tiny_clip.py --root DATA --clip-root DIR [--name all] [--epochs N]

"tiny-teacher" / "tiny-student" (dassl_ext/modeling/tiny.py) are random, so prompt tuning
on them stays at chance. This script trains the same two architectures contrastively
(symmetric InfoNCE between images and captions such as "a handwritten three.", learnable
logit scale clamped to <= 100) on the Digits TRAIN split only (val and test are never
seen), and writes "digits-teacher.pt" / "digits-student.pt" into --clip-root in OpenAI's
state-dict format, so ``load_clip("digits-teacher", root)`` and ``MODEL.BACKBONE.NAME
digits-teacher`` load them like any CLIP. The teacher is the wider model and trains
longer. CPU, fp32, deterministic for a seed and thread count; existing files are kept
unless --force.

Status: the recipe (epochs, LR) is NOT tuned yet. Measured on a loaded 2-core machine:
teacher, 12 epochs, LR 5e-4, batch 128: loss 5.04 -> 4.62 (ln 128 = 4.85 is chance),
zero-shot test accuracy 19.8% (chance 10%), ~5 min; LR 2e-3, batch 64: 24% on val;
student, LR 3e-3, batch 32: collapsed to the uniform loss (ln 32). The demo does not use
these models until a recipe reaches well above chance within its time budget.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # our datasets

import datasets  # noqa: E402, F401  (registers Digits)
from dassl_ext.config import get_cfg_default  # noqa: E402
from dassl_ext.data import DATASET_REGISTRY  # noqa: E402
from dassl_ext.modeling import build_tiny_clip, clip  # noqa: E402

# Captions: one template per image, drawn at random. "a photo of a {}." is the prompt
# initialisation of the prompt learners (CTX_INIT), so it is among them.
TEMPLATES = (
    "a photo of the digit {}.",
    "a photo of a {}.",
    "a handwritten {}.",
    "the number {}.",
    "a drawing of the digit {}.",
)
EVAL_TEMPLATE = "a photo of the digit {}."
# CLIP's normalisation (configs/trainers/_base_/clip_input.yaml), as the demo's runs use.
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_LOGIT_SCALE = math.log(100.0)


@dataclass(frozen=True)
class PretrainSpec:
    """A pretrained stand-in: the tiny architecture it starts from and its default epochs."""

    base: str  # a TINY_SPECS name (initial weights: that random model)
    epochs: int


# The teacher is wider and trains longer, so it ends clearly ahead of the student.
PRETRAINED: dict[str, PretrainSpec] = {
    "digits-teacher": PretrainSpec(base="tiny-teacher", epochs=12),
    "digits-student": PretrainSpec(base="tiny-student", epochs=4),
}


def load_digits(root: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 3, 32, 32, CLIP-normalised), labels (N,) and class names of a Digits split
    ("train", "val" or "test"), read through the repository's dataset reader."""
    cfg = get_cfg_default()
    cfg.DATASET.NAME = "Digits"
    cfg.DATASET.ROOT = root
    dataset = DATASET_REGISTRY.get("Digits")(cfg)
    items = {"train": dataset.train_x, "val": dataset.val, "test": dataset.test}[split]
    mean = torch.tensor(PIXEL_MEAN).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(3, 1, 1)
    images = []
    for d in items:
        with Image.open(d.impath) as img:
            pixels = np.asarray(img.convert("RGB").resize((32, 32), Image.BICUBIC))
        images.append(torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0)
    x = (torch.stack(images) - mean) / std
    y = torch.tensor([d.label for d in items])
    return x, y, list(dataset.classnames)


def random_resized_crop(
    x: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.6, 1.0)
) -> torch.Tensor:
    """Batched random resized crop (area fraction in ``scale``, aspect 3/4..4/3), resampled
    to the input size with one ``grid_sample`` call."""
    n = x.shape[0]
    area = torch.empty(n).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)  # crop sides as fractions of the image
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - w)  # centre, in [-1, 1] coords
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - h)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w, cx, h, cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between normalised image and caption features of a batch.

    With ten classes a batch holds many pairs of the same digit; those count as positives
    (targets spread uniformly over them) instead of being pushed apart as negatives.
    """
    logits = logit_scale.exp() * image @ text.t()
    same = (labels[:, None] == labels[None, :]).float()
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))


@torch.no_grad()
def zero_shot_accuracy(
    model, images: torch.Tensor, labels: torch.Tensor, classnames: list[str]
) -> float:
    """Top-1 accuracy (%) of ``model`` with the prompts ``EVAL_TEMPLATE``."""
    model.eval()
    text = model.encode_text(clip.tokenize([EVAL_TEMPLATE.format(c) for c in classnames]))
    text = F.normalize(text.float(), dim=-1)
    correct = 0
    for i in range(0, len(images), 256):
        img = F.normalize(model.encode_image(images[i : i + 256]).float(), dim=-1)
        correct += ((img @ text.t()).argmax(dim=1) == labels[i : i + 256]).sum().item()
    return 100.0 * correct / len(images)


def pretrain(
    name: str,
    root: str,
    epochs: int | None = None,
    seed: int = 1,
    batch_size: int = 128,
    lr: float = 5e-4,
    weight_decay: float = 0.05,
    max_steps: int | None = None,
    num_train: int | None = None,
    log: bool = True,
) -> tuple[torch.nn.Module, list[float]]:
    """Train the stand-in ``name`` (a PRETRAINED key) on the Digits train split under
    ``root``; return the fp32 model (eval mode) and the loss of every step.

    AdamW with a linear warm-up (5% of the steps) then cosine decay. ``max_steps`` and
    ``num_train`` (that many train images, spread over the classes) exist for quick tests.
    """
    spec = PRETRAINED[name]
    epochs = spec.epochs if epochs is None else epochs
    generator = torch.Generator().manual_seed(seed)
    images, labels, classnames = load_digits(root, "train")
    if num_train is not None:
        keep = torch.linspace(0, len(images) - 1, num_train).long()  # spread over classes
        images, labels = images[keep], labels[keep]
    model = clip.model.build_model(build_tiny_clip(spec.base)).float().train()
    # Every caption once: each step encodes all of them (50 short texts) and picks per image.
    captions = [t.format(c) for c in classnames for t in TEMPLATES]
    tokens = clip.tokenize(captions)
    # Captions are short; causal attention and EOT pooling make the padding after the
    # longest one irrelevant, so the text tower runs on that prefix only (exact, and
    # several times cheaper than 77 tokens).
    length = int(tokens.argmax(dim=1).max()) + 1
    tokens = tokens[:, :length]

    batch_size = min(batch_size, len(images))
    steps_per_epoch = len(images) // batch_size  # full batches only (drop the remainder)
    total = epochs * steps_per_epoch if max_steps is None else max_steps
    warmup = max(1, total // 20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    losses: list[float] = []
    step, start = 0, time.time()
    with _short_text_mask(model, length):
        while step < total:
            order = torch.randperm(len(images), generator=generator)
            for i in range(steps_per_epoch):
                if step >= total:
                    break
                idx = order[i * batch_size : (i + 1) * batch_size]
                x = random_resized_crop(images[idx], generator)
                y = labels[idx]
                pick = torch.randint(len(TEMPLATES), (len(idx),), generator=generator)
                text_all = F.normalize(model.encode_text(tokens), dim=-1)
                text = text_all[y * len(TEMPLATES) + pick]
                image = F.normalize(model.encode_image(x), dim=-1)
                loss = contrastive_loss(image, text, y, model.logit_scale)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
                losses.append(loss.item())
                step += 1
                if log and (step % steps_per_epoch == 0 or step == total):
                    recent = losses[-steps_per_epoch:]
                    print(
                        f"{name}: epoch {math.ceil(step / steps_per_epoch)}/{epochs} "
                        f"step {step}/{total} loss {sum(recent) / len(recent):.4f} "
                        f"scale {model.logit_scale.exp().item():.1f} "
                        f"({time.time() - start:.1f} s)",
                        flush=True,
                    )
    return model.eval(), losses


class _short_text_mask:
    """Within the block, the text tower's causal masks cover ``length`` tokens, not 77."""

    def __init__(self, model, length: int) -> None:
        self.blocks, self.length = list(model.transformer.resblocks), length

    def __enter__(self) -> None:
        self.saved = [b.attn_mask for b in self.blocks]
        for b in self.blocks:
            b.attn_mask = b.attn_mask[: self.length, : self.length]

    def __exit__(self, *exc) -> None:
        for b, mask in zip(self.blocks, self.saved):
            b.attn_mask = mask


def save_clip(model, path: str) -> str:
    """Write ``model`` as an OpenAI-format state dict (fp16 weights as
    ``clip.model.convert_weights``) to ``path`` atomically; return ``path``."""
    model = clip.model.build_model({k: v.clone() for k, v in model.state_dict().items()})
    state_dict = {k: v.detach().clone() for k, v in model.state_dict().items()}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state_dict, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="DATASET.ROOT (Digits is written there)")
    parser.add_argument("--clip-root", required=True, help="folder for <name>.pt")
    parser.add_argument("--name", default="all", choices=[*PRETRAINED, "all"])
    parser.add_argument("--epochs", type=int, default=None, help="default: per model")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--force", action="store_true", help="retrain existing files")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(PRETRAINED) if args.name == "all" else [args.name]
    for name in names:
        path = os.path.join(args.clip_root, f"{name}.pt")
        if os.path.isfile(path) and not args.force:
            print(f"{name}: {path} exists; skipped (--force retrains)")
            continue
        start = time.time()
        model, _ = pretrain(name, args.root, args.epochs, args.seed)
        test_x, test_y, classnames = load_digits(args.root, "test")
        acc = zero_shot_accuracy(model, test_x, test_y, classnames)
        save_clip(model, path)
        print(
            f"{name}: zero-shot accuracy on the Digits test split {acc:.1f}% "
            f"({len(classnames)} classes, '{EVAL_TEMPLATE}'); {time.time() - start:.1f} s; "
            f"saved {path}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
