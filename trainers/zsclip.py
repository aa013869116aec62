"""Zero-shot CLIP (spec §4): no training; class vectors from hand-written templates,
computed once on the device when the trainer is built. Run with ``--eval-only`` and a CoOp
config (its ``TRAINER.COOP.PREC`` and backbone apply), as the official ``zeroshot.sh``.

Any open_clip model (``open_clip:<model>:<weights>``) works: an OpenAI-shaped one as the
project's CLIP, any other through open_clip's own towers and tokenizer
(:class:`OpenClipZeroshotModel`). INPUT.SIZE must be the model's resolution; batches
normalised otherwise than the model's own normalisation are re-normalised (exact)."""

from __future__ import annotations

import logging

import torch

from dassl_ext.engine import TRAINER_REGISTRY, TeacherSupport, TrainerX
from dassl_ext.errors import UserError
from dassl_ext.modeling import (
    CUSTOM_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
    OpenClipNative,
    PromptedTextEncoder,
    cast_frozen_weights,
    clip_root_from_cfg,
    load_zero_shot_clip,
    tokenize_class_prompts,
)
from dassl_ext.modeling.text_prompts import CONTEXT_LENGTH, check_class_names, token_count
from trainers.base import CLIPClassifier, ForwardInference, check_clip_model, l2_normalize

logger = logging.getLogger(__name__)


def custom_template(dataset_name: str) -> str:
    """CoOp's template for a dataset; "a photo of a {}." for datasets it does not list."""
    if dataset_name not in CUSTOM_TEMPLATES:
        logger.warning(f"No CoOp template for dataset {dataset_name!r}; using 'a photo of a {{}}.'")
    return CUSTOM_TEMPLATES.get(dataset_name, "a photo of a {}.")


def log_class_prompts(classnames: list[str], class_prompts: list[str | None] | None) -> None:
    """Say which classes use the dataset's own prompt instead of the template(s)."""
    own = [(name, p) for name, p in zip(classnames, class_prompts or []) if p]
    if own:
        shown = "; ".join(f"{name!r}: {p!r}" for name, p in own[:3])
        more = f"; and {len(own) - 3} more" if len(own) > 3 else ""
        logger.info(
            f"{len(own)} of {len(classnames)} classes use the dataset's own prompt instead of "
            f"the template(s): {shown}{more}"
        )


class ZeroshotModel(CLIPClassifier):
    """Frozen CLIP whose class vectors are the normalised mean of the normalised features of
    ``templates`` (one template: plain zero-shot CLIP). ``class_prompts`` (one per class, "{}"
    for the name, or None): a class's own prompt replaces every template, so its vector is
    that one prompt's."""

    text_side = ("text_encoder", "token_embedding")
    checks_token_count = True  # CLIP's 77 tokens (open_clip's own tokenizers truncate)

    def __init__(
        self,
        clip_model,
        classnames: list[str],
        templates: list[str],
        class_prompts: list[str | None] | None = None,
    ):
        super().__init__()
        self.set_towers(clip_model)
        self.classnames, self.templates = list(classnames), list(templates)
        self.class_prompts = list(class_prompts or [None] * len(self.classnames))
        if len(self.class_prompts) != len(self.classnames):
            raise ValueError(
                f"{len(self.class_prompts)} class prompts for {len(self.classnames)} classes."
            )
        self._text: torch.Tensor | None = None  # cached on first use (on the model's device)

    def set_towers(self, clip_model) -> None:
        """The image tower, text side (``text_side``) and logit scale of ``clip_model``."""
        self.image_encoder = clip_model.visual
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.token_embedding = clip_model.token_embedding
        self.logit_scale = clip_model.logit_scale

    def encode_prompts(self, prompts: list[str], names: list[str]) -> torch.Tensor:
        """Unnormalised text features (C, E) of one prompt per class (``names``, same order)."""
        tokens = tokenize_class_prompts(prompts, names).to(self.token_embedding.weight.device)
        return self.text_encoder(self.token_embedding(tokens), tokens)

    def _encode(self, template: str | None, ids: list[int]) -> torch.Tensor:
        """Normalised features of classes ``ids``, each in ``template`` (None: its own prompt)."""
        names = [self.classnames[i] for i in ids]
        prompts = [
            (template or self.class_prompts[i]).format(name.replace("_", " "))
            for i, name in zip(ids, names)
        ]
        if template is None and self.checks_token_count:
            for i, prompt in zip(ids, prompts):
                if token_count(prompt) > CONTEXT_LENGTH:
                    raise UserError(
                        f"Class {i} {self.classnames[i]!r}: its own prompt {prompt!r} is "
                        f"{token_count(prompt)} tokens, and CLIP's text encoder reads at most "
                        f"{CONTEXT_LENGTH}; shorten it in the dataset's class file."
                    )
        return l2_normalize(self.encode_prompts(prompts, names))

    @torch.no_grad()
    def text_features(self, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self._text is None:
            own = [i for i, p in enumerate(self.class_prompts) if p]
            rest = [i for i, p in enumerate(self.class_prompts) if not p]
            text = torch.empty(0)
            if rest:
                feats = [self._encode(t, rest) for t in self.templates]
                text = l2_normalize(torch.stack(feats).float().mean(dim=0))
            if own:  # one prompt: as one template (its normalised feature, normalised again)
                own_text = l2_normalize(self._encode(None, own).float())
                if not rest:
                    text = own_text
                else:
                    full = text.new_empty(len(self.classnames), text.shape[1])
                    full[rest], full[own] = text, own_text
                    text = full
            self._text = text
        return self._text if class_ids is None else self._text[class_ids.to(self._text.device)]


class OpenClipZeroshotModel(ZeroshotModel):
    """:class:`ZeroshotModel` of an open_clip model that is not OpenAI-shaped, run by open_clip
    (:class:`~dassl_ext.modeling.OpenClipNative`: its image tower, its ``encode_text``
    with its own tokenizer, which truncates to its context length); logits add its
    ``logit_bias`` when it has one (SigLIP-class models)."""

    text_side = ("text_encoder",)
    checks_token_count = False

    def set_towers(self, clip_model: OpenClipNative) -> None:
        self.image_encoder = clip_model.visual
        self.text_encoder = clip_model.text
        self.logit_scale = clip_model.logit_scale
        self.logit_bias = clip_model.logit_bias
        self._resolution = clip_model.input_resolution
        self.image_encoder.image_mean = clip_model.image_mean
        self.image_encoder.image_std = clip_model.image_std

    @property
    def input_resolution(self) -> int:
        return self._resolution

    def encode_prompts(self, prompts: list[str], names: list[str]) -> torch.Tensor:
        check_class_names(names)
        return self.text_encoder(prompts)

    def forward(self, images: torch.Tensor, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        logits = super().forward(images, class_ids)
        return logits if self.logit_bias is None else logits + self.logit_bias.to(logits.dtype)


@TRAINER_REGISTRY.register()
class ZeroshotCLIP(ForwardInference, TrainerX):
    """Zero-shot CLIP with CoOp's per-dataset template; evaluation only."""

    prec_section = "COOP"
    frozen_teacher = TeacherSupport(needs_checkpoint=False)  # CLIP itself teaches
    evaluation_only = True

    @classmethod
    def templates(cls, cfg) -> list[str]:
        return [custom_template(cfg.DATASET.NAME)]

    @classmethod
    def build_frozen_model(
        cls,
        cfg,
        classnames: list[str],
        backbone: str,
        checkpoint: str | None,
        class_prompts: list[str | None] | None = None,
    ) -> ZeroshotModel:
        """Zero-shot CLIP for ``classnames`` (frozen, eval, CPU fp32); nothing to load.
        ``class_prompts``: per class its own prompt ("{}" for the name), or None: the
        template(s)."""
        if checkpoint:
            raise UserError(f"{cls.__name__} has no weights to load; got checkpoint {checkpoint}.")
        clip_model = load_zero_shot_clip(backbone, clip_root_from_cfg(cfg))
        native = isinstance(clip_model, OpenClipNative)
        model_cls = OpenClipZeroshotModel if native else ZeroshotModel
        model = model_cls(clip_model, classnames, cls.templates(cfg), class_prompts)
        model.expect_input(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
        return model.requires_grad_(False).eval()

    @classmethod
    def check_config(cls, cfg) -> None:
        """Before any work: INPUT.SIZE against the backbone's, read from its weights."""
        check_clip_model(cfg, "MODEL.BACKBONE.NAME")

    def build_model(self) -> None:
        backbone = self.cfg.MODEL.BACKBONE.NAME
        logger.info(f"Loading CLIP (backbone: {backbone})")
        log_class_prompts(self.classnames, self.class_prompts)
        self.model = self.build_frozen_model(
            self.cfg, self.classnames, backbone, None, self.class_prompts
        )
        self.model.to(self.device)
        cast_frozen_weights(self.model, self.prec.weight_dtype)
        with self.prec.autocast():
            self.model.text_features()  # once, now

    def forward_backward(self, batch: dict) -> dict[str, float]:
        raise UserError(f"{type(self).__name__} has nothing to train; run it with --eval-only.")


@TRAINER_REGISTRY.register()
class ZeroshotCLIP2(ZeroshotCLIP):
    """Zero-shot CLIP with an ensemble: the 7 selected ImageNet templates plus the dataset's
    own (except for ImageNet), averaged after normalisation (without mutating the shared
    list: official bug 19)."""

    @classmethod
    def templates(cls, cfg) -> list[str]:
        templates = list(IMAGENET_TEMPLATES_SELECT)
        if cfg.DATASET.NAME != "ImageNet":
            templates.append(custom_template(cfg.DATASET.NAME))
        return templates
