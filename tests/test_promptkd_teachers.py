"""PromptKD with any teacher: official-format PromptSRC files, MaPLe, CoOp, zero-shot CLIP."""

from __future__ import annotations

import os

import pytest
import torch
from test_promptkd import REPO, TeacherSpy, read_json, student_argv, teacher_argv

import train
from benchmarks.promptkd_models import save_official_teacher
from dassl_ext.config import setup_cfg
from dassl_ext.engine import TRAINER_REGISTRY, build_trainer
from dassl_ext.errors import UserError

DIGITS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _official_teacher_file(path, cfg) -> torch.nn.Module:
    """Write a PromptSRC teacher as the official code saves it (spec §2.6: fp16 frozen
    weights, the ZS image-encoder copy, base-class prompt buffers, a pickled scheduler
    object inside); return the model."""
    src = TRAINER_REGISTRY.get("PromptSRC")
    model = src.build_frozen_model(cfg, DIGITS_NAMES[:5], "tiny-teacher", None)
    with torch.no_grad():
        model.prompt_learner.ctx.add_(0.5)  # trained prompts differ from a fresh model's
    param = torch.nn.Parameter(torch.zeros(1))
    optim = torch.optim.SGD([param], lr=0.005, momentum=0.9)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optim, 20)
    scheduler = {"successor": cosine, "warmup_epoch": 1, "cons_lr": 1e-5, "last_epoch": 20}
    save_official_teacher(model, path, epoch=20, optimizer=optim.state_dict(),
                          scheduler=scheduler, val_result=None)  # fmt: skip
    return model


def test_official_format_teacher_loads_from_default_place(
    digits_root, tiny_clip_root, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the official default is relative: ./teacher_model/...
    extra = ("TEST.NO_TEST", "True", "USE_CUDA", "False")  # compared with an fp32 CPU reference
    argv = student_argv(digits_root, tiny_clip_root, tmp_path / "s", "", *extra)
    cfg = setup_cfg(train.parse_args(argv))
    path = os.path.join("teacher_model", "Digits", "VLPromptLearner", "model.pth.tar-20")
    fresh = _official_teacher_file(path, cfg)
    trainer = build_trainer(cfg)
    assert os.path.abspath(trainer.teacher_spec.checkpoint) == os.path.abspath(path)
    assert not hasattr(trainer.teacher, "text_encoder")  # text tower dropped
    ref = TRAINER_REGISTRY.get("PromptSRC").build_frozen_model(
        cfg, DIGITS_NAMES, "tiny-teacher", path
    )  # all 10 classes; the strict loader: no missing keys
    assert torch.equal(ref.prompt_learner.ctx, fresh.prompt_learner.ctx.half().float())
    with torch.no_grad():
        expected = ref.text_features()
    assert torch.allclose(trainer.model.class_text_features, expected, atol=1e-5)
    batch = next(iter(trainer.train_loader_x))
    assert torch.isfinite(torch.tensor(trainer.forward_backward(batch)["loss"]))
    # prompt depth from the teacher's own config section must match the file
    bad = setup_cfg(train.parse_args([*argv, "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "3"]))
    with pytest.raises(UserError, match="model.pth.tar-20"):
        build_trainer(bad)


TEACHERS = [
    ("CoOp", "CoOp/vit_b16_ep50.yaml"),
    ("MaPLe", "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"),
    ("ZeroshotCLIP", None),
]


@pytest.mark.parametrize("name, config", TEACHERS, ids=[t[0] for t in TEACHERS])
def test_other_teachers_distil(name, config, digits_root, tiny_clip_root, tmp_path, monkeypatch):
    if name not in TRAINER_REGISTRY:
        pytest.skip(f"{name} is not registered")
    teacher = ""
    if config:
        cfg_file = os.path.join(REPO, "configs", "trainers", config)
        argv = teacher_argv(digits_root, tiny_clip_root, tmp_path / "t", name, cfg_file)
        assert train.main(argv) == 0
        (folder,) = [
            d for d in os.listdir(tmp_path / "t") if (tmp_path / "t" / d / "checkpoint").exists()
        ]
        teacher = tmp_path / "t" / folder
    spy = TeacherSpy(monkeypatch, name)
    out = tmp_path / "kd"
    extra = ("TRAINER.PROMPTKD.TEACHER_TRAINER", name, "TEST.FINAL_MODEL", "last_step")
    assert train.main(student_argv(digits_root, tiny_clip_root, out, teacher, *extra)) == 0
    assert set(read_json(out / "results.json")["splits"]) == {"base", "new"}
    assert (spy.built, spy.text, spy.during_eval) == (1, 1, 0)
    assert spy.image == 2  # one teacher image forward per training step
