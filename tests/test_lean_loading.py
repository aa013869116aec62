"""Loading without second copies, and the leaner student backward.

CLIP built on the meta device from the file's own tensors equals ``clip.model.build_model``
and keeps them (no second copy); checkpoints are memory-mapped; ``clip_weight_dtype`` reads
the weights straight into a low precision; ``LeanQuickGELU`` computes what ``QuickGELU``
computes and keeps less for the backward.
"""

from __future__ import annotations

import os

import pytest
import torch

from dassl_ext.modeling import PromptedImageEncoder, build_tiny_clip, clip, load_clip
from dassl_ext.modeling.lean import LeanQuickGELU, use_lean_quick_gelu
from dassl_ext.modeling.loading import clip_weight_dtype, read_clip_state_dict
from dassl_ext.utils.checkpoint import load_checkpoint

needs_proc = pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")


def _mapped(path: str) -> bool:
    """Whether ``path`` is memory-mapped into this process."""
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(os.path.abspath(path)) for line in f)


def test_load_clip_equals_build_model(tiny_clip_root):
    ref = clip.model.build_model(build_tiny_clip("tiny-teacher")).float().eval()
    model = load_clip("tiny-teacher", tiny_clip_root)
    assert not model.training
    ref_sd, sd = ref.state_dict(), model.state_dict()
    assert ref_sd.keys() == sd.keys()
    assert all(sd[k].dtype == torch.float32 and torch.equal(sd[k], ref_sd[k]) for k in sd)
    images = torch.randn(2, 3, 32, 32)
    tokens = clip.tokenize(["a photo of a dog.", "a cat"])
    with torch.no_grad():  # the causal text mask is rebuilt, not left on the meta device
        assert torch.equal(model.encode_text(tokens), ref.encode_text(tokens))
        assert torch.equal(model.encode_image(images), ref.encode_image(images))


def test_load_clip_keeps_the_read_tensors_no_second_copy(tmp_path, monkeypatch):
    path = str(tmp_path / "fp32.pt")
    ref = clip.model.build_model(build_tiny_clip("tiny-student")).float()
    torch.save(ref.state_dict(), path)
    read = {}
    torch_load = torch.load

    def spying_load(*args, **kwargs):
        obj = torch_load(*args, **kwargs)
        read.update({k: v.data_ptr() for k, v in obj.items()})
        return obj

    monkeypatch.setattr(torch, "load", spying_load)
    model = load_clip(path)  # fp32 file, fp32 model: its weights are the tensors read
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == read
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), ref.parameters()))


@needs_proc
def test_read_clip_state_dict_can_map_the_file(tiny_clip_root):
    path = os.path.join(tiny_clip_root, "tiny-teacher.pt")
    sd = read_clip_state_dict(path, mmap=True)  # a look at the shapes reads nothing else
    assert sd["text_projection"].shape == (64, 48) and _mapped(path)
    del sd
    assert not _mapped(path)


def test_clip_weight_dtype_reads_weights_straight_into_bf16(tiny_clip_root):
    with clip_weight_dtype(torch.bfloat16):
        low = load_clip("tiny-teacher", tiny_clip_root)
    ref = load_clip("tiny-teacher", tiny_clip_root)  # the context is gone: fp32 again
    assert ref.visual.conv1.weight.dtype == torch.float32
    for (name, a), b in zip(low.named_parameters(), ref.parameters()):
        expected = b.to(a.dtype)  # conv / linear / projections bf16, the rest fp32
        assert torch.equal(a, expected), name
    dtypes = {
        "visual.conv1.weight": torch.bfloat16,
        "transformer.resblocks.0.attn.in_proj_weight": torch.bfloat16,
        "text_projection": torch.bfloat16,
        "visual.ln_pre.weight": torch.float32,
        "token_embedding.weight": torch.float32,
        "logit_scale": torch.float32,
    }
    params = dict(low.named_parameters())
    assert {k: params[k].dtype for k in dtypes} == dtypes


@needs_proc
@pytest.mark.parametrize("zip_format", [True, False])
def test_load_checkpoint_mmap(tmp_path, zip_format):
    path = str(tmp_path / "model.pth.tar-1")
    state = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 1}
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    ckpt = load_checkpoint(path, mmap=True)
    assert torch.equal(ckpt["state_dict"]["w"], state["state_dict"]["w"]) and ckpt["epoch"] == 1
    assert _mapped(path) == zip_format  # legacy files cannot be mapped: read as before
    again = load_checkpoint(path)  # the default reads the file
    assert torch.equal(again["state_dict"]["w"], state["state_dict"]["w"])


def test_lean_quick_gelu_same_values_and_gradients():
    x = (torch.randn(4, 5, 64, dtype=torch.float64) * 3).requires_grad_()
    torch.autograd.gradcheck(LeanQuickGELU(), (x[0, :2, :8].detach().requires_grad_(),))
    ref, lean = clip.model.QuickGELU()(x), LeanQuickGELU()(x)
    assert torch.equal(ref, lean)
    grad = torch.randn_like(ref)
    (g_ref,), (g_lean,) = torch.autograd.grad(ref, x, grad), torch.autograd.grad(lean, x, grad)
    assert torch.allclose(g_ref, g_lean, rtol=1e-12, atol=1e-12)


def _saved_bytes(encoder: torch.nn.Module, images: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward of one forward (parameters not counted)."""
    seen: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in encoder.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        encoder(images).sum().backward()
    return sum(seen.values())


def test_student_with_lean_gelu_trains_the_same_and_keeps_less():
    sd = build_tiny_clip("tiny-student")
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    grads, saved = [], []
    for lean in (False, True):
        torch.manual_seed(0)
        visual = clip.model.build_model(dict(sd)).float().visual.requires_grad_(False)
        encoder = PromptedImageEncoder(visual, 4, 9)  # prompts: the only trainables
        if lean:
            assert use_lean_quick_gelu(encoder) == 12  # one per block
            assert not any(isinstance(m, clip.model.QuickGELU) for m in encoder.modules())
        saved.append(_saved_bytes(encoder, images))
        grads.append(encoder.VPT.grad.clone())
    scale = grads[0].abs().max()  # fp32 rounding of a different order of operations
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-5 * scale)
    assert saved[1] < 0.85 * saved[0]
