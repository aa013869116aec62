"""PromptKD's teacher: which trainer builds it, where its checkpoint is, and its text
features computed once.

The teacher is built by the trainer that trained it (``TRAINER.PROMPTKD.TEACHER_TRAINER``),
which declares how it teaches (:class:`~dassl_ext.engine.teacher.TeacherSupport`) and builds
the frozen model (``build_frozen_model``). The teacher's text features for all classes are
constant once the checkpoint is loaded, so they are computed once, cached on disk under a
key of everything they depend on, and the text tower is then dropped (spec §3.4 step 1,
§7.10).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import torch

from dassl_ext.engine import TRAINER_REGISTRY, TeacherSupport
from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import write_torch_atomic
from dassl_ext.utils.checkpoint import BEST_FILE, find_checkpoint

logger = logging.getLogger(__name__)

TEACHER_ROOT = "teacher_model"  # relative to the working directory, as the official code
CROSS_TEACHER_DATASET = "ImageNet-xd"  # cross mode: teacher_model/ImageNet-xd/<model>_large/


def teacher_trainer(cfg) -> tuple[type, TeacherSupport]:
    """The trainer class named by ``TRAINER.PROMPTKD.TEACHER_TRAINER`` and how it teaches."""
    name = cfg.TRAINER.PROMPTKD.TEACHER_TRAINER
    cls = TRAINER_REGISTRY.get(name)
    if cls.frozen_teacher is None:
        teachers = [n for n, c in TRAINER_REGISTRY if c.frozen_teacher is not None]
        raise UserError(
            f"TRAINER.PROMPTKD.TEACHER_TRAINER {name} cannot serve as a frozen teacher (it has "
            f"no fixed class text features); use one of {', '.join(teachers)}."
        )
    return cls, cls.frozen_teacher


def default_teacher_dir(cfg, model_name: str) -> str:
    """Official default location (promptkd.py:314-317) of the teacher checkpoint folder.

    base2novel: ``teacher_model/<DATASET.NAME>/<model_name>/``; cross:
    ``teacher_model/ImageNet-xd/<model_name>_large/`` (model_name: VLPromptLearner).
    """
    if cfg.TRAINER.MODAL == "cross":
        return os.path.join(TEACHER_ROOT, CROSS_TEACHER_DATASET, f"{model_name}_large")
    return os.path.join(TEACHER_ROOT, cfg.DATASET.NAME, model_name)


def resolve_teacher_checkpoint(cfg) -> tuple[str | None, str]:
    """``(path or None, description)`` of the teacher checkpoint the config asks for.

    ``TRAINER.PROMPTKD.TEACHER_CKPT`` is a file, or a folder (its best checkpoint, else the
    newest epoch: :func:`~dassl_ext.utils.checkpoint.find_checkpoint`); empty means the
    official default folder of teachers that have one (PromptSRC / IVLP). A zero-shot
    teacher has no checkpoint. ``path`` is None when the file does not exist;
    ``description`` then says where it was looked for.
    """
    pk = cfg.TRAINER.PROMPTKD
    _, support = teacher_trainer(cfg)
    if not support.needs_checkpoint:
        return None, "none (zero-shot teacher)"
    where = pk.TEACHER_CKPT
    if not where:
        if support.default_model_name is None:
            raise UserError(
                f"TRAINER.PROMPTKD.TEACHER_CKPT is empty, and a {pk.TEACHER_TRAINER} teacher has "
                "no default location; set it to the teacher's model file or model folder."
            )
        where = default_teacher_dir(cfg, support.default_model_name)
    description = where
    if os.path.isdir(where):
        where = find_checkpoint(where)
        description = f"{description}/{BEST_FILE} or model.pth.tar-<N>"
    return (where if os.path.isfile(where) else None), description


def missing_teacher_error(description: str) -> UserError:
    return UserError(
        f"Teacher checkpoint not found: {description}; train the teacher "
        "(scripts/promptkd/base2new.sh does) or set TRAINER.PROMPTKD.TEACHER_CKPT to its file."
    )


def file_identity(path: str | None) -> list:
    """What identifies a weights file in the cache key: its absolute path, size and mtime
    (``[None]`` for no file). The one place to change for content digests."""
    if path is None:
        return [None]
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def text_feature_key(
    cfg, classnames: list[str], clip_file: list, checkpoint: list, compute: str
) -> str:
    """Hash of everything the teacher's text features depend on (a pure function).

    The teacher trainer and its config section (prompt length/depth, templates ...), the
    teacher CLIP weights file and the teacher checkpoint (their :func:`file_identity`), the
    class names in label order, and ``compute`` (device type + precision they are computed in).
    """
    pk = cfg.TRAINER.PROMPTKD
    section = cfg.TRAINER.get(pk.TEACHER_TRAINER.upper())
    parts = {
        "trainer": pk.TEACHER_TRAINER,
        "section": section.dump() if section is not None else None,
        "backbone": pk.TEACHER_NAME,
        "clip_file": clip_file,
        "checkpoint": checkpoint,
        "classnames": list(classnames),
        "compute": compute,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def text_cache_dir(cfg) -> str:
    """``TRAINER.PROMPTKD.TEXT_CACHE_DIR``, by default ``teacher_text_features/`` next to
    OUTPUT_DIR (so the seeds of one experiment share it)."""
    if cfg.TRAINER.PROMPTKD.TEXT_CACHE_DIR:
        return cfg.TRAINER.PROMPTKD.TEXT_CACHE_DIR
    out = os.path.abspath(cfg.OUTPUT_DIR)
    return os.path.join(os.path.dirname(out), "teacher_text_features")


def load_cached_text_features(folder: str, key: str) -> torch.Tensor | None:
    """The cached (C, E) fp32 features for ``key``, or None."""
    path = os.path.join(folder, f"{key}.pt")
    if not os.path.isfile(path):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return obj["text_features"].float()
    except Exception as e:  # a corrupt cache entry is recomputed, never fatal
        logger.warning("Ignoring unreadable text-feature cache %s (%s)", path, e)
        return None


def save_cached_text_features(folder: str, key: str, feats: torch.Tensor, meta: dict) -> str:
    """Write the cache entry atomically (parallel seeds or ranks may race)."""
    entry = {"text_features": feats.detach().float().cpu(), "meta": meta}
    return write_torch_atomic(os.path.join(folder, f"{key}.pt"), entry)
