"""Tiny, deterministic CLIP-shaped models for tests and the offline demo: the real
tokenizer's vocabulary and context length, >= 12 layers per tower (so the official prompt
depth 9 applies), saved in OpenAI's state-dict format and read by the same loader."""

from dataclasses import dataclass

import torch
from torch import nn

from dassl_ext.modeling._clip import clip
from dassl_ext.utils.atomic import write_torch_atomic


@dataclass(frozen=True)
class TinyClipSpec:
    """Sizes of a ViT CLIP. ``clip.model.build_model`` derives heads as ``width // 64``."""

    embed_dim: int
    vision_width: int
    text_width: int
    vision_layers: int = 12
    text_layers: int = 12
    image_resolution: int = 32
    patch_size: int = 8
    context_length: int = 77
    vocab_size: int = 49408
    seed: int = 0


# Shaped like the paper's pair (teacher ViT-L/14, student ViT-B/16): the teacher has the
# wider image tower and the larger joint embedding; vision and text widths differ within
# each model, so a hard-coded width (official bug: MaPLe's 512/768) fails on them. Text
# towers stay at the minimum width 64: 77 tokens x classes x 12 layers dominate CPU time.
TINY_SPECS: dict[str, TinyClipSpec] = {
    "tiny-teacher": TinyClipSpec(embed_dim=48, vision_width=128, text_width=64, seed=1),
    "tiny-student": TinyClipSpec(embed_dim=32, vision_width=96, text_width=64, seed=2),
}


def build_tiny_clip(spec: TinyClipSpec | str, seed: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict of ``build_clip_module(spec, seed)``, sharpened (``_sharpen``) and
    converted like OpenAI's released files (fp16 linear/conv/projection weights)."""
    model = build_clip_module(spec, seed)
    with torch.no_grad():
        _sharpen(model)
    clip.model.convert_weights(model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def build_clip_module(spec: TinyClipSpec | str, seed: int | None = None) -> nn.Module:
    """OpenAI's ``clip.model.CLIP`` of ``spec``'s sizes with CLIP's own initialisation, in
    fp32, deterministic in ``seed`` (default: ``spec.seed``) without touching the global RNG."""
    if isinstance(spec, str):
        spec = TINY_SPECS[spec]
    for name in ("vision_width", "text_width"):
        if getattr(spec, name) < 64:
            raise ValueError(f"{name} must be >= 64: clip derives attention heads as width // 64")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed if seed is None else seed)
        return clip.model.CLIP(
            embed_dim=spec.embed_dim,
            image_resolution=spec.image_resolution,
            vision_layers=spec.vision_layers,
            vision_width=spec.vision_width,
            vision_patch_size=spec.patch_size,
            context_length=spec.context_length,
            vocab_size=spec.vocab_size,
            transformer_width=spec.text_width,
            transformer_heads=spec.text_width // 64,
            transformer_layers=spec.text_layers,
        )


@torch.no_grad()
def _sharpen(model: nn.Module) -> None:
    """With CLIP's init, attention is nearly uniform and token embeddings tiny, so every
    prompt pools to almost the same feature (mean pairwise cosine ~0.98 over ten class
    prompts). Larger query/key weights and token embeddings bring it to ~0.8, like
    trained CLIP, so tiny classifiers have something to tell apart."""
    for block in [*model.transformer.resblocks, *model.visual.transformer.resblocks]:
        width = block.attn.embed_dim
        block.attn.in_proj_weight[: 2 * width] *= 3.0  # query and key rows
    model.token_embedding.weight *= 10.0


def tiny_file_matches(path: str, name: str) -> bool:
    """Whether the weights at ``path`` have the shapes of ``TINY_SPECS[name]`` (a file written
    by an older version of a tiny spec must not be used silently)."""
    spec = TINY_SPECS[name]
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable or not a plain state dict: rebuild it
        return False
    if not isinstance(sd, dict):
        return False
    grid = spec.image_resolution // spec.patch_size
    expected = {
        "visual.conv1.weight": (spec.vision_width, 3, spec.patch_size, spec.patch_size),
        "visual.positional_embedding": (grid * grid + 1, spec.vision_width),
        "text_projection": (spec.text_width, spec.embed_dim),
        "token_embedding.weight": (spec.vocab_size, spec.text_width),
    }
    n_vision = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    n_text = len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})
    return (n_vision, n_text) == (spec.vision_layers, spec.text_layers) and all(
        k in sd and tuple(sd[k].shape) == shape for k, shape in expected.items()
    )


def save_tiny_clip(path: str, spec: TinyClipSpec | str) -> str:
    """Build a tiny CLIP and write its state dict to ``path`` atomically (concurrent processes,
    DDP ranks or parallel tests, may create the same file); return ``path``."""
    return write_torch_atomic(path, build_tiny_clip(spec))
