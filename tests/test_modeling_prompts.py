"""Prompt semantics of the CLIP encoders, pinned against step-by-step computations here."""

import pytest
import torch

from dassl_ext.errors import UserError
from dassl_ext.modeling import (
    CUSTOM_TEMPLATES,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_SELECT,
    CoupledDeepPrompts,
    PromptedImageEncoder,
    PromptedTextEncoder,
    assemble_prompts,
    build_prompt_buffers,
    class_prompts,
    clip,
    init_ctx_from_words,
    load_clip,
)

CLASSNAMES = ["cat", "golden_retriever", "sea turtle"]
BLOCK_KEYS = [
    "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight", "attn.out_proj.bias",
    "ln_1.weight", "ln_1.bias", "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight",
    "mlp.c_proj.bias", "ln_2.weight", "ln_2.bias",
]  # fmt: skip


@pytest.fixture
def frozen_teacher(tiny_clip_root):
    """A fresh tiny teacher (text width 64, vision width 128), all CLIP weights frozen."""
    model = load_clip("tiny-teacher", tiny_clip_root)
    model.requires_grad_(False)
    return model


def text_inputs(model, n_ctx, ctx_init="a photo of a"):
    ctx, prefix = init_ctx_from_words(model, ctx_init, n_ctx)
    tokenized, sos, suffix = build_prompt_buffers(model, CLASSNAMES, prefix, n_ctx)
    return torch.nn.Parameter(ctx), tokenized, sos, suffix


# ---- independent step-by-step references (batch-first, in-place index assignment) ----


def reference_text(model, prompts, tokenized, deep):
    x = prompts + model.positional_embedding  # (C, 77, D)
    for k, block in enumerate(model.transformer.resblocks):
        if 1 <= k <= len(deep):
            x = x.clone()
            x[:, 1 : 1 + deep[k - 1].shape[0]] = deep[k - 1]
        x = block(x.transpose(0, 1)).transpose(0, 1)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(-1)] @ model.text_projection


def reference_image(visual, images, first, deep):
    b, width = images.shape[0], visual.conv1.out_channels
    patches = visual.conv1(images).reshape(b, width, -1).transpose(1, 2)  # (B, 16, W)
    x = torch.cat([visual.class_embedding.expand(b, 1, width), patches], dim=1)
    x = x + visual.positional_embedding
    if first is not None:
        x = torch.cat([x, first.expand(b, -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for k, block in enumerate(visual.transformer.resblocks):
        if 1 <= k <= len(deep):
            x = x.clone()
            x[:, -deep[k - 1].shape[0] :] = deep[k - 1]
        x = block(x.transpose(0, 1)).transpose(0, 1)
    return visual.ln_post(x[:, 0]) @ visual.proj


def record_blocks(blocks):
    """Hooks recording every block's input and output (L, N, D)."""
    seen = {"in": [], "out": []}
    hooks = [b.register_forward_pre_hook(lambda m, a: seen["in"].append(a[0])) for b in blocks]
    hooks += [b.register_forward_hook(lambda m, a, o: seen["out"].append(o)) for b in blocks]
    return seen, hooks


# ---- tests ----


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 9, 12])
def test_depth_gives_prompt_sets(frozen_teacher, depth):
    text = PromptedTextEncoder(frozen_teacher, n_ctx=4, depth=depth)
    image = PromptedImageEncoder(frozen_teacher.visual, n_ctx=4, depth=depth)
    deep_sets = max(depth - 1, 0)
    assert len(text.deep_prompts()) == len(image.deep_prompts()) == deep_sets
    assert hasattr(image, "VPT") == (depth >= 1) and not hasattr(text, "VPT")
    for enc, width in ((text, 64), (image, 128)):
        names = [n for n, _ in enc.named_parameters() if "VPT_shallow" in n]
        assert names == [f"transformer.resblocks.{i}.VPT_shallow" for i in range(1, depth)]
        assert all(p.shape == (4, width) and p.requires_grad for p in enc.deep_prompts())
    if depth >= 2:
        assert 0.01 < torch.cat(text.deep_prompts()).std() < 0.03  # N(0, 0.02²)


def test_bad_depths(frozen_teacher):
    with pytest.raises(UserError, match="exceeds the 12 layers"):
        PromptedTextEncoder(frozen_teacher, n_ctx=4, depth=13)
    with pytest.raises(UserError, match="ViT"):
        PromptedImageEncoder(torch.nn.Identity(), n_ctx=4, depth=9)
    prompted = PromptedImageEncoder(frozen_teacher.visual, n_ctx=2, depth=3)
    with pytest.raises(ValueError, match="already carry prompts"):
        PromptedImageEncoder(frozen_teacher.visual, n_ctx=2, depth=3)
    plain = PromptedImageEncoder(frozen_teacher.visual)  # shares the prompted blocks
    assert plain.deep_prompts() == [] and len(prompted.deep_prompts()) == 2
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert (plain(images) - frozen_teacher.encode_image(images)).abs().max() <= 1e-5


@pytest.mark.parametrize("depth", [1, 3, 9])
def test_text_positions_replaced(frozen_teacher, depth):
    n = 4
    text = PromptedTextEncoder(frozen_teacher, n_ctx=n, depth=depth)
    ctx, tokenized, sos, suffix = text_inputs(frozen_teacher, n)
    prompts = assemble_prompts(sos, ctx, suffix)
    seen, hooks = record_blocks(text.transformer.resblocks)
    with torch.no_grad():
        out = text(prompts, tokenized)
        ref = reference_text(frozen_teacher, prompts, tokenized, text.deep_prompts())
    for h in hooks:
        h.remove()
    assert (out - ref).abs().max() <= 1e-5
    deep = text.deep_prompts()
    assert torch.equal(
        seen["in"][0], (prompts + frozen_teacher.positional_embedding).transpose(0, 1)
    )
    for k in range(1, 12):
        x, prev = seen["in"][k], seen["out"][k - 1]
        assert x.shape == (77, len(CLASSNAMES), 64)
        if k < depth:  # SOS and 1+n onwards kept; 1..n replaced by block k's prompts
            assert torch.equal(x[1 : 1 + n], deep[k - 1].unsqueeze(1).expand(-1, 3, -1))
            assert torch.equal(x[:1], prev[:1]) and torch.equal(x[1 + n :], prev[1 + n :])
        else:
            assert torch.equal(x, prev)


@pytest.mark.parametrize("depth", [0, 1, 3, 9])
def test_image_positions_replaced(frozen_teacher, depth):
    n = 4
    image = PromptedImageEncoder(frozen_teacher.visual, n_ctx=n, depth=depth)
    images = torch.randn(2, 3, 32, 32)
    seen, hooks = record_blocks(image.transformer.resblocks)
    with torch.no_grad():
        out = image(images)
        first = getattr(image, "VPT", None)
        ref = reference_image(frozen_teacher.visual, images, first, image.deep_prompts())
    for h in hooks:
        h.remove()
    assert (out - ref).abs().max() <= 1e-5
    length = 1 + 16 + (n if depth >= 1 else 0)
    assert all(x.shape == (length, 2, 128) for x in seen["in"])
    if depth >= 1:  # layer-0 prompts: after the patches, LayerNormed, no positional embedding
        expected = image.ln_pre(image.VPT).unsqueeze(1).expand(-1, 2, -1)
        assert torch.allclose(seen["in"][0][-n:], expected, atol=1e-6)
    for k in range(1, 12):
        x, prev = seen["in"][k], seen["out"][k - 1]
        if k < depth:  # the last n tokens replaced, CLS and patches kept
            assert torch.equal(x[-n:], image.deep_prompts()[k - 1].unsqueeze(1).expand(-1, 2, -1))
            assert torch.equal(x[:-n], prev[:-n])
        else:
            assert torch.equal(x, prev)


def test_ivlp_gradients_reach_prompts_only(frozen_teacher):
    text = PromptedTextEncoder(frozen_teacher, n_ctx=4, depth=9)
    image = PromptedImageEncoder(frozen_teacher.visual, n_ctx=4, depth=9)
    ctx, tokenized, sos, suffix = text_inputs(frozen_teacher, 4)
    txt = text(assemble_prompts(sos, ctx, suffix), tokenized)
    img = image(torch.randn(2, 3, 32, 32))
    (img @ txt.T).square().sum().backward()
    prompts = [ctx, image.VPT, *text.deep_prompts(), *image.deep_prompts()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)
    assert all(p.grad is None for p in frozen_teacher.parameters() if not p.requires_grad)
    trainable = {n for n, p in image.named_parameters() if p.requires_grad}
    assert trainable == {"VPT"} | {f"transformer.resblocks.{i}.VPT_shallow" for i in range(1, 9)}


def test_official_state_dict_keys(frozen_teacher, tiny_clip_root):
    text = PromptedTextEncoder(frozen_teacher, n_ctx=4, depth=9)
    image = PromptedImageEncoder(frozen_teacher.visual, n_ctx=4, depth=9)
    blocks = {f"transformer.resblocks.{i}.{k}" for i in range(12) for k in BLOCK_KEYS}
    deep = {f"transformer.resblocks.{i}.VPT_shallow" for i in range(1, 9)}
    assert set(text.state_dict()) == blocks | deep | {
        "positional_embedding", "text_projection", "ln_final.weight", "ln_final.bias",
    }  # fmt: skip
    assert set(image.state_dict()) == blocks | deep | {
        "VPT", "class_embedding", "positional_embedding", "proj", "conv1.weight",
        "ln_pre.weight", "ln_pre.bias", "ln_post.weight", "ln_post.bias",
    }  # fmt: skip
    # A checkpoint of one model loads strictly into a freshly built one.
    fresh = load_clip("tiny-teacher", tiny_clip_root)
    fresh_image = PromptedImageEncoder(fresh.visual, n_ctx=4, depth=9)
    fresh_image.load_state_dict(image.state_dict(), strict=True)
    assert torch.equal(fresh_image.VPT, image.VPT)


def test_maple_coupling(frozen_teacher):
    n, depth = 2, 9
    ctx, tokenized, sos, suffix = text_inputs(frozen_teacher, n)

    class PromptLearner(CoupledDeepPrompts):  # as a MaPLe trainer embeds it
        def __init__(self):
            super().__init__(n, depth, text_width=64, vision_width=128)
            self.ctx = ctx

    learner = PromptLearner()
    assert set(learner.state_dict()) == (
        {"ctx", "proj.weight", "proj.bias"}
        | {f"compound_prompts_text.{k}" for k in range(depth - 1)}
        | {f"compound_prompt_projections.{k}.{w}" for k in range(8) for w in ("weight", "bias")}
    )
    projections = learner.compound_prompt_projections
    assert all(torch.equal(p.weight, projections[0].weight) for p in projections)
    shared, text_deep, vision_deep = learner.coupled_prompts(learner.ctx)
    assert shared.shape == (n, 128) and len(text_deep) == len(vision_deep) == depth - 1
    assert torch.allclose(shared, ctx @ learner.proj.weight.T + learner.proj.bias)
    for k in range(depth - 1):
        assert text_deep[k].shape == (n, 64) and vision_deep[k].shape == (n, 128)
        expected = text_deep[k] @ projections[k].weight.T + projections[k].bias
        assert torch.allclose(vision_deep[k], expected)

    # MaPLe's encoders own no prompts: everything comes in at forward time.
    text = PromptedTextEncoder(frozen_teacher)
    image = PromptedImageEncoder(frozen_teacher.visual)
    prompts = assemble_prompts(sos, learner.ctx, suffix)
    images = torch.randn(2, 3, 32, 32)
    txt = text(prompts, tokenized, deep_prompts=text_deep)
    img = image(images, first_prompt=shared, deep_prompts=vision_deep)
    with torch.no_grad():
        assert (
            txt - reference_text(frozen_teacher, prompts, tokenized, text_deep)
        ).abs().max() <= 1e-5
        ref_img = reference_image(frozen_teacher.visual, images, shared, vision_deep)
        assert (img - ref_img).abs().max() <= 1e-5
    (img @ txt.T).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in learner.parameters())
    assert all(p.grad is None for p in frozen_teacher.parameters())
    with pytest.raises(ValueError, match="first"):
        image(images, deep_prompts=vision_deep)


def test_word_init_and_prompt_buffers(tiny_clip_root):
    model = load_clip("tiny-student", tiny_clip_root)
    emb = model.token_embedding.weight
    ctx, prefix = init_ctx_from_words(model, "a photo of a", 4)
    assert prefix == "a photo of a" and torch.equal(ctx, emb[[320, 1125, 539, 320]])
    ctx2, prefix2 = init_ctx_from_words(model, "a photo of a", 2)  # MaPLe: "of a" stay words
    assert prefix2 == "a photo of a" and torch.equal(ctx2, emb[[320, 1125]])
    tokenized, sos, suffix = build_prompt_buffers(model, CLASSNAMES, prefix2, 2)
    assert sos.shape == (3, 1, 64) and suffix.shape == (3, 77 - 1 - 2, 64)
    assert torch.equal(suffix[:, 0], emb[539].expand(3, -1))
    # Word-initialised prompts are exactly the class sentences' token embeddings.
    prompts = assemble_prompts(sos, ctx2, suffix)
    with torch.no_grad():
        assert torch.equal(prompts, model.token_embedding(tokenized))
        feats = PromptedTextEncoder(model)(prompts, tokenized)
        assert (feats - model.encode_text(tokenized)).abs().max() <= 1e-5
    assert class_prompts(["golden_retriever"], "X X") == ["X X golden retriever."]
    assert torch.equal(tokenized[1], clip.tokenize("a photo of a golden retriever.")[0])
    torch.manual_seed(0)
    rand, xprefix = init_ctx_from_words(model, "a photo of a", 5)  # > 4 words: random
    assert xprefix == "X X X X X" and rand.shape == (5, 64) and rand.dtype == torch.float32
    torch.manual_seed(0)
    assert torch.equal(init_ctx_from_words(model, "", 5)[0], rand)
    coop, _ = init_ctx_from_words(model, "a photo of a", 4, max_word_ctx=None)
    assert torch.equal(coop, ctx)
    per_class = assemble_prompts(sos, torch.zeros(3, 2, 64), suffix)
    assert per_class.shape == (3, 77, 64) and per_class[:, 1:3].abs().sum() == 0


def test_templates():
    names = {
        "OxfordPets", "OxfordFlowers", "FGVCAircraft", "DescribableTextures", "EuroSAT",
        "StanfordCars", "Food101", "SUN397", "Caltech101", "UCF101", "ImageNet",
        "ImageNetSketch", "ImageNetV2", "ImageNetA", "ImageNetR", "Digits",
    }  # fmt: skip
    assert set(CUSTOM_TEMPLATES) == names
    assert len(IMAGENET_TEMPLATES) == 60 == len(set(IMAGENET_TEMPLATES))
    assert len(IMAGENET_TEMPLATES_SELECT) == 7
    for t in [*CUSTOM_TEMPLATES.values(), *IMAGENET_TEMPLATES, *IMAGENET_TEMPLATES_SELECT]:
        assert t.count("{}") == 1
    assert CUSTOM_TEMPLATES["EuroSAT"] == "a centered satellite photo of {}."
    assert (
        IMAGENET_TEMPLATES[0] == "a photo of a {}." and IMAGENET_TEMPLATES[-1] == "itap of the {}."
    )
