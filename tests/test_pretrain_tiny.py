"""scripts/pretrain_tiny_clip.py: the contrastive loss falls, the file loads as a CLIP."""

import importlib.util
import os
import sys

import torch

from dassl_ext.modeling import TINY_SPECS, load_clip

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "scripts", "pretrain_tiny_clip.py"
)


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_tiny_clip", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_contrastive_loss_targets():
    p = _script()
    feats = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    labels = torch.tensor([0, 1, 0, 1])
    scale = torch.tensor(0.0)
    # identical image and text features: the loss is lower than for shuffled ones
    assert (
        p.contrastive_loss(feats, feats, labels, scale)
        < p.contrastive_loss(feats, feats.flip(0), labels, scale) + 1e-6
    )


def test_pretrain_loss_falls_and_saves(digits_root, tmp_path, monkeypatch):
    monkeypatch.delenv("CLIP_ROOT", raising=False)
    p = _script()
    torch.manual_seed(0)
    # One fixed batch, repeated: a few steps must lower the loss on it.
    model, losses = p.pretrain(
        "digits-student", str(digits_root), lr=1e-3, batch_size=16, num_train=16,
        max_steps=6, log=False,
    )  # fmt: skip
    assert len(losses) == 6 and all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert model.logit_scale.exp().item() <= 100.0 + 1e-4
    path = p.save_clip(model, str(tmp_path / "digits-student.pt"))
    assert os.listdir(tmp_path) == ["digits-student.pt"]  # atomic: no temp file left
    loaded = load_clip("digits-student", str(tmp_path), download=False)
    spec = TINY_SPECS["tiny-student"]
    assert loaded.visual.conv1.out_channels == spec.vision_width
    assert loaded.text_projection.shape == (spec.text_width, spec.embed_dim)
    assert torch.load(path, weights_only=True)["visual.proj"].dtype == torch.float16
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(
            loaded.encode_image(images), model.encode_image(images), atol=1e-2, rtol=1e-2
        )
