"""The frozen PromptKD teacher in its own precision (TRAINER.PROMPTKD.TEACHER_PREC).

bf16 logits close to fp32 on a tiny CLIP, half the weight memory, text features in chunks
equal to all at once, the fallback without native bf16, and distillation runs with the
teacher in fp32 and bf16 through benchmarks/teacher_precision.py.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import pytest
import torch
from test_promptkd import DIGITS, KD_CFG, REPO

from dassl_ext.config import apply_config_extensions, check_rules, config_rules, get_cfg_default
from dassl_ext.engine import TRAINER_REGISTRY
from dassl_ext.engine import precision as precision_mod
from dassl_ext.errors import UserError
from dassl_ext.modeling.loading import clip_weight_dtype
from trainers.promptkd_teacher import (
    prepare_frozen_teacher,
    resolve_teacher,
    teacher_text_features,
)

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
needs_bf16 = pytest.mark.skipif(
    not precision_mod.has_fast_bf16("cpu"), reason="this CPU has no native bf16"
)


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(precision_mod, "_warned", set())


def _cfg(clip_root: str, teacher_prec: str = "", prec: str = "fp32"):
    cfg = apply_config_extensions(get_cfg_default())
    cfg.MODEL.CLIP_ROOT = clip_root
    cfg.TRAINER.PROMPTKD.PREC = prec
    cfg.TRAINER.PROMPTKD.TEACHER_PREC = teacher_prec
    return cfg


def _teacher(clip_root: str, teacher_prec: str) -> tuple[torch.nn.Module, object]:
    """A PromptSRC teacher on tiny-teacher, built as PromptKD builds it."""
    cfg = _cfg(clip_root, teacher_prec)
    prec = precision_mod.resolve_frozen_precision(teacher_prec, "cpu")
    with torch.random.fork_rng(devices=[]), clip_weight_dtype(prec.weight_dtype):
        torch.manual_seed(0)  # the same prompts in both precisions
        teacher = TRAINER_REGISTRY.get("PromptSRC").build_frozen_model(
            cfg, CLASSES, "tiny-teacher", None
        )
    return prepare_frozen_teacher(teacher, prec), prec


def _logits(teacher, prec, images: torch.Tensor) -> torch.Tensor:
    text = teacher_text_features(teacher, len(CLASSES), prec)
    with torch.no_grad(), prec.autocast():
        feats = teacher.image_features(images).float()
    return teacher.logit_scale.float().exp() * feats @ text.t()


@needs_bf16
def test_bf16_teacher_logits_close_to_fp32(tiny_clip_root):
    t32, p32 = _teacher(tiny_clip_root, "fp32")
    t16, p16 = _teacher(tiny_clip_root, "bf16")
    assert (p32.effective, p16.effective) == ("fp32", "bf16")
    assert t16.image_encoder.conv1.weight.dtype == torch.bfloat16  # LayerNorms stay fp32:
    assert t16.image_encoder.ln_pre.weight.dtype == torch.float32  # they run on the CPU too
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref, low = _logits(t32, p32, images), _logits(t16, p16, images)
    # logits are 14.3 * cos (|logit| < 4 here); bf16 keeps 2-3 digits through 12 blocks
    assert (low - ref).abs().max() < 0.6 and (low - ref).abs().mean() < 0.1
    kl = torch.nn.functional.kl_div(
        low.log_softmax(1), ref.log_softmax(1), reduction="batchmean", log_target=True
    )
    assert kl < 0.01  # what the KD loss sees (0.003 here)
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def test_fp16_teacher_logits_close_to_fp32(tiny_clip_root, cpu_fp16):
    """TEACHER_PREC fp16 (the official teacher's precision; kept on the CPU by the test-only
    switch): fp16 weights and autocast, LayerNorms fp32, logits close to fp32."""
    t32, p32 = _teacher(tiny_clip_root, "fp32")
    t16, p16 = _teacher(tiny_clip_root, "fp16")
    assert (p16.effective, p16.autocast_dtype) == ("fp16", torch.float16)
    assert t16.image_encoder.conv1.weight.dtype == torch.float16
    assert t16.image_encoder.ln_pre.weight.dtype == torch.float32
    images = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref, low = _logits(t32, p32, images), _logits(t16, p16, images)
    # fp16 keeps 3 more mantissa bits than bf16 (measured: 0.05 max, 0.008 mean)
    assert (low - ref).abs().max() < 0.1 and (low - ref).abs().mean() < 0.02
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


@needs_bf16
def test_bf16_teacher_weights_take_half_the_memory(tiny_clip_root):
    def weight_bytes(model) -> int:
        return sum(p.numel() * p.element_size() for p in model.parameters())

    sizes = {}
    for prec in ("fp32", "bf16"):
        teacher, _ = _teacher(tiny_clip_root, prec)
        teacher.drop_text_tower()  # what PromptKD keeps while training
        sizes[prec] = weight_bytes(teacher)
    assert sizes["bf16"] <= 0.52 * sizes["fp32"]


def test_text_features_in_chunks_equal_all_at_once(tiny_clip_root):
    teacher, prec = _teacher(tiny_clip_root, "fp32")
    whole = teacher_text_features(teacher, len(CLASSES), prec)
    chunks = teacher_text_features(teacher, len(CLASSES), prec, chunk=3)
    assert whole.shape == (10, 48) and whole.dtype == torch.float32
    assert torch.allclose(chunks, whole, atol=1e-6)


def test_teacher_prec_empty_follows_prec_and_bad_name_is_user_error(tiny_clip_root):
    def teacher_prec(teacher_prec: str, prec: str):
        cfg = _cfg(tiny_clip_root, teacher_prec, prec)
        cfg.TRAINER.PROMPTKD.TEACHER_NAME = "tiny-teacher"
        cfg.TRAINER.PROMPTKD.TEACHER_TRAINER = "ZeroshotCLIP"  # no checkpoint to find
        cfg.TRAINER.PROMPTKD.TEXT_CACHE_DIR = os.path.join(tiny_clip_root, "cache")
        return resolve_teacher(cfg, torch.device("cpu"), CLASSES).precision

    assert teacher_prec("", "fp32").name == "fp32"
    assert teacher_prec("", "amp").effective == "fp32"
    assert teacher_prec("BF16", "fp32").name == "bf16"
    cfg = _cfg(tiny_clip_root, "fp64")
    with pytest.raises(UserError, match="TRAINER.PROMPTKD.TEACHER_PREC is 'fp64'; use one of"):
        check_rules(cfg, [rule for rule in config_rules() if "TEACHER_PREC" in rule.key])


def test_bf16_without_native_support_runs_fp32_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(precision_mod, "has_fast_bf16", lambda device: False)
    with caplog.at_level(logging.WARNING):
        first = precision_mod.resolve_frozen_precision("bf16", "cpu")
        second = precision_mod.resolve_frozen_precision("bf16", "cpu")
    assert first == second and first.effective == "fp32" and first.autocast_dtype is None
    assert first.weight_dtype == torch.float32
    assert sum("no native bf16" in r.getMessage() for r in caplog.records) == 1
    # the trainer's own precision is unaffected: bf16 training still runs bf16
    assert precision_mod.resolve_precision("bf16", "cpu").effective == "bf16"


def test_fast_bf16_on_cuda_needs_a_gpu():
    assert precision_mod.has_fast_bf16("cuda") == (
        torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    )


def _load_benchmark(name: str):
    path = os.path.join(REPO, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_bf16
def test_distillation_trains_with_a_bf16_teacher(digits_root, tiny_clip_root, tmp_path, capsys):
    """The accuracy check of benchmarks/teacher_precision.py on tiny stand-ins: a zero-shot
    teacher in fp32 and in bf16, one epoch each; the bf16 teacher's targets and the student
    it trains stay close to fp32's."""
    bench = _load_benchmark("teacher_precision")
    args = bench.parse_args([
        "--root", str(digits_root), "--clip-root", tiny_clip_root, "--student", "tiny-student",
        "--teacher", "tiny-teacher", "--teacher-trainer", "ZeroshotCLIP",
        "--dataset-config", DIGITS, "--config-file", KD_CFG, "--output-dir", str(tmp_path),
        "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1",
        "DATASET.NUM_SHOTS", "2", "TRAINER.PROMPTKD.PREC", "fp32",
    ])  # fmt: skip
    results = bench.run_teacher_precisions(args)
    assert list(results) == [("fp32", 1), ("bf16", 1)]
    # The bf16 teacher really ran and agrees with fp32: the teacher text features each
    # student keeps differ, with a cosine >= 0.99 per class (measured >= 0.996).
    feats = [
        torch.load(path, weights_only=True)["state_dict"]["class_text_features"].float()
        for path in (
            tmp_path / "seed1" / f"teacher_{p}" / "VLPromptLearner" / "model.pth.tar-1"
            for p in ("fp32", "bf16")
        )
    ]
    assert feats[0].shape == (10, 48) and not torch.equal(*feats)
    assert torch.nn.functional.cosine_similarity(*feats, dim=1).min() >= 0.99
    # Same seed and data: the students end within a few images (0.37 points each) of each
    # other (measured: base +1.1, new +0.7 points); both are still near chance after 1 epoch.
    for split in ("base", "new"):
        assert results["bf16", 1][split] == pytest.approx(results["fp32", 1][split], abs=4.0)
    assert "Building the teacher" in (tmp_path / "seed1" / "teacher_bf16" / "log.txt").read_text()
    table = bench.format_table(results)
    assert table.splitlines()[1].split("|")[0].strip() == "fp32" and "ΔHM" in table


def test_precision_table_averages_the_seeds():
    bench = _load_benchmark("teacher_precision")
    acc = {("fp32", 1): (90.0, 80.0), ("bf16", 1): (91.0, 79.0),
           ("fp32", 2): (92.0, 84.0), ("bf16", 2): (92.0, 86.0)}  # fmt: skip
    results = {k: {"base": b, "new": n, "HM": 2 * b * n / (b + n)} for k, (b, n) in acc.items()}
    lines = bench.format_table(results).splitlines()
    assert len(lines) == 7  # header, 2 seeds x 2 precisions, 2 mean rows
    mean_bf16 = [c.strip() for c in lines[-1].split("|")]
    assert mean_bf16[:4] == ["bf16", "mean", "91.50", "82.50"]
    assert mean_bf16[5:7] == ["+0.50", "+0.50"]  # bf16 minus fp32 of the means
    assert [c.strip() for c in lines[2].split("|")][5] == "+1.00"  # seed 1's own difference
