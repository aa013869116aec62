"""The CLIP with independent vision-language deep prompts (spec §1.2) that IVLP and
PromptSRC train, and PromptKD's default teacher is: shared by those trainers, owned by none.

Its state-dict keys are the official ones: ``prompt_learner.ctx``, ``image_encoder.*``
(incl. ``VPT`` and ``transformer.resblocks.{i}.VPT_shallow``), ``text_encoder.*`` and
``logit_scale``. The token prefix/suffix buffers are not saved (non-persistent): they are
rebuilt from the class names, so prompts trained on base classes evaluate on new ones.
"""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl_ext.config import Range, Rule
from dassl_ext.modeling import (
    ClipSizes,
    PromptedImageEncoder,
    PromptedTextEncoder,
    assemble_prompts,
    init_ctx_from_words,
)
from trainers.base import (
    CLIPClassifier,
    l2_normalize,
    register_prompt_buffers,
    select_prompt_buffers,
)


def vl_prompt_section(n_ctx: int) -> CN:
    """The keys ``VLPromptCLIP.from_section`` reads (``TRAINER.IVLP`` / ``TRAINER.PROMPTSRC``),
    with the official defaults: ``n_ctx`` vision and text prompts, depth 9 in both towers."""
    section = CN()
    section.N_CTX_VISION = n_ctx
    section.N_CTX_TEXT = n_ctx
    section.CTX_INIT = "a photo of a"
    section.PREC = "fp16"
    section.PROMPT_DEPTH_VISION = 9
    section.PROMPT_DEPTH_TEXT = 9
    return section


def vl_prompt_rules(prefix: str) -> list[Rule]:
    """Ranges of the ``vl_prompt_section`` keys under ``prefix`` (``TRAINER.IVLP`` ...)."""
    return [
        Range(f"{prefix}.N_CTX_VISION", 1, integer=True),
        Range(f"{prefix}.N_CTX_TEXT", 1, integer=True),
        Range(f"{prefix}.PROMPT_DEPTH_VISION", 0, integer=True, note="0: no visual prompts"),
        Range(f"{prefix}.PROMPT_DEPTH_TEXT", 0, integer=True),
    ]


def vl_prompt_model_rules(prefix: str, sizes: ClipSizes) -> list[Rule]:
    """The prompt depths under ``prefix`` fit the layers of a CLIP of ``sizes`` (a ResNet
    image tower has no vision limit here: the prompted encoder says it needs a ViT)."""
    towers = [("TEXT", "text", sizes.text_layers), ("VISION", "vision", sizes.vision_layers)]
    note = "the {} layers of " + sizes.name
    return [
        Range(f"{prefix}.PROMPT_DEPTH_{key}", 0, n, integer=True, note=note.format(tower))
        for key, tower, n in towers
        if n is not None
    ]


class VLPromptLearner(nn.Module):
    """Layer-0 text context ``ctx`` (n, D_text) and the per-class token buffers."""

    def __init__(self, clip_model, classnames: list[str], n_ctx: int, ctx_init: str):
        super().__init__()
        ctx, prefix = init_ctx_from_words(clip_model, ctx_init, n_ctx, max_word_ctx=4)
        self.ctx = nn.Parameter(ctx)  # fp32 master weights at every precision
        self.prompt_prefix = prefix
        register_prompt_buffers(self, clip_model, classnames, prefix, ctx.shape[0])

    def forward(self, class_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings (C', 77, D) and token ids (C', 77) of the selected classes."""
        prefix, suffix, tokens = select_prompt_buffers(self, class_ids)
        return assemble_prompts(prefix, self.ctx, suffix), tokens


class VLPromptCLIP(CLIPClassifier):
    """CLIP with independent deep prompts in both towers (IVLP, PromptSRC, PromptKD teacher)."""

    text_side = ("text_encoder", "prompt_learner")

    def __init__(
        self,
        clip_model,
        classnames: list[str],
        n_ctx_vision: int,
        n_ctx_text: int,
        depth_vision: int,
        depth_text: int,
        ctx_init: str,
    ):
        super().__init__()
        self.image_encoder = PromptedImageEncoder(clip_model.visual, n_ctx_vision, depth_vision)
        self.text_encoder = PromptedTextEncoder(clip_model, n_ctx_text, depth_text)
        self.prompt_learner = VLPromptLearner(clip_model, classnames, n_ctx_text, ctx_init)
        self.logit_scale = clip_model.logit_scale

    @classmethod
    def from_section(cls, section: CN, classnames: list[str], clip_model) -> VLPromptCLIP:
        """The model configured by ``TRAINER.IVLP`` or ``TRAINER.PROMPTSRC``."""
        return cls(
            clip_model,
            classnames,
            n_ctx_vision=section.N_CTX_VISION,
            n_ctx_text=section.N_CTX_TEXT,
            depth_vision=section.PROMPT_DEPTH_VISION,
            depth_text=section.PROMPT_DEPTH_TEXT,
            ctx_init=section.CTX_INIT,
        )

    def trainable_parameters(self) -> list[nn.Parameter]:
        """ctx, the layer-0 visual prompt and the deep prompts of both towers."""
        params = [self.prompt_learner.ctx]
        if hasattr(self.image_encoder, "VPT"):
            params.append(self.image_encoder.VPT)
        return params + self.image_encoder.deep_prompts() + self.text_encoder.deep_prompts()

    def text_features(self, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised prompted text features (C', E)."""
        prompts, tokens = self.prompt_learner(class_ids)
        return l2_normalize(self.text_encoder(prompts, tokens))
