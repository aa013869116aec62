"""MaPLe (spec §1.3, §4): coupled prompts, the vision prompts projected from the text ones.

Registered as "MultiModalPromptLearner"; state-dict keys as official: ``prompt_learner.{ctx,
proj.*, compound_prompts_text.k, compound_prompt_projections.k.*}``, ``image_encoder.*``,
``text_encoder.*``, ``logit_scale``. Differences from the official code: the projection
widths come from the model (official: 512 -> 768 hard-coded, ViT-B/16 only) and every
trainable parameter is fp32 (official ``proj.half()`` crashed PREC=fp32).
"""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl_ext.config import Range, Rule, register_config_extension, register_config_rules
from dassl_ext.engine import TRAINER_REGISTRY
from dassl_ext.errors import UserError
from dassl_ext.modeling import (
    ClipSizes,
    CoupledDeepPrompts,
    PromptedImageEncoder,
    init_ctx_from_words,
)
from trainers.base import PromptTrainer, l2_normalize, register_prompt_buffers
from trainers.vl_prompts import PromptLearnerCLIP, TextPromptLearner


@register_config_extension
def add_maple_config(cfg) -> None:
    """``TRAINER.MAPLE`` with the official code defaults (spec §8)."""
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"
    cfg.TRAINER.MAPLE.PREC = "fp16"
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9  # max 12, min 1; 1 = shallow MaPLe (J=1)


register_config_rules(
    Range("TRAINER.MAPLE.N_CTX", 1, integer=True),
    Range("TRAINER.MAPLE.PROMPT_DEPTH", 1, integer=True, note="1: shallow MaPLe"),
)


class MultiModalPromptLearner(CoupledDeepPrompts):
    """Shared layer-0 ``ctx`` (n, D_text), its coupling to vision, and the token buffers."""

    def __init__(self, clip_model, classnames: list[str], n_ctx: int, ctx_init: str, depth: int):
        layers = len(clip_model.transformer.resblocks)
        if not 1 <= depth <= layers:
            raise UserError(
                f"TRAINER.MAPLE.PROMPT_DEPTH must be in 1..{layers} (the text layers), got {depth}."
            )
        # ctx first, then the coupling layers: the official construction (and RNG) order.
        ctx, prompt_prefix = init_ctx_from_words(clip_model, ctx_init, n_ctx, max_word_ctx=4)
        text_width = clip_model.ln_final.weight.shape[0]
        super().__init__(n_ctx, depth, text_width, clip_model.visual.conv1.out_channels)
        self.ctx = nn.Parameter(ctx)
        register_prompt_buffers(self, clip_model, classnames, prompt_prefix, n_ctx)

    forward = TextPromptLearner.forward


class MaPLeCLIP(PromptLearnerCLIP):
    """CLIP whose two towers are prompted by one ``MultiModalPromptLearner``."""

    text_side = ("text_encoder",)  # a frozen MaPLe teacher's image side needs the learner

    def __init__(self, clip_model, classnames: list[str], n_ctx: int, ctx_init: str, depth: int):
        learner = MultiModalPromptLearner(clip_model, classnames, n_ctx, ctx_init, depth)
        # The image encoder's prompts come from the learner.
        super().__init__(clip_model, learner, PromptedImageEncoder(clip_model.visual))

    def text_features(self, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        prompts, tokens = self.prompt_learner(class_ids)
        deep_text = list(self.prompt_learner.compound_prompts_text)
        return l2_normalize(self.text_encoder(prompts, tokens, deep_prompts=deep_text))

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        shared_ctx, _, deep_vision = self.prompt_learner.coupled_prompts(self.prompt_learner.ctx)
        return self.image_encoder(self.model_input(images), shared_ctx, deep_vision)


@TRAINER_REGISTRY.register()
class MaPLe(PromptTrainer):
    """Multi-modal prompt learning; CE loss; registered "MultiModalPromptLearner"."""

    prec_section = "MAPLE"
    model_name = "MultiModalPromptLearner"

    @classmethod
    def build_custom_clip(cls, cfg, classnames: list[str], clip_model) -> MaPLeCLIP:
        m = cfg.TRAINER.MAPLE
        return MaPLeCLIP(clip_model, classnames, m.N_CTX, m.CTX_INIT, m.PROMPT_DEPTH)

    @classmethod
    def model_rules(cls, cfg, sizes: ClipSizes) -> list[Rule]:
        """The coupled prompts enter as many layers of both towers."""
        layers = min(sizes.text_layers, sizes.vision_layers or sizes.text_layers)
        note = f"the layers of each tower of {sizes.name}"
        return [Range("TRAINER.MAPLE.PROMPT_DEPTH", 1, layers, integer=True, note=note)]
