"""Layer-0 text prompts: context initialisation and per-class prompt buffers (spec §1.2)."""

import torch
from torch import nn

from dassl_ext.errors import UserError
from dassl_ext.modeling._clip import clip
from dassl_ext.modeling.prompted import PROMPT_STD

CONTEXT_LENGTH = 77  # tokens CLIP's text encoder reads, start and end tokens included


def token_count(text: str) -> int:
    """Tokens of ``text`` in CLIP's text encoder, with the start and end tokens."""
    return len(clip.clip._tokenizer.encode(text)) + 2


def check_class_names(classnames: list[str]) -> None:
    """An empty class name is a UserError naming the class and where to name it."""
    for label, name in enumerate(classnames):
        if not str(name).replace("_", " ").strip():
            raise UserError(
                f"Class {label} has an empty name ({name!r}); give it a name in the dataset's "
                "class names (its split file, or the dataset's classname_fixes)."
            )


def tokenize_class_prompts(prompts: list[str], classnames: list[str]) -> torch.Tensor:
    """``clip.tokenize(prompts)`` (C, 77) for one prompt per class name (same order); an empty
    class name, or a prompt longer than CLIP's 77 tokens, is a UserError naming the class,
    its token count and what to shorten (instead of the tokenizer's RuntimeError)."""
    check_class_names(classnames)
    for label, (prompt, name) in enumerate(zip(prompts, classnames)):
        n = token_count(prompt)
        if n > CONTEXT_LENGTH:
            others = n - token_count(name.replace("_", " ")) + 2  # the template's tokens
            raise UserError(
                f"Class {label} {name!r} is too long for CLIP: its prompt {prompt!r} is {n} "
                f"tokens, and CLIP's text encoder reads at most {CONTEXT_LENGTH} "
                f"({others} of them the prompt's other words and start/end tokens); shorten the "
                "name in the dataset's class names (its split file, or the dataset's "
                "classname_fixes) or the prompt context (N_CTX / CTX_INIT)."
            )
    return clip.tokenize(prompts)


@torch.no_grad()
def init_ctx_from_words(
    clip_model: "clip.model.CLIP", ctx_init: str, n_ctx: int, max_word_ctx: int | None = 4
) -> tuple[torch.Tensor, str]:
    """Initial context vectors (n_ctx, D) fp32 and the prompt prefix written before class names.

    With ``ctx_init`` and ``n_ctx <= max_word_ctx`` (IVLP/PromptSRC/PromptKD/MaPLe rule; None:
    no limit), the embeddings of the first ``n_ctx`` tokens of ``ctx_init``, which is all the
    prefix; else N(0, 0.02²) from the global RNG and the prefix "X X ... X".
    """
    ctx_init = ctx_init.replace("_", " ").strip()
    if ctx_init and (max_word_ctx is None or n_ctx <= max_word_ctx):
        if token_count(ctx_init) > CONTEXT_LENGTH:
            raise UserError(
                f"The prompt initialisation CTX_INIT {ctx_init!r} is {token_count(ctx_init)} "
                f"tokens; CLIP's text encoder reads at most {CONTEXT_LENGTH}: shorten it."
            )
        tokens = clip.tokenize(ctx_init).to(clip_model.token_embedding.weight.device)
        ctx = clip_model.token_embedding(tokens)[0, 1 : 1 + n_ctx].float().clone()
        return ctx, ctx_init
    width = clip_model.token_embedding.weight.shape[1]
    ctx = nn.init.normal_(torch.empty(n_ctx, width), std=PROMPT_STD)
    return ctx, " ".join(["X"] * n_ctx)


def word_ctx_or_random(
    clip_model: "clip.model.CLIP", ctx_init: str, n_ctx: int, n_cls: int = 0
) -> tuple[torch.Tensor, str]:
    """CoOp/CoCoOp context and prompt prefix: with ``ctx_init`` the embeddings of ALL its words
    (n_ctx = #words), else N(0, 0.02²) of shape (n_ctx, D), or (n_cls, n_ctx, D) when
    ``n_cls`` (class-specific context)."""
    ctx_init = ctx_init.replace("_", " ").strip()
    if ctx_init:
        return init_ctx_from_words(clip_model, ctx_init, len(ctx_init.split(" ")), None)
    width = clip_model.token_embedding.weight.shape[1]
    shape = (n_cls, n_ctx, width) if n_cls else (n_ctx, width)
    return nn.init.normal_(torch.empty(shape), std=PROMPT_STD), " ".join(["X"] * n_ctx)


def class_prompts(classnames: list[str], prompt_prefix: str) -> list[str]:
    """``"<prefix> <class name with spaces>."`` for each class, as the official trainers."""
    return [f"{prompt_prefix} {name.replace('_', ' ')}." for name in classnames]


@torch.no_grad()
def build_prompt_buffers(
    clip_model: "clip.model.CLIP", classnames: list[str], prompt_prefix: str, n_ctx: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids (C, 77), SOS embeddings (C, 1, D) and the embeddings after the context,
    i.e. class tokens, ".", EOT and padding (C, 77-1-n_ctx, D), in the token embedding's dtype."""
    tokenized = tokenize_class_prompts(class_prompts(classnames, prompt_prefix), classnames)
    embedding = clip_model.token_embedding(tokenized.to(clip_model.token_embedding.weight.device))
    return tokenized, embedding[:, :1].clone(), embedding[:, 1 + n_ctx :].clone()


def assemble_prompts(
    token_prefix: torch.Tensor, ctx: torch.Tensor, token_suffix: torch.Tensor
) -> torch.Tensor:
    """``[SOS][ctx][suffix]`` (C, 77, D); ``ctx`` is shared (n, D) or per class (C, n, D)."""
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(token_prefix.shape[0], -1, -1)
    dtype = torch.promote_types(ctx.dtype, token_prefix.dtype)
    return torch.cat([token_prefix.to(dtype), ctx.to(dtype), token_suffix.to(dtype)], dim=1)
