"""MaPLe's coupled prompts (spec §1.3): deep text prompts and their projections to vision.
Official widths were hard-coded (512 -> 768, ViT-B/16 only); here they come from the model."""

import copy

import torch
from torch import nn

from dassl_ext.modeling.prompted import PROMPT_STD


class CoupledDeepPrompts(nn.Module):
    """MaPLe's prompt coupling, subclassed by the trainer's prompt learner so that the official
    keys ``proj.*``, ``compound_prompts_text.{k}`` and ``compound_prompt_projections.{k}.*``
    come out under ``prompt_learner.``: ``proj`` maps the shared layer-0 ``ctx`` to vision,
    ``compound_prompts_text`` are depth-1 (n_ctx, text width) ~ N(0, 0.02²), and their
    projections depth-1 deep copies of one Linear (identical start, as official). All fp32
    (the official ``proj.half()`` broke fp32 runs)."""

    def __init__(self, n_ctx: int, depth: int, text_width: int, vision_width: int):
        super().__init__()
        # Construction order as maple.py (proj, text prompts, projection), for the RNG.
        self.proj = nn.Linear(text_width, vision_width)
        prompts = [torch.empty(n_ctx, text_width).normal_(std=PROMPT_STD) for _ in range(depth - 1)]
        self.compound_prompts_text = nn.ParameterList(prompts)
        single_layer = nn.Linear(text_width, vision_width)
        self.compound_prompt_projections = nn.ModuleList(
            [copy.deepcopy(single_layer) for _ in range(depth - 1)]
        )

    def coupled_prompts(
        self, ctx: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``(shared_ctx = proj(ctx), deep text prompts, deep vision prompts)``: the image
        encoder's ``first_prompt`` / ``deep_prompts``, and the text encoder's ``deep_prompts``."""
        text = list(self.compound_prompts_text)
        vision = [layer(p) for layer, p in zip(self.compound_prompt_projections, text)]
        return self.proj(ctx), text, vision
