"""The models of ``promptkd_step.py``: weight files, and PromptKD built ours and officially.

Files (written once into a folder): the student and teacher CLIPs as plain state dicts
with OpenAI's dtypes (random weights, real shapes), and a PromptSRC teacher checkpoint in
the official format (fp16, with the zero-shot image-encoder copy). OpenAI's TorchScript
archives load the same way, only without the memory mapping.

* ours: the teacher read into its own precision, its text features computed once in
  chunks, its text tower dropped; checkpoints memory-mapped; the student with the lean
  QuickGELU; evaluation runs the student only.
* official (spec §3.2): both CLIPs read whole and built by ``clip.model.build_model``
  (random init, then a copy), the checkpoint read whole, the teacher in fp16 (fp32 off
  CUDA) with its text tower kept and run on every step and every test batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from dassl_ext.config import apply_config_extensions, get_cfg_default, merge_from_file
from dassl_ext.engine import TRAINER_REGISTRY, Precision, resolve_frozen_precision
from dassl_ext.modeling import clip, load_clip
from dassl_ext.modeling.loading import clip_filename
from dassl_ext.modeling.tiny import build_tiny_clip
from trainers.promptkd_student import new_student
from trainers.promptkd_teacher import (
    build_frozen_teacher,
    prepare_frozen_teacher,
    resolve_teacher,
    teacher_text_features,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC_CFG = os.path.join(
    REPO, "configs", "trainers", "PromptSRC", "vit_l14_c2_ep20_batch8_4+4ctx.yaml"
)
TEACHER_CKPT = "teacher-promptsrc.pth.tar"
# clip.model.CLIP(embed_dim, image_resolution, vision_layers, vision_width, patch_size,
#                 context_length, vocab_size, text_width, text_heads, text_layers)
SHAPES = {
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
}


@dataclass(frozen=True)
class Pair:
    student: str
    teacher: str
    size: int  # input resolution


PAIRS = {
    "real": Pair("ViT-B/16", "ViT-L/14", 224),
    "tiny": Pair("tiny-student", "tiny-teacher", 32),
}


def random_clip_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Random weights of CLIP ``name`` in OpenAI's dtypes (fp16 conv / linear / projections)."""
    if name not in SHAPES:
        return build_tiny_clip(name)
    torch.manual_seed(0)
    model = clip.model.CLIP(*SHAPES[name])
    clip.model.convert_weights(model)
    return model.state_dict()


def make_files(folder: str, pair: Pair) -> None:
    """Write the two CLIP files and the official-format teacher checkpoint (if missing)."""
    os.makedirs(folder, exist_ok=True)
    for name in (pair.student, pair.teacher):
        path = os.path.join(folder, clip_filename(name))
        if not os.path.isfile(path):
            torch.save(random_clip_state_dict(name), path + ".tmp")
            os.replace(path + ".tmp", path)
    path = os.path.join(folder, TEACHER_CKPT)
    if not os.path.isfile(path):
        teacher = TRAINER_REGISTRY.get("PromptSRC").build_frozen_model(
            benchmark_cfg(folder), ["class 0"], pair.teacher, None
        )
        save_official_teacher(teacher, path, epoch=20)


def save_official_teacher(model: nn.Module, path: str, **extra) -> None:
    """Save a built PromptSRC ``model`` as the official code saves a teacher (spec §2.6), a
    layout this project reads but never writes: its state dict with the prompt learner's
    class-name buffers and a copy of the image encoder (``prompt_learner.ZS_image_encoder``),
    matrices in fp16 except the visual prompts; ``extra``: more entries (epoch, optimizer)."""
    sd = dict(model.state_dict())
    for name in ("token_prefix", "token_suffix"):  # persistent buffers in the official code
        sd[f"prompt_learner.{name}"] = getattr(model.prompt_learner, name)
    for k in [k for k in sd if k.startswith("image_encoder.") and "VPT" not in k]:
        sd["prompt_learner.ZS_image_encoder." + k[len("image_encoder.") :]] = sd[k]
    sd = {k: (v.half() if v.ndim >= 2 and "VPT" not in k else v).clone() for k, v in sd.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save({"state_dict": sd, **extra}, path + ".tmp")
    os.replace(path + ".tmp", path)


def benchmark_cfg(folder: str, pair: Pair | None = None, prec: str = "fp32", t_prec: str = ""):
    """Default config with the PromptSRC ViT-L/14 teacher section, CLIP files in ``folder``;
    with ``pair``, PromptKD's keys for its teacher (the digests stored in ``folder``)."""
    cfg = apply_config_extensions(get_cfg_default())
    merge_from_file(cfg, SRC_CFG)
    cfg.MODEL.CLIP_ROOT = folder
    if pair is not None:
        pk = cfg.TRAINER.PROMPTKD
        pk.TEACHER_NAME, pk.TEACHER_CKPT = pair.teacher, os.path.join(folder, TEACHER_CKPT)
        pk.PREC, pk.TEACHER_PREC, pk.TEXT_CACHE_DIR = prec, t_prec, folder
    return cfg


@dataclass
class Built:
    """What one variant runs: the student, the teacher (None: student only) and how."""

    student: nn.Module
    teacher: nn.Module | None
    class_features: torch.Tensor  # (C, E_t), normalised
    teacher_prec: Precision
    recompute_text: bool  # official: the teacher's text tower runs on every step


def build_ours(folder: str, pair: Pair, classes: int, prec: Precision, t_prec: Precision,
               with_teacher: bool) -> Built:  # fmt: skip
    """As ``PromptKD.build_model``: the teacher resolved and (if ``with_teacher``) built, its
    text features computed, its text tower dropped; then the student."""
    names = [f"class {i}" for i in range(classes)]
    cfg = benchmark_cfg(folder, pair, prec.name, t_prec.name)
    spec = resolve_teacher(cfg, prec.device, names)
    teacher = None
    if with_teacher:
        teacher = build_frozen_teacher(cfg, spec, names)
        feats = teacher_text_features(teacher, classes, spec.precision)
        teacher.drop_text_tower()
    else:  # evaluation: the class features come with the student checkpoint
        feats = nn.functional.normalize(torch.randn(classes, spec.embed_dim()), dim=-1)
        feats = feats.to(prec.device)
    student = new_student(load_clip(pair.student, folder), 4, 9, feats.shape[1], prec.weight_dtype)
    return Built(student.to(prec.device), teacher, feats, spec.precision, recompute_text=False)


def _official_clip(path: str, prec: Precision):
    clip_model = clip.model.build_model(torch.load(path, map_location="cpu", weights_only=True))
    return clip_model.float() if prec.weight_dtype == torch.float32 else clip_model


def build_official(folder: str, pair: Pair, classes: int, prec: Precision) -> Built:
    """As the official ``PromptKD.build_model``: teacher always fp16 (fp32 off CUDA), the
    checkpoint read whole and loaded non-strictly, the plain QuickGELU."""
    t_prec = resolve_frozen_precision("fp16", prec.device)
    cfg, names = benchmark_cfg(folder), [f"class {i}" for i in range(classes)]
    src = TRAINER_REGISTRY.get("PromptSRC")
    teacher = src.build_custom_clip(cfg, names, _official_clip(
        os.path.join(folder, clip_filename(pair.teacher)), t_prec))  # fmt: skip
    ckpt = torch.load(os.path.join(folder, TEACHER_CKPT), map_location="cpu", weights_only=True)
    teacher.load_state_dict(ckpt["state_dict"], strict=False)
    del ckpt
    prepare_frozen_teacher(teacher, t_prec)
    feats = teacher_text_features(teacher, classes, t_prec, chunk=classes)
    s_clip = _official_clip(os.path.join(folder, clip_filename(pair.student)), prec)
    student = new_student(s_clip, 4, 9, feats.shape[1], prec.weight_dtype, lean=False)
    return Built(student.to(prec.device), teacher, feats, t_prec, recompute_text=True)
