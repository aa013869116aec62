"""Loss formulas, GPA weights and trainable-parameter counts at the real model sizes.

The counts build the real ViT-B/16 / ViT-L/14 shaped models on the meta device (shapes
only, no memory, no weights), so they check what the trainers actually mark trainable.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dassl_ext.modeling import clip
from trainers.losses import consistency_l1, gpa_weights, logits_kl, promptsrc_loss

# (embed, vision width, vision layers, patch, text width) of the OpenAI models (spec §0)
SIZES = {"ViT-B/16": (512, 768, 12, 16, 512), "ViT-L/14": (768, 1024, 24, 14, 768)}


def meta_clip(name: str):
    embed, vw, vl, patch, tw = SIZES[name]
    with torch.device("meta"):
        return clip.model.CLIP(embed, 224, vl, vw, patch, 77, 49408, tw, tw // 64, 12)


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.trainable_parameters())


def test_promptsrc_loss_matches_formula():
    torch.manual_seed(0)
    B, C, D = 4, 6, 8
    logits, zs_logits = torch.randn(B, C) * 5, torch.randn(B, C) * 5
    labels = torch.randint(0, C, (B,))
    txt, zs_txt = F.normalize(torch.randn(C, D), dim=-1), F.normalize(torch.randn(C, D), dim=-1)
    img, zs_img = F.normalize(torch.randn(B, D), dim=-1), F.normalize(torch.randn(B, D), dim=-1)
    total, parts = promptsrc_loss(logits, labels, txt, zs_txt, img, zs_img, zs_logits, 25, 10)

    log_p = logits - logits.logsumexp(dim=1, keepdim=True)
    ce = -log_p[torch.arange(B), labels].mean()
    l1_text = (txt - zs_txt).abs().sum() / (C * D)
    l1_image = (img - zs_img).abs().sum() / (B * D)
    log_q = zs_logits - zs_logits.logsumexp(dim=1, keepdim=True)
    kl = (log_q.exp() * (log_q - log_p)).sum() / (B * C)  # KL(zs || prompted) / (B*C)
    expected = ce + 25 * l1_text + 10 * l1_image + kl
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["scl_text"], 25 * l1_text)
    torch.testing.assert_close(parts["scl_image"], 10 * l1_image)
    torch.testing.assert_close(parts["scl_logits"], kl)
    torch.testing.assert_close(total, expected)
    torch.testing.assert_close(consistency_l1(img, zs_img), l1_image)
    torch.testing.assert_close(logits_kl(logits, zs_logits), kl)


def test_promptsrc_targets_get_no_gradient():
    logits = torch.randn(2, 3, requires_grad=True)
    zs = torch.randn(2, 3, requires_grad=True)
    logits_kl(logits, zs).backward()
    assert logits.grad is not None and zs.grad is None


@pytest.mark.parametrize(
    "epoch, weight",
    [(13, 0.054), (14, 0.242), (15, 0.399), (16, 0.242), (17, 0.054), (12, 0.0044), (18, 0.0044)],
)
def test_gpa_weights_teacher_config(epoch, weight):
    w = gpa_weights(15, 1, 20)
    assert len(w) == 20 and math.isclose(sum(w), 1.0)
    assert w[epoch - 1] == pytest.approx(weight, abs=6e-4)
    assert w[10] == pytest.approx(0.00013, abs=1e-5)  # epoch 11


def test_gpa_weights_cross_dataset_config():
    w = gpa_weights(6, 10, 20)
    assert w[0] == pytest.approx(0.055, abs=1e-3)
    assert w[5] == pytest.approx(0.063, abs=1e-3) and max(w) == w[5]
    assert w[19] == pytest.approx(0.024, abs=1e-3)


def test_gpa_weights_reject_bad_std():
    with pytest.raises(ValueError):
        gpa_weights(15, 0, 20)


def _ivlp(backbone: str, n: int = 4, depth: int = 9):
    from trainers.vl_prompts import VLPromptCLIP

    with torch.device("meta"):
        return VLPromptCLIP(meta_clip(backbone), ["cat", "dog"], n, n, depth, depth, "a photo of a")


def test_ivlp_promptsrc_trainable_counts_at_real_sizes():
    assert trainable_count(_ivlp("ViT-B/16")) == 46_080  # spec §2.2 / §4
    assert trainable_count(_ivlp("ViT-L/14")) == 64_512  # the PromptKD teacher
    model = _ivlp("ViT-B/16")
    trainable = {id(p) for p in model.trainable_parameters()}
    names = [n for n, p in model.named_parameters() if id(p) in trainable]
    assert "prompt_learner.ctx" in names and "image_encoder.VPT" in names
    assert sum(".VPT_shallow" in n for n in names) == 16  # blocks 1..8 of both towers


def test_maple_trainable_count_at_real_size():
    from trainers.maple import MaPLeCLIP

    with torch.device("meta"):
        model = MaPLeCLIP(meta_clip("ViT-B/16"), ["cat"], 2, "a photo of a", 9)
    assert trainable_count(model) == 3_555_072  # spec §4
    assert model.prompt_learner.compound_prompt_projections[0].weight.shape == (768, 512)


def test_coop_cocoop_trainable_counts_at_real_size():
    from trainers import cocoop, coop

    with torch.device("meta"):
        clip_model = meta_clip("ViT-B/16")
        learner = coop.CoOpPromptLearner(clip_model, ["cat", "dog", "fish"], 16, "")
        assert sum(p.numel() for p in learner.parameters()) == 16 * 512
        csc = coop.CoOpPromptLearner(clip_model, ["cat", "dog", "fish"], 16, "", csc=True)
        assert csc.ctx.shape == (3, 16, 512)
        words = coop.CoOpPromptLearner(clip_model, ["cat"], 16, "a photo of a")
        assert words.ctx.shape == (4, 512)  # CTX_INIT sets n_ctx = number of words
        co = cocoop.CoCoOpPromptLearner(meta_clip("ViT-B/16"), ["cat"], 4, "a photo of a")
    # ctx 4x512 + meta_net 512 -> 32 -> 512
    assert sum(p.numel() for p in co.parameters()) == 4 * 512 + (512 * 32 + 32) + (32 * 512 + 512)
