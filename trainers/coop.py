"""CoOp (spec §4): learnable text context in front of (or around) the class name; CE loss.

Registered as "prompt_learner" and only the prompt learner is saved (key ``ctx``), as the
official code. The token prefix/suffix buffers are rebuilt from the class names (not saved;
dropped from official files on load).
"""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl_ext.config import OneOf, Range, register_config_extension, register_config_rules
from dassl_ext.engine import TRAINER_REGISTRY
from dassl_ext.errors import UserError
from dassl_ext.modeling import clip, word_ctx_or_random
from trainers.base import PromptTrainer, select_prompt_buffers
from trainers.vl_prompts import PromptLearnerCLIP, TextPromptLearner

POSITIONS = ("end", "middle", "front")


@register_config_extension
def add_coop_config(cfg) -> None:
    """``TRAINER.COOP`` with the official code defaults (spec §8)."""
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # initialization words (n_ctx becomes their number)
    cfg.TRAINER.COOP.PREC = "fp16"  # fp16, fp32, bf16, amp
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end, middle or front


register_config_rules(
    Range("TRAINER.COOP.N_CTX", 1, integer=True),
    OneOf("TRAINER.COOP.CLASS_TOKEN_POSITION", POSITIONS),
)


class CoOpPromptLearner(TextPromptLearner):
    """``ctx`` (n, D) or class-specific (C, n, D), the class name at the end, in the middle
    or in front of it, and the per-class token buffers."""

    def __init__(
        self,
        clip_model,
        classnames: list[str],
        n_ctx: int,
        ctx_init: str,
        csc: bool = False,
        class_token_position: str = "end",
    ):
        if class_token_position not in POSITIONS:
            raise UserError(
                f"TRAINER.COOP.CLASS_TOKEN_POSITION is {class_token_position!r}; use one of "
                f"{', '.join(POSITIONS)}."
            )
        ctx = word_ctx_or_random(clip_model, ctx_init, n_ctx, len(classnames) if csc else 0)
        super().__init__(clip_model, classnames, *ctx)
        self.class_token_position = class_token_position
        tokenizer = clip.clip._tokenizer
        self.name_lens = [len(tokenizer.encode(c.replace("_", " "))) for c in classnames]

    def forward(self, class_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings (C', 77, D) and token ids (C', 77) of the selected classes."""
        if self.class_token_position == "end":
            return super().forward(class_ids)
        prefix, suffix, tokens = select_prompt_buffers(self, class_ids)
        ctx, name_lens = self.ctx, self.name_lens
        if class_ids is not None:
            ctx = ctx[class_ids] if ctx.dim() == 3 else ctx
            name_lens = [name_lens[i] for i in class_ids.tolist()]
        dtype = torch.promote_types(ctx.dtype, prefix.dtype)
        ctx = ctx.expand(prefix.shape[0], -1, -1) if ctx.dim() == 2 else ctx
        prefix, ctx, suffix = prefix.to(dtype), ctx.to(dtype), suffix.to(dtype)
        half = ctx.shape[1] // 2
        prompts = []
        for i, n in enumerate(name_lens):
            name, rest = suffix[i : i + 1, :n], suffix[i : i + 1, n:]  # class tokens, ". EOT.."
            c = ctx[i : i + 1]
            if self.class_token_position == "middle":
                parts = [prefix[i : i + 1], c[:, :half], name, c[:, half:], rest]
            else:  # front
                parts = [prefix[i : i + 1], name, c, rest]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0), tokens


@TRAINER_REGISTRY.register()
class CoOp(PromptTrainer):
    """Context Optimization; registered "prompt_learner" (only it is optimised and saved)."""

    prec_section = "COOP"
    model_name = "prompt_learner"

    @classmethod
    def build_custom_clip(cls, cfg, classnames: list[str], clip_model) -> PromptLearnerCLIP:
        c = cfg.TRAINER.COOP
        learner = CoOpPromptLearner(
            clip_model, classnames, c.N_CTX, c.CTX_INIT, c.CSC, c.CLASS_TOKEN_POSITION
        )
        return PromptLearnerCLIP(clip_model, learner)

    @staticmethod
    def registered_module(model: nn.Module) -> nn.Module:
        return model.prompt_learner
