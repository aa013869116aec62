"""CLIP encoders with deep prompts, built by walking the ``clip`` package's blocks.

Semantics are the official IVLP / PromptSRC / PromptKD / MaPLe code's (spec §1.2, §1.3):
with depth J, block 0 sees the layer-0 prompts in its input, and blocks 1..J-1 each replace
the previous layer's prompt outputs by their own set (text: positions 1..n after SOS;
vision: the LAST n, appended after the patch tokens); later blocks let them flow through.

The encoders hold CLIP's submodules (shared, not copied) directly and register the deep
prompts on the blocks as ``VPT_shallow``, so their state-dict keys are the official
``text_encoder.*`` / ``image_encoder.*`` ones. Prompts are fp32 parameters, cast to the
activation dtype where they are inserted, so frozen weights may be fp16/bf16 (the official
``.half()`` there rounds prompts to fp16 even in fp32 runs: spec §7.2).
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as run_checkpointed

from dassl_ext.errors import UserError
from dassl_ext.modeling._clip import clip

PROMPT_STD = 0.02


def add_deep_prompts(blocks: nn.Sequential, n_ctx: int, depth: int) -> None:
    """Register ``VPT_shallow`` (n_ctx, width) ~ N(0, 0.02²) on blocks 1..depth-1."""
    if depth > len(blocks):
        raise UserError(f"Prompt depth {depth} exceeds the {len(blocks)} layers of this CLIP.")
    for block in list(blocks)[1:depth]:
        if hasattr(block, "VPT_shallow"):
            raise ValueError("These CLIP blocks already carry prompts; load a fresh CLIP model.")
        prompt = torch.empty(n_ctx, block.attn.embed_dim).normal_(std=PROMPT_STD)
        block.register_parameter("VPT_shallow", nn.Parameter(prompt))


def run_blocks(
    x: torch.Tensor,
    blocks: nn.Sequential,
    deep_prompts: Sequence[torch.Tensor],
    at_end: bool,
    checkpoint: bool = False,
) -> torch.Tensor:
    """Run ``x`` (L, N, D) through ``blocks``; block k (k >= 1) first replaces the prompt
    tokens by ``deep_prompts[k-1]`` (n, D): positions 1..n, or the last n if ``at_end``.
    ``checkpoint``: when autograd records, keep each block's input only and recompute it."""
    if len(deep_prompts) > len(blocks) - 1:
        raise ValueError(f"{len(deep_prompts)} deep prompt sets for only {len(blocks)} blocks")
    for k, block in enumerate(blocks):
        if 1 <= k <= len(deep_prompts):
            prompt = deep_prompts[k - 1].to(x.dtype)  # cast at insertion: prompts stay fp32
            n = prompt.shape[0]
            start = x.shape[0] - n if at_end else 1
            prompt = prompt.unsqueeze(1).expand(-1, x.shape[1], -1)  # (n, N, D)
            x = torch.cat([x[:start], prompt, x[start + n :]], dim=0)
        if checkpoint and torch.is_grad_enabled():
            x = run_checkpointed(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


class _PromptedEncoder(nn.Module):
    """Both towers: their own deep prompts, and ``grad_checkpointing`` (``run_blocks``), which
    ``MODEL.GRAD_CHECKPOINTING`` turns on."""

    grad_checkpointing = False
    transformer: nn.Module
    depth: int

    def deep_prompts(self) -> list[torch.Tensor]:
        """The ``VPT_shallow`` of blocks 1..J-1. By depth, not by presence: an unprompted
        encoder sharing blocks with a prompted one must not pick up its prompts."""
        return [block.VPT_shallow for block in list(self.transformer.resblocks)[1 : self.depth]]


class PromptedTextEncoder(_PromptedEncoder):
    """CLIP's text tower taking prompt embeddings instead of token ids. ``depth`` J >= 2 adds
    J-1 deep prompt sets (n_ctx tokens) for blocks 1..J-1; 0 or 1 adds none (CoOp, CoCoOp,
    MaPLe, ZS: the text prompts are in the input)."""

    def __init__(self, clip_model: "clip.model.CLIP", n_ctx: int = 0, depth: int = 0):
        super().__init__()
        for name in ("transformer", "positional_embedding", "ln_final", "text_projection"):
            setattr(self, name, getattr(clip_model, name))
        self.n_ctx, self.depth = n_ctx, depth
        add_deep_prompts(self.transformer.resblocks, n_ctx, depth)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the frozen weights, which the activations take."""
        return self.text_projection.dtype

    def forward(
        self,
        prompts: torch.Tensor,
        tokenized: torch.Tensor,
        deep_prompts: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Text features (C, E) of prompt embeddings ``prompts`` (C, 77, D); ``tokenized``
        (C, 77) finds EOT (the largest id); ``deep_prompts`` (MaPLe) replace the own ones."""
        if deep_prompts is None:
            deep_prompts = self.deep_prompts()
        x = prompts.to(self.dtype) + self.positional_embedding.to(self.dtype)  # (C, L, D)
        x = x.permute(1, 0, 2)  # (L, C, D): clip's blocks are sequence-first
        x = run_blocks(x, self.transformer.resblocks, deep_prompts, False, self.grad_checkpointing)
        x = self.ln_final(x.permute(1, 0, 2)).to(self.dtype)  # (C, L, D)
        eot = x[torch.arange(x.shape[0], device=x.device), tokenized.argmax(dim=-1)]  # (C, D)
        return eot @ self.text_projection


class PromptedImageEncoder(_PromptedEncoder):
    """CLIP's ViT image tower with visual prompts appended after the patch tokens. ``depth``
    0: none (MaPLe passes its projected prompts to ``forward``); 1: the input prompt ``VPT``
    (n_ctx, width) only; J >= 2: plus J-1 deep sets for blocks 1..J-1."""

    def __init__(self, visual: nn.Module, n_ctx: int = 0, depth: int = 0):
        super().__init__()
        if not isinstance(visual, clip.model.VisionTransformer):
            raise UserError(
                f"Visual prompts need a ViT CLIP backbone, got {type(visual).__name__}; "
                "set MODEL.BACKBONE.NAME to a ViT model (e.g. ViT-B/16)."
            )
        self.input_resolution, self.output_dim = visual.input_resolution, visual.output_dim
        # an open_clip model's own normalisation (None: OpenAI's; see CLIPClassifier)
        self.image_mean = getattr(visual, "image_mean", None)
        self.image_std = getattr(visual, "image_std", None)
        self.n_ctx, self.depth = n_ctx, depth
        for name in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer",
                     "ln_post", "proj"):  # fmt: skip
            setattr(self, name, getattr(visual, name))
        if depth > 0:
            width = self.conv1.out_channels
            self.VPT = nn.Parameter(torch.empty(n_ctx, width).normal_(std=PROMPT_STD))
        add_deep_prompts(self.transformer.resblocks, n_ctx, depth)

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the frozen weights, which the activations take (as ``CLIP.dtype``)."""
        return self.conv1.weight.dtype

    def forward(
        self,
        images: torch.Tensor,
        first_prompt: torch.Tensor | None = None,
        deep_prompts: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Image features (B, E) of ``images`` (B, 3, H, W), pooled at CLS; ``first_prompt``
        (n, width) and ``deep_prompts`` (MaPLe) replace the own prompts."""
        if first_prompt is None:
            first_prompt = getattr(self, "VPT", None)
        if deep_prompts is None:
            deep_prompts = self.deep_prompts()
        if deep_prompts and first_prompt is None:
            raise ValueError("Deep visual prompts need a first (layer-0) prompt to replace.")
        x = self.conv1(images.to(self.dtype))  # (B, D, g, g)
        x = x.flatten(2).permute(0, 2, 1)  # (B, g*g, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (B, 1+g*g, D)
        if first_prompt is not None:  # appended last, with no positional embedding
            prompt = first_prompt.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x, prompt], dim=1)  # (B, 1+g*g+n, D)
        x = self.ln_pre(x).permute(1, 0, 2)  # (L, B, D)
        x = run_blocks(x, self.transformer.resblocks, deep_prompts, True, self.grad_checkpointing)
        return self.ln_post(x[0]) @ self.proj  # CLS token


def set_trainable(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    """Freeze every parameter of ``model`` except ``params`` (chosen by module membership);
    returns the names of the trainable parameters."""
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def clip_weight_tensors(module: nn.Module) -> list[nn.Parameter]:
    """The CLIP weights OpenAI's ``convert_weights`` casts to fp16: conv/linear weights and
    biases, attention input projections, ``proj`` and ``text_projection`` (not LayerNorms,
    embeddings or the logit scale: clip's LayerNorm computes in fp32 and rejects
    low-precision parameters on the CPU)."""
    found: dict[int, nn.Parameter] = {}

    def add(t: torch.Tensor | None) -> None:
        if isinstance(t, nn.Parameter) and t.is_floating_point():
            found.setdefault(id(t), t)

    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            add(m.weight)
            add(m.bias)
        if isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                         "in_proj_bias", "bias_k", "bias_v"):  # fmt: skip
                add(getattr(m, name, None))
        for name in ("proj", "text_projection"):
            add(getattr(m, name, None))
    return list(found.values())


def cast_frozen_weights(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the frozen CLIP weights in ``module`` (``clip_weight_tensors``) to ``dtype`` the
    way OpenAI's ``convert_weights`` casts to fp16; LayerNorms and embeddings stay fp32, and
    parameters that require grad stay fp32 master weights. Returns ``module``."""
    for t in clip_weight_tensors(module):
        if not t.requires_grad:
            t.data = t.data.to(dtype)
    return module
