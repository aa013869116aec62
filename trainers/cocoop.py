"""CoCoOp (spec §4): CoOp's context shifted per image by a small meta-network; CE loss.

Each image gets its own context ``ctx + meta_net(norm(img_feat))``, so the text encoder
runs once per image over all classes (as official; this is what makes CoCoOp slow).
Registered as "prompt_learner": keys ``ctx`` and ``meta_net.linear{1,2}.*``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl_ext.config import Range, register_config_extension, register_config_rules
from dassl_ext.engine import TRAINER_REGISTRY
from dassl_ext.modeling import assemble_prompts, word_ctx_or_random
from trainers.base import (
    CLIPClassifier,
    ForwardInference,
    PromptTrainer,
    l2_normalize,
    select_prompt_buffers,
)
from trainers.vl_prompts import PromptLearnerCLIP, TextPromptLearner


@register_config_extension
def add_cocoop_config(cfg) -> None:
    """``TRAINER.COCOOP`` with the official code defaults (spec §8)."""
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16  # number of context vectors
    cfg.TRAINER.COCOOP.CTX_INIT = ""  # initialization words (n_ctx becomes their number)
    cfg.TRAINER.COCOOP.PREC = "fp16"  # fp16, fp32, bf16, amp


register_config_rules(Range("TRAINER.COCOOP.N_CTX", 1, integer=True))


class CoCoOpPromptLearner(TextPromptLearner):
    """Shared ``ctx`` (n, D), ``meta_net`` (E -> E/16 -> D) and the per-class token buffers."""

    def __init__(self, clip_model, classnames: list[str], n_ctx: int, ctx_init: str):
        super().__init__(clip_model, classnames, *word_ctx_or_random(clip_model, ctx_init, n_ctx))
        vis_dim, ctx_dim = clip_model.visual.output_dim, self.ctx.shape[-1]
        self.meta_net = nn.Sequential(
            OrderedDict(
                linear1=nn.Linear(vis_dim, vis_dim // 16),
                relu=nn.ReLU(inplace=True),
                linear2=nn.Linear(vis_dim // 16, ctx_dim),
            )
        )

    def forward(
        self, image_features: torch.Tensor, class_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image prompt embeddings (B, C', 77, D) and token ids (C', 77)."""
        prefix, suffix, tokens = select_prompt_buffers(self, class_ids)
        bias = self.meta_net(image_features)  # (B, D)
        ctx_shifted = self.ctx.unsqueeze(0) + bias.unsqueeze(1)  # (B, n, D)
        prompts = torch.stack([assemble_prompts(prefix, c, suffix) for c in ctx_shifted])
        return prompts, tokens


class CoCoOpCLIP(PromptLearnerCLIP):
    """Frozen CLIP with a conditional prompt learner: its text side depends on the image, so
    there are no class vectors without images (``forward`` only)."""

    text_features = CLIPClassifier.text_features

    def __init__(self, clip_model, classnames: list[str], n_ctx: int, ctx_init: str):
        super().__init__(clip_model, CoCoOpPromptLearner(clip_model, classnames, n_ctx, ctx_init))

    def forward(self, images: torch.Tensor, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, C'): image i against the class prompts built from its own context."""
        image = self.image_features(images)  # (B, E)
        prompts, tokens = self.prompt_learner(image, class_ids)
        scale = self.logit_scale.exp()
        logits = [
            scale * img @ l2_normalize(self.text_encoder(p, tokens)).t()
            for p, img in zip(prompts, image)
        ]
        return torch.stack(logits)  # (B, C')


@TRAINER_REGISTRY.register()
class CoCoOp(ForwardInference, PromptTrainer):
    """Conditional Context Optimization; registered "prompt_learner"."""

    prec_section = "COCOOP"
    model_name = "prompt_learner"
    frozen_teacher = None  # its class vectors depend on the image: no fixed ones to distil

    @classmethod
    def build_custom_clip(cls, cfg, classnames: list[str], clip_model) -> CoCoOpCLIP:
        c = cfg.TRAINER.COCOOP
        return CoCoOpCLIP(clip_model, classnames, c.N_CTX, c.CTX_INIT)

    @staticmethod
    def registered_module(model: nn.Module) -> nn.Module:
        return model.prompt_learner
