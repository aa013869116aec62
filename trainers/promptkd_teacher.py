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
import yaml

from dassl_ext.engine import TRAINER_REGISTRY, TeacherSupport
from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import write_torch_atomic
from dassl_ext.utils.checkpoint import BEST_FILE, find_checkpoint
from dassl_ext.utils.digest import file_digest
from trainers.teacher_folders import RELEASED_TEACHERS, teacher_dirs

logger = logging.getLogger(__name__)

# Part of the text-feature cache key: raise it when the way the features are computed from
# the same files changes (prompt construction, normalisation), so old entries are not used.
TEXT_FEATURES_VERSION = 1


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


def teacher_search_dirs(cfg, model_dir: str) -> list[str]:
    """Where a teacher with model folder ``model_dir`` is looked for when
    ``TRAINER.PROMPTKD.TEACHER_CKPT`` is empty, in order: the official default
    ``teacher_model/<DATASET.NAME>/<model_dir>/`` (cross: ``teacher_model/ImageNet-xd/
    <model_dir>_large/``), then the released teachers' other spellings
    (:mod:`trainers.teacher_folders`, shared with the scripts)."""
    return teacher_dirs(cfg.TRAINER.MODAL, cfg.DATASET.NAME, model_dir=model_dir)


def resolve_teacher_checkpoint(cfg) -> tuple[str | None, str]:
    """``(path or None, description)`` of the teacher checkpoint the config asks for.

    ``TRAINER.PROMPTKD.TEACHER_CKPT`` is a file, or a folder (its best checkpoint, else the
    newest epoch: :func:`~dassl_ext.utils.checkpoint.find_checkpoint`); empty means the
    first of :func:`teacher_search_dirs` that holds one, for teachers that have a model
    folder (PromptSRC / IVLP). A zero-shot teacher has no checkpoint. ``path`` is None when
    none exists; ``description`` then says where it was looked for.
    """
    pk = cfg.TRAINER.PROMPTKD
    _, support = teacher_trainer(cfg)
    if not support.needs_checkpoint:
        return None, "none (zero-shot teacher)"
    if pk.TEACHER_CKPT:
        _refuse_student_run(pk.TEACHER_CKPT)
    if pk.TEACHER_CKPT and not os.path.isdir(pk.TEACHER_CKPT):
        path = pk.TEACHER_CKPT
        return (path if os.path.isfile(path) else None), path
    if pk.TEACHER_CKPT:
        folders = [pk.TEACHER_CKPT]
        model_folder = os.path.join(pk.TEACHER_CKPT, support.default_model_name or "")
        if support.default_model_name and os.path.isdir(model_folder):
            folders.append(model_folder)  # the teacher's run folder: its model folder inside
    elif support.default_model_name is None:
        raise UserError(
            f"TRAINER.PROMPTKD.TEACHER_CKPT is empty, and a {pk.TEACHER_TRAINER} teacher has "
            "no default location; set it to the teacher's model file or model folder."
        )
    else:
        folders = teacher_search_dirs(cfg, support.default_model_name)
    for folder in folders:
        path = find_checkpoint(folder)
        if os.path.isfile(path):
            return path, folder
    listed = ", ".join(f"{folder}/" for folder in folders)
    return None, f"no {BEST_FILE} or model.pth.tar-<N> in {listed} (relative to {os.getcwd()})"


def _run_trainer(path: str) -> str | None:
    """``TRAINER.NAME`` of the run that ``path`` (a run folder, its model folder or a
    checkpoint in it) belongs to, read from the run's ``config.yaml``; None if there is none."""
    folder = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))
    for _ in range(3):  # the run folder, or one or two levels above a model file
        config = os.path.join(folder, "config.yaml")
        if os.path.isfile(config):
            try:
                with open(config, encoding="utf-8") as f:
                    name = yaml.safe_load(f)["TRAINER"]["NAME"]
            except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
                return None  # not a run's record: the checkpoint itself will be checked
            return name if isinstance(name, str) else None
        folder = os.path.dirname(folder)
    return None


def _refuse_student_run(path: str) -> None:
    """A PromptKD student's run is no teacher: say so, instead of a key mismatch later."""
    if _run_trainer(path) == "PromptKD":
        raise UserError(
            f"TRAINER.PROMPTKD.TEACHER_CKPT {path} belongs to a PromptKD student run, not a "
            "teacher; point it at the teacher's checkpoint or folder (e.g. the PromptSRC run "
            "trained by scripts/promptkd/base2new.sh in output/promptkd/teacher/<dataset>)."
        )


def missing_teacher_error(description: str) -> UserError:
    return UserError(
        f"Teacher checkpoint not found: {description}; unpack the released teacher "
        f"({RELEASED_TEACHERS}) into one of those folders, set TRAINER.PROMPTKD.TEACHER_CKPT "
        "to a teacher file or folder, or train one (scripts/promptkd/base2new.sh with "
        "TRAIN_TEACHER=1)."
    )


def file_digests(clip_file: str, checkpoint: str | None, store: str | None) -> dict:
    """The sha256 of the teacher's CLIP weights file and checkpoint (None: no checkpoint):
    what they contain, whatever their names or timestamps (:mod:`dassl_ext.utils.digest`)."""
    return {
        "clip_sha256": file_digest(clip_file, store),
        "checkpoint_sha256": file_digest(checkpoint, store) if checkpoint else None,
    }


def text_feature_key(cfg, classnames: list[str], digests: dict, compute: str) -> str:
    """Hash of everything the teacher's text features depend on (a pure function).

    The teacher trainer and its config section (prompt length/depth, templates ...), the
    content of the teacher CLIP weights and checkpoint (``digests``: :func:`file_digests`),
    the class names in label order, ``compute`` (device type + precision they are
    computed in) and :data:`TEXT_FEATURES_VERSION`. Paths and timestamps are not in it: a
    file replaced by another gets a new key, a copy of the same file elsewhere the same one.
    """
    pk = cfg.TRAINER.PROMPTKD
    section = cfg.TRAINER.get(pk.TEACHER_TRAINER.upper())
    parts = {
        "trainer": pk.TEACHER_TRAINER,
        "section": section.dump() if section is not None else None,
        "backbone": pk.TEACHER_NAME,
        "clip_sha256": digests["clip_sha256"],
        "checkpoint_sha256": digests["checkpoint_sha256"],
        "classnames": list(classnames),
        "compute": compute,
        "version": TEXT_FEATURES_VERSION,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def text_cache_dir(cfg) -> str:
    """``TRAINER.PROMPTKD.TEXT_CACHE_DIR``, by default ``teacher_text_features/`` next to
    OUTPUT_DIR (so the seeds of one experiment share it)."""
    if cfg.TRAINER.PROMPTKD.TEXT_CACHE_DIR:
        return cfg.TRAINER.PROMPTKD.TEXT_CACHE_DIR
    out = os.path.abspath(cfg.OUTPUT_DIR)
    return os.path.join(os.path.dirname(out), "teacher_text_features")


def load_cached_text_features(
    folder: str, key: str, num_classes: int | None = None
) -> torch.Tensor | None:
    """The cached (C, E) fp32 features for ``key``, or None (none, or an entry that is
    truncated, corrupt, of another structure or shape, or not finite: recomputed, with a
    warning naming the file)."""
    path = os.path.join(folder, f"{key}.pt")
    if not os.path.isfile(path):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        feats = obj["text_features"] if isinstance(obj, dict) else None
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or not feats.numel():
            raise ValueError(f"it holds {type(obj).__name__}, not (C, E) text features")
        if num_classes is not None and feats.shape[0] != num_classes:
            raise ValueError(f"{feats.shape[0]} rows for {num_classes} classes")
        feats = feats.float()
        if not torch.isfinite(feats).all():
            raise ValueError("non-finite values")
        return feats
    except Exception as e:  # a corrupt cache entry is recomputed, never fatal
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        logger.warning(f"Ignoring unreadable text-feature cache {path} ({reason}); recomputing it")
        return None


def save_cached_text_features(folder: str, key: str, feats: torch.Tensor, meta: dict) -> str | None:
    """Write the cache entry atomically (parallel seeds or ranks may race); a folder that
    cannot be written is a warning (the features are in hand, only the reuse is lost)."""
    entry = {"text_features": feats.detach().float().cpu(), "meta": meta}
    try:
        return write_torch_atomic(os.path.join(folder, f"{key}.pt"), entry)
    except OSError as e:  # FileWriteError (full disk, read-only folder) is an OSError
        logger.warning(
            f"Cannot write the teacher text-feature cache in {folder} ({e}); continuing "
            "without it (the next run computes the features again). Set "
            "TRAINER.PROMPTKD.TEXT_CACHE_DIR to a writable folder to keep them."
        )
        return None
