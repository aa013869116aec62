"""CLIP loading and prompted CLIP encoders shared by all trainers."""

from dassl_ext.modeling._clip import clip
from dassl_ext.modeling.loading import (
    clip_filename,
    clip_root_from_cfg,
    clip_search_dirs,
    find_clip_file,
    load_clip,
    read_clip_state_dict,
)
from dassl_ext.modeling.maple import CoupledDeepPrompts
from dassl_ext.modeling.prompted import (
    PromptedImageEncoder,
    PromptedTextEncoder,
    add_deep_prompts,
    cast_frozen_weights,
    run_blocks,
)
from dassl_ext.modeling.templates import (
    CUSTOM_TEMPLATES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
)
from dassl_ext.modeling.text_prompts import (
    assemble_prompts,
    build_prompt_buffers,
    class_prompts,
    init_ctx_from_words,
)
from dassl_ext.modeling.tiny import TINY_SPECS, TinyClipSpec, build_tiny_clip, save_tiny_clip

__all__ = [
    "CUSTOM_TEMPLATES",
    "IMAGENET_TEMPLATES",
    "IMAGENET_TEMPLATES_SELECT",
    "TINY_SPECS",
    "CoupledDeepPrompts",
    "PromptedImageEncoder",
    "PromptedTextEncoder",
    "TinyClipSpec",
    "add_deep_prompts",
    "assemble_prompts",
    "build_prompt_buffers",
    "build_tiny_clip",
    "cast_frozen_weights",
    "class_prompts",
    "clip",
    "clip_filename",
    "clip_root_from_cfg",
    "clip_search_dirs",
    "find_clip_file",
    "init_ctx_from_words",
    "load_clip",
    "read_clip_state_dict",
    "run_blocks",
    "save_tiny_clip",
]
