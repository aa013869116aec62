"""Pretrain a small CLIP contrastively on offline image-caption pairs (the demo's stand-ins).

The corpus is made here, offline: the TRAIN split of the built-in Digits dataset (never
its val or test images), each image paired with a caption drawn from CAPTION_TEMPLATES
for its digit. The loss is CLIP's symmetric InfoNCE with a learnable logit scale; since a
ten-concept corpus repeats its captions, pairs whose captions name the same digit count
as matches (soft targets), where a web corpus would have had distinct captions.

The result is written in OpenAI's state-dict layout (fp16 weights, as OpenAI's files),
so ``load_clip`` reads it like any CLIP, with a manifest (data, recipe, sha256, zero-shot
accuracy per split) next to it.

Usage: python scripts/pretrain_clip.py digits-teacher [--out DIR] [--steps N] [--seed S]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dassl_ext.modeling._clip import clip  # noqa: E402
from dassl_ext.modeling.standins import standin_path  # noqa: E402
from dassl_ext.modeling.templates import CUSTOM_TEMPLATES  # noqa: E402
from dassl_ext.modeling.tiny import TinyClipSpec, build_clip_module  # noqa: E402
from dassl_ext.utils.atomic import write_bytes_atomic, write_json_atomic  # noqa: E402

# The stand-ins, shaped like the paper's pair: the teacher sees finer patches (4 px, as
# ViT-L/14 against ViT-B/16), is wider and is trained longer.
STANDIN_SPECS = {
    "digits-teacher": TinyClipSpec(
        embed_dim=64,
        vision_width=128,
        text_width=64,
        vision_layers=4,
        text_layers=4,
        patch_size=8,
        seed=11,
    ),
    "digits-student": TinyClipSpec(
        embed_dim=64,
        vision_width=64,
        text_width=64,
        vision_layers=4,
        text_layers=4,
        patch_size=8,
        seed=12,
    ),
}
# Both corpora pair each image with captions naming its digit by word ("seven", the class
# names zero-shot prompts use) or numeral ("7"). The student's corpus shows the digits
# blurred: its features stay adaptable, but zero-shot prompting serves it poorly on the
# sharp demo images, which distillation from the teacher's logits can fix.
_RECIPE = dict(batch=128, lr=1e-3, warmup=100, weight_decay=0.1, shift_px=2,
               captions="all templates x (word, numeral)")  # fmt: skip
STANDIN_RECIPES = {
    "digits-teacher": dict(_RECIPE, steps=1000, seed=11),
    "digits-student": dict(_RECIPE, steps=1500, seed=12, images="blurred", blur_sigma=1.0),
}
ZEROSHOT_TEMPLATE = CUSTOM_TEMPLATES["Digits"]  # what ZeroshotCLIP prompts with
CAPTION_TEMPLATES = (
    ZEROSHOT_TEMPLATE,
    "a photo of a {}.",
    "a photo of the number {}.",
    "the digit {}.",
    "a handwritten {}.",
    "a pixelated image of the number {}.",
    "a drawing of a {}.",
    "{}.",
)
NUMERALS = tuple(str(i) for i in range(10))


def corpus_captions(classnames: list[str]) -> list[list[str]]:
    """The captions of each digit (a list per class): every template with its word, then
    every template with its numeral."""
    return [
        [t.format(name) for name in (word, numeral) for t in CAPTION_TEMPLATES]
        for word, numeral in zip(classnames, NUMERALS)
    ]


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_split(root: str, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images (N, 3, 32, 32), normalised as the framework's test transform does, and labels."""
    import numpy as np
    from PIL import Image

    from datasets.digits import CLASSNAMES, write_digits

    folder = write_digits(root)
    with open(os.path.join(folder, "split_zhou_Digits.json")) as f:
        rows = json.load(f)[split]
    images = np.stack(
        [np.asarray(Image.open(os.path.join(folder, "images", r[0])).convert("RGB")) for r in rows]
    )
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    return x, torch.tensor([r[1] for r in rows]), list(CLASSNAMES)


def restyle(x: torch.Tensor, style: str, sigma: float = 1.0) -> torch.Tensor:
    """The corpus images as a model's pretraining saw them (``x`` normalised, (N, 3, H, W))."""
    if style == "as is":
        return x
    mean = torch.tensor(CLIP_MEAN)[:, None, None]
    std = torch.tensor(CLIP_STD)[:, None, None]
    pixels = x * std + mean  # back to [0, 1]
    if style == "inverted":
        pixels = 1 - pixels
    elif style == "thick":  # strokes one pixel thicker on each side
        pixels = F.max_pool2d(pixels, 3, stride=1, padding=1)
    elif style == "blurred":
        k = torch.exp(-0.5 * (torch.arange(-4, 5.0) / sigma) ** 2)
        k = (k / k.sum())[None, None]
        pixels = F.conv2d(
            F.pad(pixels.reshape(-1, 1, *x.shape[2:]), (4, 4, 0, 0), mode="replicate"),
            k[..., None, :],
        )
        pixels = F.conv2d(F.pad(pixels, (0, 0, 4, 4), mode="replicate"), k[..., :, None]).reshape(
            x.shape
        )
    else:
        raise ValueError(f"unknown image style {style!r}")
    return (pixels - mean) / std


def shift(x: torch.Tensor, max_px: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_px`` pixels, filling with its corner value."""
    if max_px == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_px,) * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_px + 1, (2, n), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@torch.no_grad()
def zeroshot_accuracy(model, x: torch.Tensor, y: torch.Tensor, classnames: list[str]) -> dict:
    """Accuracy with ZeroshotCLIP's Digits prompt, on all classes, base and new."""
    model.eval()
    text = clip.tokenize([ZEROSHOT_TEMPLATE.format(c) for c in classnames])
    t = F.normalize(model.encode_text(text).float(), dim=-1)
    feats = torch.cat([model.encode_image(b).float() for b in x.split(256)])
    logits = F.normalize(feats, dim=-1) @ t.t()
    half = len(classnames) // 2
    base = y < half

    def acc(mask: torch.Tensor, lo: int, hi: int) -> float:
        pred = logits[mask][:, lo:hi].argmax(1) + lo
        return round(100.0 * (pred == y[mask]).float().mean().item(), 2)

    model.train()
    return {
        "all": acc(torch.ones_like(base), 0, len(classnames)),
        "base": acc(base, 0, half),
        "new": acc(~base, half, len(classnames)),
    }


def encode_text_short(model, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text`` computed on the tokens up to the longest caption's end.

    Exact: CLIP's text attention is causal and pools at the end token, so the padding
    after it never reaches the output; cutting it saves most of the text tower's cost.
    """
    n = int(tokens.argmax(-1).max()) + 1  # the end token has the largest id
    x = model.token_embedding(tokens[:, :n]) + model.positional_embedding[:n]
    x = x.permute(1, 0, 2)  # (n, B, width)
    for block in model.transformer.resblocks:
        mask = block.attn_mask[:n, :n]
        h = block.ln_1(x)
        x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ model.text_projection


def contrastive_loss(img, txt, concept, logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE over the batch; pairs whose captions share a concept are matches."""
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    logits = logit_scale.exp() * img @ txt.t()  # (B, B)
    match = (concept[:, None] == concept[None, :]).float()
    target = match / match.sum(1, keepdim=True)
    return 0.5 * (
        torch.sum(-target * logits.log_softmax(1), 1).mean()
        + torch.sum(-target * logits.t().log_softmax(1), 1).mean()
    )


def param_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (not on gains, biases, embeddings or the logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        matrix = p.ndim >= 2 and "embedding" not in name and name != "logit_scale"
        (decay if matrix else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]


def pretrain(
    name: str,
    root: str,
    steps: int | None,
    seed: int | None,
    log_every: int,
    blur_sigma: float | None = None,
) -> tuple:
    spec, recipe = STANDIN_SPECS[name], dict(STANDIN_RECIPES[name])
    if steps is not None:
        recipe["steps"] = steps
    if seed is not None:
        recipe["seed"] = seed
    if blur_sigma is not None:
        if recipe.get("images") != "blurred":
            raise SystemExit(f"--blur-sigma: {name}'s corpus images are not blurred")
        recipe["blur_sigma"] = blur_sigma
    torch.manual_seed(recipe["seed"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    x_train, y_train, classnames = load_split(root, "train")
    x_train = restyle(x_train, recipe.get("images", "as is"), recipe.get("blur_sigma", 1.0))
    model = build_clip_module(spec, seed=recipe["seed"]).float().train()

    # Every caption, tokenised once; a sample draws one of its digit's captions.
    per_class = corpus_captions(classnames)
    n_caps = len(per_class[0])
    tokens = clip.tokenize([c for caps in per_class for c in caps])  # row = digit * n_caps + k

    opt = torch.optim.AdamW(
        param_groups(model, recipe["weight_decay"]), lr=recipe["lr"], betas=(0.9, 0.98), eps=1e-6
    )
    warmup = recipe["warmup"]

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, recipe["steps"] - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    curve = []
    bar = tqdm(range(recipe["steps"]), desc=f"pretrain {name}", mininterval=10)
    t0 = time.time()
    for step in bar:
        idx = torch.randint(0, len(x_train), (recipe["batch"],), generator=gen)
        labels = y_train[idx]
        pick = torch.randint(0, n_caps, (recipe["batch"],), generator=gen)
        rows = labels * n_caps + pick
        uniq, inverse = torch.unique(rows, return_inverse=True)
        images = shift(x_train[idx], recipe["shift_px"], gen)
        img = model.encode_image(images)
        txt = encode_text_short(model, tokens[uniq])[inverse]
        loss = contrastive_loss(img, txt, labels, model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if log_every and ((step + 1) % log_every == 0 or step + 1 == recipe["steps"]):
            x_val, y_val, _ = load_split(root, "val")
            acc = zeroshot_accuracy(model, x_val, y_val, classnames)
            curve.append({"step": step + 1, "loss": round(loss.item(), 4), "val_zeroshot": acc})
            tqdm.write(
                f"step {step + 1}: loss {loss.item():.3f} val zero-shot {acc} "
                f"({time.time() - t0:.0f} s)"
            )
    return model, recipe, curve, time.time() - t0


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def environment() -> dict:
    """What the bits of the weights depend on besides the recipe: the same recipe gives
    other floating-point results with another torch, CPU or number of threads."""
    return {
        "torch": torch.__version__,
        "cpu": cpu_model(),
        # The vector instruction set torch's CPU kernels were dispatched to (e.g. AVX2,
        # AVX512): CPUs sold under one model name differ in it, and so do the results.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("name", choices=sorted(STANDIN_SPECS))
    parser.add_argument("--root", default="./data", help="DATASET.ROOT holding (or to hold) digits")
    parser.add_argument("--out", default=None, help="output folder (default: the packaged one)")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps")
    parser.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    parser.add_argument(
        "--blur-sigma", type=float, default=None, help="override a blurred corpus's sigma (px)"
    )
    parser.add_argument("--log-every", type=int, default=200, help="val zero-shot every N steps")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:  # 1 is fastest on a shared machine: busy cores stall OpenMP threads
        torch.set_num_threads(args.threads)

    model, recipe, curve, seconds = pretrain(
        args.name, args.root, args.steps, args.seed, args.log_every, args.blur_sigma
    )
    # Every floating tensor in fp16, as in OpenAI's files (half the bytes to commit).
    state = {
        k: v.detach().half() if v.is_floating_point() else v.detach().clone()
        for k, v in model.state_dict().items()
    }
    path = (
        standin_path(args.name) if args.out is None else os.path.join(args.out, f"{args.name}.pt")
    )
    # Serialised in memory: the archive's inner folder is then always "archive", so two
    # runs of the same recipe (bit-identical tensors on one thread) give the same bytes.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    write_bytes_atomic(path, data)
    digest = hashlib.sha256(data).hexdigest()

    # Accuracies of the saved (fp16) weights, read back as users will.
    reloaded = clip.model.build_model(torch.load(path, weights_only=True)).float()
    _, _, classnames = load_split(args.root, "train")
    accs = {
        s: zeroshot_accuracy(reloaded, *load_split(args.root, s)[:2], classnames)
        for s in ("val", "test")
    }
    manifest = {
        "name": args.name,
        "file": os.path.basename(path),
        "sha256": digest,
        "bytes": os.path.getsize(path),
        "architecture": STANDIN_SPECS[args.name].__dict__,
        "data": "Digits TRAIN split only (datasets/digits.py: scikit-learn's 8x8 digits, "
        "nearest-upscaled to 32x32 RGB; val and test images never used for training)",
        "captions": corpus_captions(classnames),
        "recipe": recipe,
        "seconds": round(seconds),
        "environment": environment(),
        "zeroshot_template": ZEROSHOT_TEMPLATE,
        "zeroshot_accuracy": accs,
        "curve": curve,
    }
    manifest_path = write_json_atomic(os.path.splitext(path)[0] + ".json", manifest)
    print(f"Wrote {path} ({manifest['bytes'] / 1e6:.1f} MB) and {manifest_path}")
    print(f"Zero-shot accuracy: {json.dumps(accs)}")


if __name__ == "__main__":
    main()
