"""What the CLIP prompt-learning trainers share: the model base class, prompt buffers,
building, freezing, evaluation, loading.

A method provides ``build_custom_clip(cfg, classnames, clip_model)`` returning a
:class:`CLIPClassifier` with

* ``forward(images, class_ids=None) -> logits`` (B, C'), the training forward (under
  torchrun it runs in DistributedDataParallel), and ``logit_scale`` (raw parameter);
* ``trainable_parameters()``: the parameters the method learns (module membership);
* ``text_features(class_ids=None)`` / ``image_features(images)`` (L2-normalised) unless its
  text side depends on the image (CoCoOp);

and ``registered_module(model)``: the part registered with the engine and saved (the
whole model, or CoOp's ``prompt_learner``), whose state-dict keys are the official ones.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch import nn

from dassl_ext.config import Check, Rule, check_rules
from dassl_ext.engine import TeacherSupport, TrainerX
from dassl_ext.errors import UserError
from dassl_ext.modeling import (
    ClipSizes,
    build_prompt_buffers,
    cast_frozen_weights,
    clip_root_from_cfg,
    clip_sizes,
    load_clip,
    renormalize,
    set_trainable,
)
from dassl_ext.modeling.openclip import not_openai_shaped_message
from dassl_ext.optim import build_lr_scheduler, build_optimizer
from dassl_ext.utils.checkpoint import load_weights

logger = logging.getLogger(__name__)

# Rebuilt from the class names on load, so base-trained prompts evaluate on new classes.
REBUILT_KEYS = ("token_prefix", "token_suffix")
# PromptSRC's frozen zero-shot copy of the vision tower in official files: the same weights
# as the (frozen) prompted image encoder, so it is not kept; ignored when present.
IGNORED_PREFIXES = ("prompt_learner.ZS_image_encoder.", "ZS_image_encoder.")


def check_clip_model(cfg, key: str, trainer_cls: type | None = None) -> None:
    """Before any work: INPUT.SIZE, and ``trainer_cls.model_rules`` (prompt depths ...),
    against the sizes of the CLIP that config ``key`` names (read from its weights file). An
    open_clip model: a trainer that learns needs it OpenAI-shaped and INPUT.PIXEL_MEAN / STD
    its normalisation (an evaluation-only trainer re-normalises: ``CLIPClassifier``)."""
    name = functools.reduce(getattr, key.split("."), cfg)
    sizes = clip_sizes(name, clip_root_from_cfg(cfg))
    res = sizes.input_resolution
    size_rule = Check(
        "INPUT.SIZE",
        lambda v: ((v, v) if isinstance(v, int) else tuple(v)) == (res, res),
        f"use ({res}, {res})",
        note=f"the input resolution of {key} {name}",
    )
    rules = [size_rule]
    learns = trainer_cls is not None and not getattr(trainer_cls, "evaluation_only", False)
    if learns:
        check_open_clip_support(sizes, trainer_cls)
    if learns and sizes.image_mean is not None:
        for what, value in (("MEAN", sizes.image_mean), ("STD", sizes.image_std)):
            rules.append(
                Check(
                    f"INPUT.PIXEL_{what}",
                    lambda v, value=value: _close(v, value),
                    f"use {list(value)}",
                    note=f"the normalisation of {key} {name}",
                )
            )
    model_rules = getattr(trainer_cls, "model_rules", None)
    check_rules(cfg, [*rules, *(model_rules(cfg, sizes) if model_rules else [])])


def check_open_clip_support(sizes: ClipSizes, trainer_cls: type) -> None:
    """One sentence when ``trainer_cls`` (one that prompts or trains a CLIP) is given an
    open_clip model that is not OpenAI-shaped (only the zero-shot trainers run those)."""
    if sizes.openai_shape_issue is not None and not getattr(trainer_cls, "evaluation_only", False):
        raise UserError(
            f"{trainer_cls.__name__}: "
            + not_openai_shaped_message(sizes.name, sizes.openai_shape_issue)
        )


def _close(values, target, tol: float = 1e-6) -> bool:
    values = list(values)
    return len(values) == len(target) and all(
        abs(float(a) - b) <= tol for a, b in zip(values, target)
    )


def drop_rebuilt_keys(state_dict: dict) -> dict:
    """``state_dict`` without token prefix/suffix buffers and official ZS-encoder copies."""
    return {
        k: v
        for k, v in state_dict.items()
        if k.rsplit(".", 1)[-1] not in REBUILT_KEYS and not k.startswith(IGNORED_PREFIXES)
    }


def register_prompt_buffers(
    learner: nn.Module, clip_model, classnames: list[str], prompt_prefix: str, n_ctx: int
) -> None:
    """A prompt learner's class-name buffers (not saved: ``REBUILT_KEYS``): ``tokenized_prompts``
    (C, 77), ``token_prefix`` (C, 1, D) SOS, ``token_suffix`` (C, 77-1-n_ctx, D)."""
    tokenized, prefix, suffix = build_prompt_buffers(clip_model, classnames, prompt_prefix, n_ctx)
    learner.register_buffer("tokenized_prompts", tokenized, persistent=False)
    learner.register_buffer("token_prefix", prefix, persistent=False)
    learner.register_buffer("token_suffix", suffix, persistent=False)


def select_prompt_buffers(
    learner: nn.Module, class_ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``token_prefix``, ``token_suffix``, ``tokenized_prompts`` of the selected classes
    (all when ``class_ids`` is None)."""
    prefix, suffix, tokens = learner.token_prefix, learner.token_suffix, learner.tokenized_prompts
    if class_ids is not None:
        prefix, suffix, tokens = prefix[class_ids], suffix[class_ids], tokens[class_ids]
    return prefix, suffix, tokens


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """``x / ||x||`` along the last dimension (CLIP's feature normalisation)."""
    return x / x.norm(dim=-1, keepdim=True)


def image_dtype(visual: nn.Module) -> torch.dtype:
    """Dtype of a CLIP image tower's (possibly cast) frozen weights (ViT or ResNet; another
    open_clip tower: its first floating-point parameter's)."""
    conv1 = getattr(visual, "conv1", None)
    if isinstance(conv1, nn.Module):
        return conv1.weight.dtype
    return next(p.dtype for p in visual.parameters() if p.is_floating_point())


class CLIPClassifier(nn.Module):
    """Base of the trainers' CLIP models, which are also frozen teachers
    (:class:`~dassl_ext.engine.teacher.FrozenTeacher`). A subclass sets ``image_encoder``,
    ``text_encoder``, ``logit_scale`` (raw) and implements ``text_features(class_ids)``."""

    image_encoder: nn.Module
    text_encoder: nn.Module
    logit_scale: nn.Parameter
    text_side: tuple[str, ...] = ("text_encoder",)  # what drop_text_tower frees
    # (data mean, data std, own mean, own std): set by expect_input when an open_clip model's
    # own normalisation (``image_mean`` / ``image_std`` on its image tower) differs
    renormalization: tuple[tuple[float, ...], ...] | None = None

    @property
    def input_resolution(self) -> int:
        return self.image_encoder.input_resolution

    def expect_input(self, mean, std) -> None:
        """Batches come normalised with ``mean`` / ``std`` (config INPUT.PIXEL_MEAN / STD): an
        open_clip model with its own normalisation re-normalises them (exact) in
        ``model_input``; nothing changes for OpenAI's models."""
        given = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
        own_mean = getattr(self.image_encoder, "image_mean", None)
        own = None if own_mean is None else (tuple(own_mean), tuple(self.image_encoder.image_std))
        self.renormalization = None
        if own is not None and not (_close(given[0], own[0]) and _close(given[1], own[1])):
            logger.info(
                f"The images (normalised with mean {list(given[0])}, std {list(given[1])}) are "
                f"re-normalised to the model's own (mean {list(own[0])}, std {list(own[1])})"
            )
            self.renormalization = (*given, *own)

    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` as the image tower takes them (re-normalised: ``expect_input``)."""
        if self.renormalization is None:
            return images
        return renormalize(images, *self.renormalization)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the method learns (chosen by module membership)."""
        raise NotImplementedError

    def text_features(self, class_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised class vectors (C', E) of the selected classes (all when None)."""
        raise NotImplementedError

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The image tower's output (B, E) before normalisation, in its compute dtype."""
        images = self.model_input(images).to(image_dtype(self.image_encoder))
        return self.image_encoder(images)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised image features (B, E)."""
        return l2_normalize(self.image_embedding(images))

    def forward(
        self,
        images: torch.Tensor,
        class_ids: torch.Tensor | None = None,
        with_features: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits (B, C') = exp(logit_scale) * img @ txt^T; ``with_features``: also the text
        (C', E) and image (B, E) features, for losses on them (PromptSRC) in one forward."""
        text = self.text_features(class_ids)
        image = self.image_features(images)
        logits = self.logit_scale.exp() * image @ text.to(image.dtype).t()  # cached text: fp32
        return (logits, text, image) if with_features else logits

    def drop_text_tower(self) -> None:
        """Free the text side (PromptKD keeps only the image side of a frozen teacher)."""
        for name in self.text_side:
            delattr(self, name)


class ForwardInference:
    """``model_inference`` by the model's own forward over the evaluated classes, for models
    without separate text features to cache (CoCoOp) or with them cached inside (zero-shot)."""

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        with self.prec.autocast():
            return self.model(images, self.eval_class_ids).float()


class PromptTrainer(TrainerX):
    """TrainerX with the shared build / CE step / cached-text evaluation / loading logic."""

    model_name = "VLPromptLearner"  # registered name: the checkpoint folder
    frozen_teacher = TeacherSupport()  # a trained checkpoint teaches (PromptKD)

    # ------------------------------------------------------------------ method hooks
    @classmethod
    def build_custom_clip(cls, cfg, classnames: list[str], clip_model) -> CLIPClassifier:
        raise NotImplementedError

    @classmethod
    def model_rules(cls, cfg, sizes: ClipSizes) -> list[Rule]:
        """Rules the method's config must meet on a CLIP of these sizes (prompt depth <=
        layers ...); checked before any work, for the backbone and when it is a teacher."""
        return []

    @staticmethod
    def registered_module(model: nn.Module) -> nn.Module:
        """The part of the model that is registered, optimised and saved."""
        return model

    def after_build(self, clip_model) -> None:
        """Hook: runs on the device, before the frozen weights are cast (fp32)."""

    # ------------------------------------------------------------------ building
    @classmethod
    def check_config(cls, cfg) -> None:
        """Before any work (called by ``validate_config``): the config against the sizes of
        the CLIP it will load, read from its weights (no model is built)."""
        check_clip_model(cfg, "MODEL.BACKBONE.NAME", cls)

    def build_model(self) -> None:
        cfg = self.cfg
        logger.info(f"Loading CLIP (backbone: {cfg.MODEL.BACKBONE.NAME})")
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, clip_root_from_cfg(cfg))
        logger.info("Building custom CLIP")
        self.model = self.build_custom_clip(cfg, list(self.classnames), clip_model)
        params = self.model.trainable_parameters()
        names = set_trainable(self.model, params)
        logger.info(f"Parameters to be updated: {names}")
        logger.info(f"Parameters count: {sum(p.numel() for p in params):,}")
        if cfg.MODEL.INIT_WEIGHTS:
            self.load_trained(self.model, cfg.MODEL.INIT_WEIGHTS)
        self.model.to(self.device)
        self.after_build(clip_model)
        cast_frozen_weights(self.model, self.prec.weight_dtype)  # trainable stay fp32
        self.model.logit_scale.data = self.model.logit_scale.data.float()  # fp32 as official
        self.optim = build_optimizer(params, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        saved = self.registered_module(self.model)
        self.register_model(self.model_name, saved, self.optim, self.sched, self.model)
        self._eval_text: torch.Tensor | None = None

    @classmethod
    def build_frozen_model(
        cls, cfg, classnames: list[str], backbone: str, checkpoint: str | None
    ) -> CLIPClassifier:
        """The model this trainer trains, with ``checkpoint`` loaded: frozen, eval, CPU, fp32
        (a :class:`~dassl_ext.engine.teacher.FrozenTeacher`)."""
        clip_model = load_clip(backbone, clip_root_from_cfg(cfg))
        model = cls.build_custom_clip(cfg, list(classnames), clip_model)
        if checkpoint:
            cls.load_trained(model, checkpoint)
        model.expect_input(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)
        return model.requires_grad_(False).eval()

    @classmethod
    def load_trained(cls, model: CLIPClassifier, path: str) -> None:
        """Load a checkpoint of this trainer into ``model``, strictly (see ``load_weights``)."""
        load_weights(cls.registered_module(model), path, select=drop_rebuilt_keys)

    # ------------------------------------------------------------------ training
    def forward_backward(self, batch: dict) -> dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        with self.prec.autocast():
            logits = self.training_module()(images)
        loss = F.cross_entropy(logits.float(), labels)
        self.model_backward_and_update(loss)
        acc = (logits.argmax(dim=1) == labels).float().mean().item() * 100
        return {"loss": loss.item(), "acc": acc}

    # ------------------------------------------------------------------ evaluation
    def evaluate_split(self, split: str):
        """As the engine's, with the text features computed once per split, not per batch
        (the prompts do not change during an evaluation)."""
        self._eval_text = None
        try:
            return super().evaluate_split(split)
        finally:
            self._eval_text = None

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        with self.prec.autocast():
            if self._eval_text is None:
                self._eval_text = self.model.text_features(self.eval_class_ids)
            image = self.model.image_features(images)
            return (self.model.logit_scale.exp() * image @ self._eval_text.t()).float()

    filter_state_dict_on_load = staticmethod(drop_rebuilt_keys)
