"""The prompt learner and prompted CLIP that the prompt trainers share (owned by none), and
the CLIP with independent vision-language deep prompts (spec §1.2) that IVLP and PromptSRC
train and PromptKD's default teacher is.

State-dict keys are the official ones: ``prompt_learner.ctx``, ``image_encoder.*`` (incl.
``VPT`` and ``transformer.resblocks.{i}.VPT_shallow``), ``text_encoder.*``, ``logit_scale``.
The token prefix/suffix buffers are not saved: they are rebuilt from the class names, so
prompts trained on base classes evaluate on new ones.
"""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode as CN

from dassl_ext.config import Range, Rule
from dassl_ext.engine import TeacherSupport
from dassl_ext.modeling import (
    ClipSizes,
    PromptedImageEncoder,
    PromptedTextEncoder,
    assemble_prompts,
    init_ctx_from_words,
)
from trainers.base import (
    CLIPClassifier,
    PromptTrainer,
    l2_normalize,
    register_prompt_buffers,
    select_prompt_buffers,
)


def vl_prompt_section(n_ctx: int) -> CN:
    """The keys ``VLPromptCLIP.from_section`` reads (``TRAINER.IVLP`` / ``TRAINER.PROMPTSRC``),
    with the official defaults: ``n_ctx`` vision and text prompts, depth 9 in both towers."""
    return CN(
        {"N_CTX_VISION": n_ctx, "N_CTX_TEXT": n_ctx, "CTX_INIT": "a photo of a", "PREC": "fp16",
         "PROMPT_DEPTH_VISION": 9, "PROMPT_DEPTH_TEXT": 9}
    )  # fmt: skip


def vl_prompt_rules(prefix: str) -> list[Rule]:
    """Ranges of the ``vl_prompt_section`` keys under ``prefix`` (``TRAINER.IVLP`` ...)."""
    return [
        Range(f"{prefix}.N_CTX_VISION", 1, integer=True),
        Range(f"{prefix}.N_CTX_TEXT", 1, integer=True),
        Range(f"{prefix}.PROMPT_DEPTH_VISION", 0, integer=True, note="0: no visual prompts"),
        Range(f"{prefix}.PROMPT_DEPTH_TEXT", 0, integer=True),
    ]


class TextPromptLearner(nn.Module):
    """Layer-0 text context ``ctx``, shared (n, D) or per class (C, n, D), and the per-class
    token buffers (``register_prompt_buffers``)."""

    def __init__(self, clip_model, classnames: list[str], ctx: torch.Tensor, prompt_prefix: str):
        super().__init__()
        self.ctx = nn.Parameter(ctx)  # fp32 master weights at every precision
        register_prompt_buffers(self, clip_model, classnames, prompt_prefix, ctx.shape[-2])

    def forward(self, class_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings (C', 77, D) and token ids (C', 77) of the selected classes."""
        prefix, suffix, tokens = select_prompt_buffers(self, class_ids)
        ctx = self.ctx if class_ids is None or self.ctx.dim() == 2 else self.ctx[class_ids]
        return assemble_prompts(prefix, ctx, suffix), tokens


class PromptLearnerCLIP(CLIPClassifier):
    """Frozen CLIP whose class vectors come from ``prompt_learner`` through ``text_encoder``
    (default: CLIP's towers without prompts); learns the prompt learner's parameters."""

    text_side = ("text_encoder", "prompt_learner")

    def __init__(self, clip_model, prompt_learner: nn.Module, image=None, text=None):
        super().__init__()
        self.image_encoder = clip_model.visual if image is None else image
        self.text_encoder = PromptedTextEncoder(clip_model) if text is None else text
        self.prompt_learner = prompt_learner
        self.logit_scale = clip_model.logit_scale

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.prompt_learner.parameters())

    def text_features(self, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised prompted text features (C', E)."""
        return l2_normalize(self.text_encoder(*self.prompt_learner(class_ids)))


class VLPromptCLIP(PromptLearnerCLIP):
    """CLIP with independent deep prompts in both towers (IVLP, PromptSRC, PromptKD teacher)."""

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
        # The construction order (and so the RNG's) of the official code.
        image = PromptedImageEncoder(clip_model.visual, n_ctx_vision, depth_vision)
        text = PromptedTextEncoder(clip_model, n_ctx_text, depth_text)
        ctx = init_ctx_from_words(clip_model, ctx_init, n_ctx_text, max_word_ctx=4)
        super().__init__(clip_model, TextPromptLearner(clip_model, classnames, *ctx), image, text)

    @classmethod
    def from_section(cls, section: CN, classnames: list[str], clip_model) -> VLPromptCLIP:
        """The model configured by ``TRAINER.IVLP`` or ``TRAINER.PROMPTSRC``."""
        s = section
        return cls(
            clip_model, classnames, s.N_CTX_VISION, s.N_CTX_TEXT, s.PROMPT_DEPTH_VISION,
            s.PROMPT_DEPTH_TEXT, s.CTX_INIT,
        )  # fmt: skip

    def trainable_parameters(self) -> list[nn.Parameter]:
        """ctx, the layer-0 visual prompt and the deep prompts of both towers."""
        params = [self.prompt_learner.ctx]
        if hasattr(self.image_encoder, "VPT"):
            params.append(self.image_encoder.VPT)
        return params + self.image_encoder.deep_prompts() + self.text_encoder.deep_prompts()


class VLPromptTrainer(PromptTrainer):
    """Trains a ``VLPromptCLIP`` configured by ``TRAINER.<prec_section>`` (IVLP, PromptSRC);
    registered "VLPromptLearner", as official, and a teacher for PromptKD."""

    model_name = "VLPromptLearner"
    frozen_teacher = TeacherSupport(default_model_name="VLPromptLearner")

    @classmethod
    def build_custom_clip(cls, cfg, classnames: list[str], clip_model) -> VLPromptCLIP:
        return VLPromptCLIP.from_section(cfg.TRAINER[cls.prec_section], classnames, clip_model)

    @classmethod
    def model_rules(cls, cfg, sizes: ClipSizes) -> list[Rule]:
        """The prompt depths fit the layers of a CLIP of ``sizes`` (a ResNet image tower has no
        vision limit here: the prompted encoder says it needs a ViT)."""
        towers = [("TEXT", "text", sizes.text_layers), ("VISION", "vision", sizes.vision_layers)]
        prefix, note = f"TRAINER.{cls.prec_section}.PROMPT_DEPTH_", "the {} layers of " + sizes.name
        return [
            Range(prefix + key, 0, layers, integer=True, note=note.format(tower))
            for key, tower, layers in towers
            if layers is not None
        ]
