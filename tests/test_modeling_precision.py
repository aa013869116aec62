"""The prompted encoders under every precision, on the CPU: fp32, bf16, and fp16 / amp (fp16
autocast and a gradient scaler, as the official configs run them on CUDA).

Trainable prompts stay fp32 master weights; frozen CLIP weights may be cast down.
"""

import contextlib

import pytest
import torch
import torch.nn.functional as F

from dassl_ext.modeling import (
    PromptedImageEncoder,
    PromptedTextEncoder,
    assemble_prompts,
    build_prompt_buffers,
    cast_frozen_weights,
    clip,
    init_ctx_from_words,
    load_clip,
)

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="CUDA-specific: CUDA's kernels (the CPU parity is in test_clip_loading.py)",
)


class IVLP(torch.nn.Module):
    """Text and image encoders with deep prompts (depth 9), as IVLP / PromptSRC use them."""

    def __init__(self, root: str):
        super().__init__()
        clip_model = load_clip("tiny-teacher", root)
        clip_model.requires_grad_(False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # the same random prompts in every instance
            self.text = PromptedTextEncoder(clip_model, n_ctx=4, depth=9)
            self.image = PromptedImageEncoder(clip_model.visual, n_ctx=4, depth=9)
        ctx, prefix = init_ctx_from_words(clip_model, "a photo of a", 4)
        self.ctx = torch.nn.Parameter(ctx)
        tokenized, sos, suffix = build_prompt_buffers(clip_model, ["cat", "dog"], prefix, 4)
        self.register_buffer("tokenized", tokenized)
        self.register_buffer("sos", sos)
        self.register_buffer("suffix", suffix)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        txt = self.text(assemble_prompts(self.sos, self.ctx, self.suffix), self.tokenized)
        img = self.image(images)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        img = img / img.norm(dim=-1, keepdim=True)
        return 20 * img @ txt.T  # (B, C)


def step(model, device, autocast_dtype=None, scaler=None):
    """One forward/backward/SGD step checking the prompt updates; returns the logits."""
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optim = torch.optim.SGD(trainable, lr=0.1)
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype
        else contextlib.nullcontext()
    )
    for _ in range(10):  # with a scaler: until a step is not skipped for overflow
        optim.zero_grad()
        with autocast:
            logits = model(images)
            loss = F.cross_entropy(logits.float(), torch.tensor([0, 1], device=device))
        assert torch.isfinite(logits).all()
        if scaler is None:
            loss.backward()
            optim.step()
            break
        scale = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.step(optim)
        scaler.update()
        if scaler.get_scale() >= scale:
            break
    assert len(trainable) == 1 + 2 * 8 + 1  # ctx, VPT, 8 + 8 VPT_shallow
    for p, old in zip(trainable, before):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32
        assert torch.isfinite(p.grad).all() and not torch.equal(p, old)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    return logits.detach().float()


@pytest.fixture
def cpu():
    return torch.device("cpu")


def test_fp32_and_bf16_autocast_cpu(tiny_clip_root, cpu):
    reference = step(IVLP(tiny_clip_root), cpu)
    logits = step(IVLP(tiny_clip_root), cpu, torch.bfloat16)
    # Logits are 20·cos in [-20, 20]; bf16 keeps ~3 digits through 24 blocks.
    assert (logits - reference).abs().max() < 1.0
    # bf16 frozen weights, fp32 prompts cast at insertion.
    model = cast_frozen_weights(IVLP(tiny_clip_root), torch.bfloat16)
    assert model.image.conv1.weight.dtype == torch.bfloat16 and model.ctx.dtype == torch.float32
    logits = step(model, cpu, torch.bfloat16)
    assert (logits - reference).abs().max() < 1.5


def test_cast_frozen_weights_like_openai(tiny_clip_root):
    ours = load_clip("tiny-student", tiny_clip_root).requires_grad_(False)
    openai = load_clip("tiny-student", tiny_clip_root)
    cast_frozen_weights(ours, torch.float16)
    clip.model.convert_weights(openai)
    assert {n: p.dtype for n, p in ours.named_parameters()} == {
        n: p.dtype for n, p in openai.named_parameters()
    }
    model = cast_frozen_weights(IVLP(tiny_clip_root), torch.bfloat16)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


@pytest.mark.parametrize("mode", ["amp", "fp16", "fp16-no-autocast"])
def test_half_precisions(tiny_clip_root, cpu, mode):
    """fp16 frozen weights and/or fp16 autocast with a GradScaler("cpu"): finite fp32
    gradients on the fp32 prompts, logits close to fp32."""
    reference = step(IVLP(tiny_clip_root), cpu)
    model = IVLP(tiny_clip_root)
    if mode != "amp":
        cast_frozen_weights(model, torch.float16)
        assert model.image.conv1.weight.dtype == torch.float16
    autocast = None if mode == "fp16-no-autocast" else torch.float16  # the official fp16 mode
    scaler = torch.amp.GradScaler("cpu") if autocast else None
    logits = step(model, cpu, autocast, scaler)
    # logits are 20·cos; fp16 keeps ~3 digits (measured: amp 0.003, fp16 0.02)
    assert (logits - reference).abs().max() < 0.1


@needs_cuda
def test_prompts_off_parity_cuda(tiny_clip_root):
    model = load_clip("tiny-student", tiny_clip_root).cuda()
    tokens = clip.tokenize(["a photo of a cat.", "a dog"]).cuda()
    images = torch.randn(3, 3, 32, 32, device="cuda")
    with torch.no_grad():
        txt = PromptedTextEncoder(model)(model.token_embedding(tokens), tokens)
        img = PromptedImageEncoder(model.visual)(images)
        assert (txt - model.encode_text(tokens)).abs().max() <= 1e-5
        assert (img - model.encode_image(images)).abs().max() <= 1e-5
