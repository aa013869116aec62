"""PromptSRC (spec §2): IVLP prompts regularised towards frozen zero-shot CLIP, plus GPA.

Loss = CE + TEXT_LOSS_WEIGHT * L1(text) + IMAGE_LOSS_WEIGHT * L1(image) + KL(zs || prompted)
(``trainers.losses.promptsrc_loss``). Differences from the official code, on purpose:

* The zero-shot text features (mean of the UNnormalised features of the 60 ImageNet
  templates, as official) are computed once at build time in fp32 on the device and kept
  by the trainer, not recomputed and not saved.
* The zero-shot image features come from the prompted image encoder with its prompts
  switched off. Its frozen weights are CLIP's own, so this is exactly the official
  ``ZS_image_encoder`` without a second copy of the tower; official files carrying
  ``prompt_learner.ZS_image_encoder.*`` still load (those keys are ignored).
* Gaussian Prompt Aggregation weights and sums only the trainable prompt parameters
  (official bug 14: it summed the whole state dict, perturbing the frozen fp16 weights by
  rounding). The aggregate is loaded after the last epoch, before that epoch's checkpoint
  is written, so ``model.pth.tar-<MAX_EPOCH>`` holds the GPA prompts, as official. The
  running sum after every epoch is kept in ``<output>/gpa_state.pt`` so a resumed run
  aggregates correctly.
* fp32 / bf16 / amp work (official fp32 and amp crash).
"""

from __future__ import annotations

import torch
from torch import nn

from dassl_ext.config import Range, register_config_extension, register_config_rules
from dassl_ext.engine import TRAINER_REGISTRY
from dassl_ext.engine.hooks import HookBase, ParameterAveraging
from dassl_ext.errors import UserError
from dassl_ext.modeling import IMAGENET_TEMPLATES, tokenize_class_prompts
from trainers.base import l2_normalize
from trainers.losses import gpa_weights, promptsrc_loss
from trainers.vl_prompts import VLPromptCLIP, VLPromptTrainer, vl_prompt_rules, vl_prompt_section

GPA_FILE = "gpa_state.pt"


@register_config_extension
def add_promptsrc_config(cfg) -> None:
    """``TRAINER.PROMPTSRC`` with the official code defaults (spec §8)."""
    cfg.TRAINER.PROMPTSRC = vl_prompt_section(n_ctx=4)
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25.0
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10.0
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15.0
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1.0


register_config_rules(
    *vl_prompt_rules("TRAINER.PROMPTSRC"),
    Range("TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", 0),
    Range("TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT", 0),
    Range("TRAINER.PROMPTSRC.GPA_STD", 0, low_open=True, note="the width of the GPA weights"),
)


@torch.no_grad()
def zero_shot_text_features(
    clip_model, text_encoder: nn.Module, classnames: list[str], templates: list[str]
) -> torch.Tensor:
    """Mean over templates of the UNnormalised frozen CLIP text features (C, E), as official.
    ``text_encoder`` is a ``PromptedTextEncoder`` with its deep prompts switched off, so this
    is ``clip_model.encode_text``. One template at a time keeps memory at (C, 77, D)."""
    embedding = clip_model.token_embedding
    device = embedding.weight.device
    names = [c.replace("_", " ") for c in classnames]
    total = None
    for template in templates:
        prompts = [template.format(n) for n in names]
        tokens = tokenize_class_prompts(prompts, classnames).to(device)
        feats = text_encoder(embedding(tokens), tokens, deep_prompts=[]).float()
        total = feats if total is None else total + feats
    return total / len(templates)


def zero_shot_image_features(model: VLPromptCLIP, images: torch.Tensor) -> torch.Tensor:
    """Normalised features of the frozen CLIP image tower: the prompted encoder, prompts off."""
    encoder = model.image_encoder
    no_prompt = images.new_zeros(0, encoder.conv1.out_channels)  # zero prompt tokens
    return l2_normalize(encoder(images, first_prompt=no_prompt, deep_prompts=[]))


@TRAINER_REGISTRY.register()
class PromptSRC(VLPromptTrainer):
    """PromptSRC (the paper's teacher); registered "VLPromptLearner" (same keys as IVLP,
    spec §2.6)."""

    prec_section = "PROMPTSRC"

    def after_build(self, clip_model) -> None:
        clip_model.token_embedding.to(self.device)
        feats = zero_shot_text_features(
            clip_model, self.model.text_encoder, list(self.classnames), IMAGENET_TEMPLATES
        )
        clip_model.token_embedding.to("cpu")
        self.zs_text_features = l2_normalize(feats)  # (C, E) fp32, normalised once
        src = self.cfg.TRAINER.PROMPTSRC
        try:
            self.gpa_weights = gpa_weights(float(src.GPA_MEAN), float(src.GPA_STD), self.max_epoch)
        except ValueError as e:
            raise UserError(f"TRAINER.PROMPTSRC.GPA_MEAN / GPA_STD: {e}") from None

    # ------------------------------------------------------------------ training
    def forward_backward(self, batch: dict) -> dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        src = self.cfg.TRAINER.PROMPTSRC
        model = self.model
        with self.prec.autocast():
            logits, text, image = self.training_module()(images, with_features=True)
            with torch.no_grad():  # frozen CLIP: outside the trained forward
                zs_image = zero_shot_image_features(model, images)
                zs_text = self.zs_text_features.to(zs_image.dtype)
                zs_logits = model.logit_scale.exp() * zs_image @ zs_text.t()
        loss, parts = promptsrc_loss(
            logits.float(),
            labels,
            text.float(),
            self.zs_text_features,
            image.float(),
            zs_image.float(),
            zs_logits.float(),
            text_weight=float(src.TEXT_LOSS_WEIGHT),
            image_weight=float(src.IMAGE_LOSS_WEIGHT),
        )
        self.model_backward_and_update(loss)
        acc = (logits.argmax(dim=1) == labels).float().mean().item() * 100
        return {"loss": loss.item(), **{k: v.item() for k, v in parts.items()}, "acc": acc}

    # ------------------------------------------------------------------ GPA
    def build_hooks(self) -> list[HookBase]:
        """GPA runs after each epoch before model selection and checkpointing (its priority
        is NORMAL), so those see (and ``model.pth.tar-<MAX_EPOCH>`` holds) the aggregated
        prompts, as official."""
        gpa = ParameterAveraging(
            self.gpa_weights, self.model.trainable_parameters(), GPA_FILE, name="GPA"
        )
        return [*super().build_hooks(), gpa]
