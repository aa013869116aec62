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
from trainers.losses import (
    consistency_l1,
    gpa_weights,
    kd_loss,
    logits_kl,
    promptsrc_loss,
    symmetric_kd_loss,
)

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


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_ij p_ij (log p_ij - log q_ij)``: KL(p || q) summed over the rows."""
    return (log_p.exp() * (log_p - log_q)).sum()


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_symmetric_kd_loss_is_the_mean_of_both_kls(temperature):
    """KDPL's loss = (KL(t||s) + KL(s||t)) / 2 over softened logits, / (B*C), * T^2: the same
    normalisation as the official kd_loss, which it contains as its forward half."""
    torch.manual_seed(0)
    B, C, T = 5, 7, temperature
    s, t = torch.randn(B, C) * 4, torch.randn(B, C) * 4
    log_s, log_t = F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1)
    forward, reverse = _kl_rows(log_t, log_s), _kl_rows(log_s, log_t)
    torch.testing.assert_close(kd_loss(s, t, T), forward * T * T / (B * C))
    expected = 0.5 * (forward + reverse) * T * T / (B * C)
    torch.testing.assert_close(symmetric_kd_loss(s, t, T), expected)
    both = 0.5 * (kd_loss(s, t, T) + kd_loss(t, s, T))
    torch.testing.assert_close(symmetric_kd_loss(s, t, T), both)
    assert symmetric_kd_loss(s, t, T) != kd_loss(s, t, T)  # the reverse half counts


def test_symmetric_kd_loss_properties():
    """Symmetric in its arguments, zero (as kl) where the distributions agree (also logits
    shifted per row), finite gradients for the student even at saturated logits."""
    torch.manual_seed(1)
    s, t = torch.randn(4, 6) * 3, torch.randn(4, 6) * 3
    torch.testing.assert_close(symmetric_kd_loss(s, t, 2.0), symmetric_kd_loss(t, s, 2.0))
    same = s + torch.randn(4, 1)  # the same softmax per row
    assert symmetric_kd_loss(s, same).abs() < 1e-6 and kd_loss(s, same).abs() < 1e-6
    zeros = torch.zeros(3, 5)
    assert symmetric_kd_loss(zeros, zeros) == kd_loss(zeros, zeros) == 0
    student = (torch.randn(4, 6) * 100).requires_grad_()  # near one-hot softmaxes
    loss = symmetric_kd_loss(student, torch.randn(4, 6) * 100)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_promptkd_loss_key_keeps_older_hashes():
    """TRAINER.PROMPTKD.LOSS at its default kl changes no config hash and no --resume
    comparison of runs recorded before it existed; symmetric counts."""
    import yaml

    from dassl_ext.config import apply_config_extensions, get_cfg_default
    from dassl_ext.config.compare import config_differences
    from dassl_ext.evaluation import config_hash

    cfg = apply_config_extensions(get_cfg_default())
    assert cfg.TRAINER.PROMPTKD.LOSS == "kl"
    older = yaml.safe_load(cfg.dump())
    del older["TRAINER"]["PROMPTKD"]["LOSS"]
    assert config_differences(older, cfg) == []
    without = cfg.clone()
    del without.TRAINER.PROMPTKD["LOSS"]
    assert config_hash(cfg) == config_hash(without)
    cfg.TRAINER.PROMPTKD.LOSS = "symmetric"
    assert config_hash(cfg) != config_hash(without)
    assert [k for k, *_ in config_differences(older, cfg)] == ["TRAINER.PROMPTKD.LOSS"]


def _zero_shot_student_argv(digits_root, clip_root, out, *extra):
    from test_promptkd import student_argv

    teacher = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP", "TEST.NO_TEST", "True")
    return student_argv(digits_root, clip_root, out, "", *teacher, *extra)


def test_promptkd_trains_with_the_symmetric_loss(digits_root, tiny_clip_root, tmp_path,
                                                 monkeypatch):  # fmt: skip
    """LOSS symmetric: one epoch of distillation runs KDPL's loss at every step."""
    import train
    from trainers import losses

    calls = []

    def counting(student_logits, teacher_logits, temperature):
        calls.append(student_logits.shape)
        return symmetric_kd_loss(student_logits, teacher_logits, temperature)

    monkeypatch.setitem(losses.KD_LOSSES, "symmetric", counting)
    out = tmp_path / "kd"
    argv = _zero_shot_student_argv(digits_root, tiny_clip_root, out,
                                   "TRAINER.PROMPTKD.LOSS", "symmetric")  # fmt: skip
    assert train.main(argv) == 0
    assert len(calls) == 2 and calls[0][1] == 10  # 2 steps, all 10 classes
    ckpt = torch.load(out / "VLPromptLearner" / "model.pth.tar-1", weights_only=True)
    assert torch.isfinite(ckpt["state_dict"]["image_encoder.VPT"]).all()
    assert "LOSS: symmetric" in (out / "config.yaml").read_text()


def test_promptkd_bad_loss_is_one_sentence(digits_root, tiny_clip_root, tmp_path, capsys):
    import train

    out = tmp_path / "kd"
    argv = _zero_shot_student_argv(digits_root, tiny_clip_root, out,
                                   "TRAINER.PROMPTKD.LOSS", "kdpl")  # fmt: skip
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "TRAINER.PROMPTKD.LOSS" in err and "kl, symmetric" in err
    assert not out.exists()
