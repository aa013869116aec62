"""IVLP: independent vision-language deep prompts (spec §1.2, §4); CE loss only.

The model (:class:`~trainers.vl_prompts.VLPromptCLIP`) is also PromptSRC's and the PromptKD
teacher's; its state-dict keys are the official ones.
"""

from __future__ import annotations

from dassl_ext.config import Rule, register_config_extension, register_config_rules
from dassl_ext.engine import TRAINER_REGISTRY, TeacherSupport
from dassl_ext.modeling import ClipSizes
from trainers.base import PromptTrainer
from trainers.vl_prompts import (
    VLPromptCLIP,
    vl_prompt_model_rules,
    vl_prompt_rules,
    vl_prompt_section,
)


@register_config_extension
def add_ivlp_config(cfg) -> None:
    """``TRAINER.IVLP`` with the official code defaults (the shipped yaml uses 4+4)."""
    cfg.TRAINER.IVLP = vl_prompt_section(n_ctx=2)


register_config_rules(*vl_prompt_rules("TRAINER.IVLP"))


@TRAINER_REGISTRY.register()
class IVLP(PromptTrainer):
    """Independent V-L prompting: CE on the prompted logits; registered "VLPromptLearner"."""

    prec_section = "IVLP"
    model_name = "VLPromptLearner"
    frozen_teacher = TeacherSupport(default_model_name="VLPromptLearner")

    @classmethod
    def build_custom_clip(cls, cfg, classnames: list[str], clip_model) -> VLPromptCLIP:
        return VLPromptCLIP.from_section(cfg.TRAINER.IVLP, classnames, clip_model)

    @classmethod
    def model_rules(cls, cfg, sizes: ClipSizes) -> list[Rule]:
        return vl_prompt_model_rules("TRAINER.IVLP", sizes)
