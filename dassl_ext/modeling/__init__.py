"""CLIP loading and prompted CLIP encoders shared by all trainers.

Typical use (IVLP / PromptSRC; see each name's docstring)::

    clip_model = load_clip("ViT-B/16", clip_root_from_cfg(cfg))  # fp32, eval, CPU
    clip_model.requires_grad_(False)  # prompts created below stay trainable
    ctx, prefix = init_ctx_from_words(clip_model, "a photo of a", n_ctx=4)
    tokenized, sos, suffix = build_prompt_buffers(clip_model, classnames, prefix, 4)
    text = PromptedTextEncoder(clip_model, n_ctx=4, depth=9)
    image = PromptedImageEncoder(clip_model.visual, n_ctx=4, depth=9)
    txt = text(assemble_prompts(sos, nn.Parameter(ctx), suffix), tokenized)  # (C, E)
    img = image(images)  # (B, E)
    cast_frozen_weights(model, prec.weight_dtype)  # optional: fp16/bf16 frozen weights

The names imported below are this package's public API.
"""

# ruff: noqa: F401 (re-exports)
from dassl_ext.modeling._clip import clip
from dassl_ext.modeling.loading import (
    ClipSizes,
    clip_filename,
    clip_root_from_cfg,
    clip_search_dirs,
    clip_sizes,
    find_clip_file,
    load_clip,
    load_zero_shot_clip,
    read_clip_state_dict,
)
from dassl_ext.modeling.maple import CoupledDeepPrompts
from dassl_ext.modeling.openclip import (
    OpenClipNative,
    is_open_clip_name,
    model_config_digest,
    renormalize,
)
from dassl_ext.modeling.prompted import (
    PromptedImageEncoder,
    PromptedTextEncoder,
    cast_frozen_weights,
    set_trainable,
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
    tokenize_class_prompts,
    word_ctx_or_random,
)
from dassl_ext.modeling.tiny import TINY_SPECS, TinyClipSpec, build_tiny_clip, save_tiny_clip
