"""PromptKD with teacher and student at different resolutions: INPUT.SIZE is the student's,
the teacher sees the same augmented batch resized to its own (``teacher_view``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_promptkd import read_json, student_argv

import train
from dassl_ext.config import setup_cfg
from dassl_ext.engine import TRAINER_REGISTRY, build_trainer
from dassl_ext.modeling import TinyClipSpec, save_tiny_clip
from trainers.losses import kd_loss
from trainers.promptkd import teacher_view

ZERO_SHOT = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP")


@pytest.fixture(scope="module")
def teacher_64px(tmp_path_factory) -> str:
    """A tiny CLIP that sees 64 px images (the tiny student sees 32 px)."""
    path = str(tmp_path_factory.mktemp("clip64") / "tiny-64px.pt")
    spec = TinyClipSpec(embed_dim=48, vision_width=64, text_width=64, image_resolution=64,
                        patch_size=16, seed=3)  # fmt: skip
    return save_tiny_clip(path, spec)


class ImageSpy:
    """Records the images (B, 3, H, W) that each built ZeroshotCLIP teacher's image tower gets."""

    def __init__(self, monkeypatch):
        self.images: list[torch.Tensor] = []
        cls = TRAINER_REGISTRY.get("ZeroshotCLIP")
        build = cls.build_frozen_model

        def recording_build(*args, **kwargs):
            model = build(*args, **kwargs)
            image_features = model.image_embedding

            def recorded(images):
                self.images.append(images)
                return image_features(images)

            model.image_embedding = recorded
            return model

        monkeypatch.setattr(cls, "build_frozen_model", recording_build)


def test_teacher_view():
    """Same size: the batch itself. Otherwise bicubic with antialiasing both ways; it commutes
    with the per-channel normalisation, and a flat image stays flat."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    assert teacher_view(x, 32) is x
    up, down = teacher_view(x, 64), teacher_view(x, 16)
    assert up.shape == (2, 3, 64, 64) and down.shape == (2, 3, 16, 16)
    kw = {"mode": "bicubic", "align_corners": False, "antialias": True}
    torch.testing.assert_close(up, F.interpolate(x, size=(64, 64), **kw), rtol=0, atol=0)
    aliased = F.interpolate(x, size=(16, 16), mode="bicubic", align_corners=False)
    assert not torch.allclose(down, aliased, atol=1e-3)  # downsizing is antialiased
    mean, std = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1), torch.tensor([0.2, 0.3, 0.25])
    std = std.view(3, 1, 1)
    for size in (16, 48, 64):
        torch.testing.assert_close(
            teacher_view((x - mean) / std, size), (teacher_view(x, size) - mean) / std
        )
    flat = torch.full((1, 3, 32, 32), 0.7)
    torch.testing.assert_close(teacher_view(flat, 64), torch.full((1, 3, 64, 64), 0.7))
    torch.testing.assert_close(teacher_view(flat, 16), torch.full((1, 3, 16, 16), 0.7))


def test_teacher_at_64px_and_student_at_32px_train_together(
    digits_root, tiny_clip_root, teacher_64px, tmp_path, monkeypatch
):
    """INPUT.SIZE 32 (the student's); the 64 px teacher gets every batch at 64 px; one epoch
    of distillation, then base / new evaluation of the student alone."""
    spy = ImageSpy(monkeypatch)
    out = tmp_path / "kd"
    opts = (*ZERO_SHOT, "TRAINER.PROMPTKD.TEACHER_NAME", teacher_64px)
    assert train.main(student_argv(digits_root, tiny_clip_root, out, "", *opts)) == 0
    assert [tuple(im.shape[1:]) for im in spy.images] == [(3, 64, 64)] * 2  # 2 steps
    assert set(read_json(out / "results.json")["splits"]) == {"base", "new"}
    ckpt = torch.load(out / "VLPromptLearner" / "model.pth.tar-1", weights_only=True)
    assert ckpt["state_dict"]["class_text_features"].shape == (10, 48)


def test_input_size_is_checked_against_the_student_only(
    digits_root, tiny_clip_root, teacher_64px, tmp_path, capsys
):
    """INPUT.SIZE at the teacher's 64 px is refused for the 32 px student; the teacher's own
    trainer's rules (prompt depth against its layers) still apply."""
    opts = ("TRAINER.PROMPTKD.TEACHER_NAME", teacher_64px)
    argv = student_argv(digits_root, tiny_clip_root, tmp_path / "a", "", *ZERO_SHOT, *opts,
                        "INPUT.SIZE", "(64, 64)")  # fmt: skip
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "INPUT.SIZE is (64, 64); use (32, 32)" in err and "MODEL.BACKBONE.NAME" in err
    depth = ("TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "13")  # the teacher has 12 layers
    argv = student_argv(digits_root, tiny_clip_root, tmp_path / "b", tmp_path / "none", *opts,
                        *depth)  # fmt: skip
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION" in err and "Traceback" not in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_equal_resolutions_are_not_resized(digits_root, tiny_clip_root, tmp_path, monkeypatch):
    """Teacher and student at 32 px: the teacher gets the batch tensor itself, and the loss is
    bit for bit the one computed from the untouched images."""
    spy = ImageSpy(monkeypatch)
    extra = (*ZERO_SHOT, "TEST.NO_TEST", "True", "USE_CUDA", "False")
    cfg = setup_cfg(train.parse_args(student_argv(digits_root, tiny_clip_root, tmp_path, "",
                                                  *extra)))  # fmt: skip
    trainer = build_trainer(cfg)
    trainer.ensure_teacher()
    batch = next(iter(trainer.train_loader_x))
    images, feats = batch["img"], trainer.model.class_text_features
    with torch.no_grad():
        teacher = trainer.teacher
        t_logits = teacher.logit_scale.exp() * teacher.image_features(images) @ feats.t()
        s_logits = trainer.model(images, feats)
    expected = cfg.TRAINER.PROMPTKD.KD_WEIGHT * kd_loss(s_logits.float(), t_logits.float())
    spy.images.clear()
    assert trainer.forward_backward(batch)["loss"] == expected.item()
    (seen,) = spy.images
    assert seen is images


def test_teacher_view_on_the_gpu_matches_the_cpu():
    """The CUDA bicubic antialias kernels agree with the CPU ones."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    torch.manual_seed(0)
    x = torch.randn(2, 3, 224, 224)
    for size in (336, 160):
        cpu, gpu = teacher_view(x, size), teacher_view(x.cuda(), size).cpu()
        torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4)
