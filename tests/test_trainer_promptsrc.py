"""PromptSRC specifics: frozen zero-shot targets (computed once), prompt-only GPA, and the
checkpoint contract with the PromptKD teacher (build_frozen_model)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from test_trainer_all import CONFIGS, make_cfg

import train
from dassl_ext.engine import build_trainer
from dassl_ext.engine.hooks import ModelSelection, ParameterAveraging, PeriodicCheckpointer
from dassl_ext.errors import UserError
from dassl_ext.modeling import IMAGENET_TEMPLATES, clip, load_clip
from dassl_ext.utils.checkpoint import load_checkpoint
from trainers import promptsrc
from trainers.promptsrc import PromptSRC


@pytest.fixture(scope="module")
def src_trainer(tiny_clip_root, digits_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("src")
    return build_trainer(make_cfg("PromptSRC", out, digits_root, tiny_clip_root))


def test_zero_shot_targets_match_frozen_clip_and_are_not_recomputed(
    src_trainer, tiny_clip_root, monkeypatch
):
    reference = load_clip("tiny-teacher", tiny_clip_root)
    names = [c.replace("_", " ") for c in src_trainer.classnames]
    with torch.no_grad():
        per_template = [
            reference.encode_text(clip.tokenize([t.format(n) for n in names]))
            for t in IMAGENET_TEMPLATES
        ]
        expected = F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)  # mean, then norm
        images = torch.randn(3, 3, 32, 32)
        expected_img = F.normalize(reference.encode_image(images), dim=-1)
    assert len(IMAGENET_TEMPLATES) == 60
    torch.testing.assert_close(src_trainer.zs_text_features.cpu(), expected, rtol=1e-4, atol=1e-5)
    device, tol = src_trainer.device, 1e-4 if src_trainer.prec.effective == "fp32" else 2e-2
    zs_img = promptsrc.zero_shot_image_features(src_trainer.model, images.to(device)).cpu()
    torch.testing.assert_close(zs_img.float(), expected_img, rtol=tol, atol=tol)

    def boom(*args, **kwargs):
        raise AssertionError("zero-shot text features recomputed during a step")

    monkeypatch.setattr(promptsrc, "zero_shot_text_features", boom)
    batch = next(iter(src_trainer.train_loader_x))
    src_trainer.set_model_mode("train")
    summary = src_trainer.forward_backward(batch)
    assert {"ce", "scl_text", "scl_image", "scl_logits"} <= set(summary)


def test_gpa_aggregates_only_the_prompts(src_trainer, monkeypatch):
    trainer, prompts = src_trainer, src_trainer.model.trainable_parameters()
    kinds = [type(h) for h in trainer.hooks]  # GPA first, so selection / saving see the average
    assert kinds.index(ParameterAveraging) < kinds.index(ModelSelection)
    assert kinds.index(ModelSelection) < kinds.index(PeriodicCheckpointer)
    (gpa,) = [h for h in trainer.hooks if isinstance(h, ParameterAveraging)]
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    monkeypatch.setattr(trainer, "max_epoch", 2)
    monkeypatch.setattr(gpa, "weights", [0.25, 0.75])
    gpa.sum, gpa.history = None, {}
    values = []
    for epoch in range(2):
        with torch.no_grad():
            for p in prompts:
                p.add_(torch.randn_like(p))
        values.append([p.detach().clone() for p in prompts])
        trainer.epoch = epoch
        gpa.after_epoch()  # the GPA hook alone: no evaluation, no saving
    for p, a, b in zip(prompts, *values):
        torch.testing.assert_close(p.detach(), 0.25 * a + 0.75 * b)
    prompt_ids = {id(p) for p in prompts}
    for name, p in trainer.model.named_parameters():
        if id(p) not in prompt_ids:
            assert torch.equal(p, frozen[name]), name  # frozen weights untouched (bug 14)
    state = torch.load(os.path.join(trainer.output_dir, promptsrc.GPA_FILE), weights_only=True)
    assert sorted(state["sums"]) == [1, 2] and len(state["sums"][1]) == len(prompts)
    for total, a in zip(state["sums"][1], values[0]):
        torch.testing.assert_close(total, 0.25 * a.cpu())


def test_last_checkpoint_holds_gpa_prompts(tiny_clip_root, digits_root, tmp_path, monkeypatch):
    from test_trainer_all import argv

    # all GPA weight on epoch 1: the final (epoch 2) checkpoint must hold epoch-1 prompts
    monkeypatch.setattr(promptsrc, "gpa_weights", lambda mean, std, n: [1.0] + [0.0] * (n - 1))
    opts = ["OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "TEST.NO_TEST", "True"]
    assert train.main(argv("PromptSRC", tmp_path, digits_root, tiny_clip_root, *opts)) == 0
    first = load_checkpoint(str(tmp_path / "VLPromptLearner" / "model.pth.tar-1"))["state_dict"]
    last = load_checkpoint(str(tmp_path / "VLPromptLearner" / "model.pth.tar-2"))["state_dict"]
    assert torch.equal(first["prompt_learner.ctx"], last["prompt_learner.ctx"])
    assert torch.equal(first["image_encoder.VPT"], last["image_encoder.VPT"])
    clip_sd = load_clip("tiny-teacher", tiny_clip_root).state_dict()
    assert torch.equal(
        last["image_encoder.conv1.weight"].float().cpu(), clip_sd["visual.conv1.weight"]
    )


def _official_style_checkpoint(trainer, path) -> dict:
    """Our state dict plus what official files add: token buffers and the ZS encoder copy."""
    sd = {k: v.float().cpu() for k, v in trainer.model.state_dict().items()}
    sd["prompt_learner.token_prefix"] = torch.zeros(7, 1, 4)  # other classes: ignored
    sd["prompt_learner.token_suffix"] = torch.zeros(7, 72, 4)
    for k, v in trainer.model.image_encoder.state_dict().items():
        if "VPT" not in k:
            sd[f"prompt_learner.ZS_image_encoder.{k}"] = v.cpu().clone()
    torch.save({"state_dict": sd, "epoch": 20, "val_result": None}, path)
    return sd


def test_checkpoint_loads_into_frozen_teacher(src_trainer, tmp_path):
    trainer = src_trainer
    trainer.save_model(0, str(tmp_path))
    ours = str(tmp_path / "VLPromptLearner" / "model.pth.tar-1")
    saved = load_checkpoint(ours)["state_dict"]
    assert not any("ZS_image_encoder" in k or "token_" in k for k in saved)
    classnames = list(trainer.classnames)
    teacher = PromptSRC.build_frozen_model(trainer.cfg, classnames, "tiny-teacher", ours)
    assert set(teacher.state_dict()) == set(saved)  # no missing, no unexpected keys

    official = str(tmp_path / "official.pth.tar")
    _official_style_checkpoint(trainer, official)
    teacher2 = PromptSRC.build_frozen_model(trainer.cfg, classnames, "tiny-teacher", official)
    torch.testing.assert_close(teacher2.text_features(), teacher.text_features(), atol=1e-3, rtol=0)


def test_checkpoint_mismatch_is_a_user_error(src_trainer, tmp_path):
    sd = dict(src_trainer.model.state_dict())
    del sd["text_encoder.transformer.resblocks.3.VPT_shallow"]
    path = str(tmp_path / "missing.pth.tar")
    torch.save({"state_dict": sd}, path)
    cfg, names = src_trainer.cfg, list(src_trainer.classnames)
    with pytest.raises(UserError, match="resblocks.3.VPT_shallow") as e:
        PromptSRC.build_frozen_model(cfg, names, "tiny-teacher", path)
    assert path in str(e.value)
    sd = dict(src_trainer.model.state_dict())
    sd["prompt_learner.ctx"] = torch.zeros(2, sd["prompt_learner.ctx"].shape[1])
    torch.save({"state_dict": sd}, path)
    with pytest.raises(UserError, match="prompt_learner.ctx"):
        PromptSRC.build_frozen_model(cfg, names, "tiny-teacher", path)


@pytest.mark.parametrize("name", ["PromptSRC", "MaPLe", "CoOp"])
def test_bf16_on_cpu(name, tiny_clip_root, digits_root, tmp_path):
    section = {"PromptSRC": "PROMPTSRC", "MaPLe": "MAPLE", "CoOp": "COOP"}[name]
    cfg = make_cfg(name, tmp_path, digits_root, tiny_clip_root, f"TRAINER.{section}.PREC", "bf16")
    trainer = build_trainer(cfg)
    assert trainer.prec.effective == "bf16"
    assert all(p.dtype == torch.float32 for p in trainer.model.trainable_parameters())
    assert trainer.model.text_encoder.text_projection.dtype == torch.bfloat16
    loss = trainer.forward_backward(next(iter(trainer.train_loader_x)))["loss"]
    assert torch.isfinite(torch.tensor(loss))
    assert CONFIGS[name][1] in trainer.get_model_names()


@pytest.mark.parametrize("prec", ["fp16", "amp"])  # bf16: test_bf16_on_cpu; fp32: everywhere
def test_half_precisions_train(prec, tiny_clip_root, digits_root, tmp_path, cpu_fp16):
    """fp16 / amp (kept on the CPU by the test-only switch, with their gradient scaler): fp32
    trainable prompts, frozen weights in the precision's dtype, a finite loss, prompts that
    move, finite logits."""
    for name, section in (("PromptSRC", "PROMPTSRC"), ("MaPLe", "MAPLE"), ("CoCoOp", "COCOOP")):
        opts = (f"TRAINER.{section}.PREC", prec)
        trainer = build_trainer(make_cfg(name, tmp_path / name, digits_root, tiny_clip_root, *opts))
        assert trainer.prec.effective == prec
        assert trainer.scaler.is_enabled() == (prec in ("fp16", "amp"))
        assert all(p.dtype == torch.float32 for p in trainer.model.trainable_parameters())
        frozen = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
        assert trainer.prec.weight_dtype in frozen
        if trainer.scaler.is_enabled():
            # The tiny CLIPs' gradients overflow fp16 at the default scale (2^16) down to 2^10,
            # so the scaler would skip ~7 steps while it calibrates; start where it lands.
            trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 64.0})
        before = [p.detach().clone() for p in trainer.model.trainable_parameters()]
        batch = next(iter(trainer.train_loader_x))
        loss = trainer.forward_backward(batch)["loss"]
        assert torch.isfinite(torch.tensor(loss)), (name, prec, loss)
        after = trainer.model.trainable_parameters()
        assert any(not torch.equal(a, b) for a, b in zip(after, before)), (name, prec)
        assert trainer.scaler.get_scale() == (64.0 if trainer.scaler.is_enabled() else 1.0)
        trainer.eval_class_ids = torch.arange(trainer.num_classes, device=trainer.device)
        logits = trainer.model_inference(batch["img"].to(trainer.device))
        assert logits.shape == (len(batch["img"]), trainer.num_classes)
        assert torch.isfinite(logits).all()


def test_resumed_run_keeps_the_gpa_sum(tiny_clip_root, digits_root, tmp_path):
    from test_trainer_all import argv

    opts = ["OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1", "TEST.NO_TEST", "True"]
    opts += ["TRAINER.PROMPTSRC.GPA_MEAN", "1", "TRAINER.PROMPTSRC.GPA_STD", "1"]  # w = .62, .38
    assert train.main(argv("PromptSRC", tmp_path, digits_root, tiny_clip_root, *opts)) == 0
    final = tmp_path / "VLPromptLearner" / "model.pth.tar-2"
    expected = load_checkpoint(str(final))["state_dict"]["prompt_learner.ctx"]
    os.remove(final)  # as if the run had stopped after epoch 1
    flags = ("--resume", str(tmp_path))
    assert (
        train.main(argv("PromptSRC", tmp_path, digits_root, tiny_clip_root, *opts, flags=flags))
        == 0
    )
    resumed = load_checkpoint(str(final))["state_dict"]["prompt_learner.ctx"]
    torch.testing.assert_close(resumed, expected)
