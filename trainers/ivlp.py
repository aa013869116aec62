"""IVLP: independent vision-language deep prompts (spec §1.2, §4); CE loss only. Its model,
:class:`~trainers.vl_prompts.VLPromptCLIP`, is also PromptSRC's and the PromptKD teacher's."""

from dassl_ext.config import register_config_extension, register_config_rules
from dassl_ext.engine import TRAINER_REGISTRY
from trainers.vl_prompts import VLPromptTrainer, vl_prompt_rules, vl_prompt_section


@register_config_extension
def add_ivlp_config(cfg) -> None:
    """``TRAINER.IVLP`` with the official code defaults (the shipped yaml uses 4+4)."""
    cfg.TRAINER.IVLP = vl_prompt_section(n_ctx=2)


register_config_rules(*vl_prompt_rules("TRAINER.IVLP"))


@TRAINER_REGISTRY.register()
class IVLP(VLPromptTrainer):
    """Independent V-L prompting: CE on the prompted logits; registered "VLPromptLearner"."""

    prec_section = "IVLP"
