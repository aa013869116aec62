"""PromptKD's teacher, resolved once into a :class:`TeacherSpec` (:func:`resolve_teacher`).

It is built by the trainer that trained it (``TRAINER.PROMPTKD.TEACHER_TRAINER``), which
declares how it teaches (``TeacherSupport``), and never trained: its CLIP weights are read
straight into its own dtype. Its text features for all classes are computed once, cached on
disk under a key of everything they depend on, and the text tower dropped (spec §3.4, §7.10).

With stored teacher views (``TRAINER.PROMPTKD.STORED_VIEWS``, ``trainers/promptkd_views.py``)
a run may never need the teacher's files: when they are gone, their digests last recorded in
the cache folder's ``file_digests.json`` still key the caches, and the existing "not found"
errors come only when the teacher must be built.

A dataset's own per-class prompts (``class_prompts``) reach a zero-shot teacher only
(``TeacherSupport.needs_checkpoint`` False: its class vectors come from hand-written prompts):
its ``build_frozen_model`` then takes them as the keyword ``class_prompts``, and they are part
of the cache key. A prompt-tuned teacher learned its own context and reads class names only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field

import torch
import yaml
from torch import nn

from dassl_ext.engine import TRAINER_REGISTRY, FrozenTeacher, Precision, TeacherSupport
from dassl_ext.engine.precision import resolve_frozen_precision
from dassl_ext.errors import UserError, first_line
from dassl_ext.modeling import cast_frozen_weights, clip_root_from_cfg, find_clip_file
from dassl_ext.modeling.loading import (
    clip_filename,
    clip_search_dirs,
    clip_weight_dtype,
    read_clip_state_dict,
)
from dassl_ext.modeling.openclip import (
    is_open_clip_name,
    model_config_digest,
    open_clip_sizes,
    parse_open_clip_name,
)
from dassl_ext.utils.atomic import write_torch_atomic
from dassl_ext.utils.checkpoint import BEST_FILE
from dassl_ext.utils.digest import file_digest, recorded_digest, recorded_paths
from trainers.teacher_folders import RELEASED_TEACHERS, first_checkpoint, teacher_dirs

logger = logging.getLogger(__name__)

# Part of the text-feature cache key: raise it when the way the features are computed from
# the same files changes (prompt construction, normalisation), so old entries are not used.
TEXT_FEATURES_VERSION = 1
TEXT_CHUNK = 128  # classes per teacher text forward: (128, 77, 4 x width) at most
DIGEST_STORE = "file_digests.json"  # in the text-feature cache folder: digests across runs


@dataclass(frozen=True)
class TeacherSpec:
    """A PromptKD teacher resolved from the config (:func:`resolve_teacher`)."""

    trainer: str  # TRAINER.PROMPTKD.TEACHER_TRAINER
    trainer_cls: type  # builds the frozen model (build_frozen_model)
    support: TeacherSupport
    backbone: str  # TRAINER.PROMPTKD.TEACHER_NAME
    checkpoint: str | None  # None: a zero-shot teacher, or none found
    where: str  # where the checkpoint is, or was looked for (messages)
    clip_file: str
    checkpoint_sha256: str | None  # the digests: None when the teacher is not available
    clip_sha256: str | None
    precision: Precision
    cache_dir: str  # the text-feature cache folder
    cache_key: str | None  # its entry for this teacher and these classes
    # per class the dataset's own prompt or None (zero-shot teachers); None: there are none
    class_prompts: tuple[str | None, ...] | None = None
    # what identifies the teacher's computation (the cache key parts but the classes); None
    # when it is not available
    identity: dict | None = field(default=None, compare=False)
    # the error its files give when they are gone (their recorded digests stand in for them
    # in the keys, for stored views): raised when the teacher must be built (the
    # checkpoint's when both are gone)
    missing: str = ""

    @property
    def available(self) -> bool:
        return self.checkpoint is not None or not self.support.needs_checkpoint

    def provenance(self) -> dict:
        """results.json's ``teacher`` block: trainer, files and their sha256 digests."""
        if not self.available:
            return {}
        return {
            "trainer": self.trainer,
            "checkpoint": self.checkpoint and os.path.abspath(self.checkpoint),
            "checkpoint_sha256": self.checkpoint_sha256,
            "clip_file": os.path.abspath(self.clip_file),
            "clip_sha256": self.clip_sha256,
        }

    def embed_dim(self) -> int:
        """The teacher's embedding width, from its CLIP weights or model config (no teacher
        built)."""
        if is_open_clip_name(self.backbone):  # its weights may keep it elsewhere
            return int(open_clip_sizes(self.backbone)["embed_dim"])
        return int(read_clip_state_dict(self.clip_file, mmap=True)["text_projection"].shape[1])


def resolve_teacher(
    cfg,
    device: torch.device,
    classnames: list[str],
    class_prompts: list[str | None] | None = None,
) -> TeacherSpec:
    """The teacher ``cfg.TRAINER.PROMPTKD`` names, for these classes on ``device``;
    ``class_prompts``: per class the dataset's own prompt or None (zero-shot teachers)."""
    pk = cfg.TRAINER.PROMPTKD
    cls = teacher_trainer(pk.TEACHER_TRAINER)
    support = cls.frozen_teacher
    prompts = tuple(class_prompts) if class_prompts and any(class_prompts) else None
    if prompts and support.needs_checkpoint:
        logger.info(
            f"The dataset's own class prompts are not used by the {pk.TEACHER_TRAINER} teacher "
            "(it learned its own prompt context; only a zero-shot teacher reads them)."
        )
        prompts = None
    elif prompts:
        logger.info(
            f"The {pk.TEACHER_TRAINER} teacher uses the dataset's own prompt for "
            f"{sum(map(bool, prompts))} of {len(prompts)} classes (the template for the others)"
        )
    # TEACHER_PREC, else PREC; bf16 runs fp32 (one warning) without native bf16
    precision = resolve_frozen_precision(str(pk.TEACHER_PREC).lower() or pk.PREC, device)
    checkpoint, where = teacher_checkpoint(pk.TEACHER_CKPT, pk.TEACHER_TRAINER, support,
                                           cfg.TRAINER.MODAL, cfg.DATASET.NAME)  # fmt: skip
    cache_dir = pk.TEXT_CACHE_DIR or os.path.join(
        os.path.dirname(os.path.abspath(cfg.OUTPUT_DIR)), "teacher_text_features"
    )  # next to OUTPUT_DIR: the seeds of one experiment share it
    store = os.path.join(cache_dir, DIGEST_STORE)
    root, missing, ckpt_sha = clip_root_from_cfg(cfg), [], None
    if int(pk.STORED_VIEWS) > 0:  # stored views may need none of the files: digests recorded
        clip_file, clip_sha, gone = _clip_file_or_recorded(pk.TEACHER_NAME, root, store)
        missing += [gone] if gone else []
        if checkpoint is None and support.needs_checkpoint:
            checkpoint, ckpt_sha = _recorded_checkpoint(pk.TEACHER_CKPT, support,
                                                        cfg.TRAINER.MODAL, cfg.DATASET.NAME,
                                                        store)  # fmt: skip
            missing += [str(missing_teacher_error(where))] if checkpoint else []
    else:
        clip_file, clip_sha = find_clip_file(pk.TEACHER_NAME, root), None
    key = identity = None
    if checkpoint is not None or not support.needs_checkpoint:
        clip_sha = clip_sha or file_digest(clip_file, store)
        ckpt_sha = ckpt_sha or (file_digest(checkpoint, store) if checkpoint else None)
        section = cfg.TRAINER.get(pk.TEACHER_TRAINER.upper())  # prompt length/depth ...
        section = section.dump() if section is not None else None
        identity = {
            "trainer": pk.TEACHER_TRAINER, "section": section,
            "backbone": pk.TEACHER_NAME, "clip_sha256": clip_sha, "checkpoint_sha256": ckpt_sha,
            "compute": f"{device.type}-{precision.effective}",
        }  # fmt: skip
        config_sha = model_config_digest(pk.TEACHER_NAME)  # open_clip: its config can change
        if config_sha is not None:  # only then: the keys of OpenAI teachers stay what they were
            identity["model_config_sha256"] = config_sha
        parts = {**identity, "classnames": list(classnames)}
        if prompts:  # only then: the keys of runs without them stay what they were
            parts["class_prompts"] = list(prompts)
        key = text_feature_key(parts)
    return TeacherSpec(pk.TEACHER_TRAINER, cls, support, pk.TEACHER_NAME, checkpoint, where,
                       clip_file, ckpt_sha, clip_sha, precision, cache_dir, key, prompts,
                       identity, missing[-1] if missing else "")  # fmt: skip


def _clip_file_or_recorded(name: str, root: str, store: str) -> tuple[str, str | None, str]:
    """``(path, digest or None, error)`` of the teacher's CLIP weights: the file found (not
    downloaded yet), else the one whose digest ``store`` recorded before it went (its digest,
    and the error its absence gives), else what :func:`find_clip_file` does (a download)."""
    try:
        return find_clip_file(name, root, download=False), None, ""
    except UserError as e:
        paths = [name, *(os.path.join(d, clip_filename(name)) for d in clip_search_dirs(root))]
        if is_open_clip_name(name):  # its weights file (a tag's cached file is not known here)
            paths.insert(0, os.path.expanduser(parse_open_clip_name(name)[1]))
        for path in dict.fromkeys(os.path.abspath(p) for p in paths):
            digest = recorded_digest(path, store)
            if digest:
                return os.path.abspath(path), digest, str(e)
    return find_clip_file(name, root), None, ""


def _recorded_checkpoint(
    setting: str, support: TeacherSupport, modal: str, dataset_name: str, store: str
) -> tuple[str | None, str | None]:
    """``(path, digest)`` of the teacher checkpoint :func:`teacher_checkpoint` would have found
    before its file went, from the digests ``store`` recorded, else ``(None, None)``."""
    if setting:
        digest = recorded_digest(setting, store)
        if digest:  # the file itself
            return os.path.abspath(setting), digest
        folders = [setting, os.path.join(setting, support.default_model_name or "")]
    elif support.default_model_name is None:
        return None, None
    else:
        folders = teacher_dirs(modal, dataset_name, model_dir=support.default_model_name)
    for folder in dict.fromkeys(os.path.abspath(f) for f in folders):
        gone = {os.path.basename(p): p for p in recorded_paths(store, folder)
                if not os.path.exists(p)}  # fmt: skip
        epochs = [(int(m.group(1)), p) for n, p in gone.items()
                  if (m := re.fullmatch(r"model\.pth\.tar-(\d+)", n))]  # fmt: skip
        path = gone.get(BEST_FILE) or (max(epochs)[1] if epochs else None)
        digest = recorded_digest(path, store) if path else None
        if digest:
            return path, digest
    return None, None


def teacher_trainers() -> list[str]:
    return [name for name, cls in TRAINER_REGISTRY if cls.frozen_teacher is not None]


def teacher_trainer(name: str) -> type:
    """The trainer class ``name``, if it can teach."""
    cls = TRAINER_REGISTRY.get(name)
    if cls.frozen_teacher is None:
        raise UserError(
            f"TRAINER.PROMPTKD.TEACHER_TRAINER {name} cannot serve as a frozen teacher (it has "
            f"no fixed class text features); use one of {', '.join(teacher_trainers())}."
        )
    return cls


def teacher_checkpoint(
    setting: str, trainer: str, support: TeacherSupport, modal: str, dataset_name: str
) -> tuple[str | None, str]:
    """``(path or None, where it is or was looked for)``: ``setting`` (``TEACHER_CKPT``) is a
    file or a folder (or run folder); empty: the released teachers' folders (teacher_dirs)."""
    if not support.needs_checkpoint:
        return None, "none (zero-shot teacher)"
    if setting:
        _refuse_student_run(setting)
        if not os.path.isdir(setting):
            return (setting if os.path.isfile(setting) else None), setting
        folders = [setting]
        model_folder = os.path.join(setting, support.default_model_name or "")
        if support.default_model_name and os.path.isdir(model_folder):
            folders.append(model_folder)  # the teacher's run folder: its model folder inside
    elif support.default_model_name is None:
        raise UserError(
            f"TRAINER.PROMPTKD.TEACHER_CKPT is empty, and a {trainer} teacher has no default "
            "location; set it to the teacher's model file or model folder."
        )
    else:
        folders = teacher_dirs(modal, dataset_name, model_dir=support.default_model_name)
    return first_checkpoint(folders)


def _refuse_student_run(path: str) -> None:
    """A PromptKD student's run is no teacher: say so, instead of a key mismatch later (its
    ``config.yaml`` is in the run folder, or one or two levels above a model file)."""
    run = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))
    for folder in (run, os.path.dirname(run), os.path.dirname(os.path.dirname(run))):
        config = os.path.join(folder, "config.yaml")
        if os.path.isfile(config):
            try:
                with open(config, encoding="utf-8") as f:
                    name = yaml.safe_load(f)["TRAINER"]["NAME"]
            except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
                return  # not a run's record: the checkpoint itself will be checked
            if name == "PromptKD":
                raise UserError(
                    f"TRAINER.PROMPTKD.TEACHER_CKPT {path} belongs to a PromptKD student run, "
                    "not a teacher; point it at the teacher's checkpoint or folder (e.g. the "
                    "PromptSRC run trained by scripts/promptkd/base2new.sh in "
                    "output/promptkd/teacher/<dataset>)."
                )
            return


def missing_teacher_error(where: str) -> UserError:
    return UserError(
        f"Teacher checkpoint not found: {where}; unpack the released teacher "
        f"({RELEASED_TEACHERS}) into one of those folders, set TRAINER.PROMPTKD.TEACHER_CKPT "
        "to a teacher file or folder, or train one (scripts/promptkd/base2new.sh with "
        "TRAIN_TEACHER=1)."
    )


def text_feature_key(parts: dict) -> str:
    """Hash of everything the teacher's text features depend on (``parts``: the values
    :func:`resolve_teacher` names, no paths or timestamps) and :data:`TEXT_FEATURES_VERSION`."""
    parts = {**parts, "version": TEXT_FEATURES_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def load_cached_text_features(
    spec: TeacherSpec, num_classes: int
) -> tuple[torch.Tensor, dict] | None:
    """The cached (C, E) fp32 features and the entry's ``meta`` (classes, teacher, its logit
    scale when recorded; {} if it has none), or None: no entry, or an unusable one (corrupt,
    of another shape, not finite; a warning names the file)."""
    path = os.path.join(spec.cache_dir, f"{spec.cache_key}.pt")
    if not os.path.isfile(path):
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        feats = obj["text_features"] if isinstance(obj, dict) else None
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or not feats.numel():
            raise ValueError(f"it holds {type(obj).__name__}, not (C, E) text features")
        if feats.shape[0] != num_classes:
            raise ValueError(f"{feats.shape[0]} rows for {num_classes} classes")
        feats = feats.float()
        if not torch.isfinite(feats).all():
            raise ValueError("non-finite values")
        meta = obj.get("meta")
        return feats, meta if isinstance(meta, dict) else {}
    except Exception as e:  # a corrupt cache entry is recomputed, never fatal
        reason = first_line(e) or type(e).__name__
        logger.warning(f"Ignoring unreadable text-feature cache {path} ({reason}); recomputing it")
        return None


def save_cached_text_features(
    spec: TeacherSpec, feats: torch.Tensor, classnames: list[str], logit_scale: float
) -> None:
    """Write the cache entry (the features; ``meta``: classes, teacher, its logit scale, the
    class prompts if any) atomically (seeds or ranks may race); an unwritable folder is a
    warning (only the reuse is lost)."""
    meta = {"classnames": list(classnames), "teacher": spec.trainer, "logit_scale": logit_scale}
    if spec.class_prompts:
        meta["class_prompts"] = list(spec.class_prompts)
    entry = {"text_features": feats.detach().float().cpu(), "meta": meta}
    try:
        write_torch_atomic(os.path.join(spec.cache_dir, f"{spec.cache_key}.pt"), entry)
    except OSError as e:  # FileWriteError (full disk, read-only folder) is an OSError
        logger.warning(
            f"Cannot write the teacher text-feature cache in {spec.cache_dir} ({e}); "
            "continuing without it (the next run computes the features again). Set "
            "TRAINER.PROMPTKD.TEXT_CACHE_DIR to a writable folder to keep them."
        )


def build_frozen_teacher(cfg, spec: TeacherSpec, classnames: list[str]) -> FrozenTeacher:
    """The frozen teacher, built by its trainer (which reads its own config section from
    ``cfg``) in ``spec.precision``, on its device, with its text tower."""
    if not spec.available:
        raise missing_teacher_error(spec.where)
    if spec.missing:  # its files are gone (their recorded digests keyed the caches)
        raise UserError(spec.missing)
    logger.info(
        f"Building the teacher: {spec.trainer} on {spec.backbone} from "
        f"{spec.checkpoint or 'no checkpoint'}"
    )
    # The teacher's own prompt initialisation must not shift the student's random stream:
    # a cache hit (no teacher built before the student) must give the same student.
    # only a zero-shot teacher gets class prompts (resolve_teacher): the others' signature
    extra = {"class_prompts": list(spec.class_prompts)} if spec.class_prompts else {}
    with torch.random.fork_rng(devices=[]), clip_weight_dtype(spec.precision.weight_dtype):
        teacher = spec.trainer_cls.build_frozen_model(
            cfg, list(classnames), spec.backbone, spec.checkpoint, **extra
        )
    if not isinstance(teacher, FrozenTeacher):
        raise TypeError(f"{spec.trainer}.build_frozen_model returned no FrozenTeacher.")
    return prepare_frozen_teacher(teacher, spec.precision)


def prepare_frozen_teacher(teacher: nn.Module, prec: Precision) -> nn.Module:
    """Eval mode, no gradients, weights in ``prec.weight_dtype`` (see cast_frozen_weights),
    on ``prec.device``."""
    teacher.eval().requires_grad_(False)  # never registered: never saved or synced
    cast_frozen_weights(teacher, prec.weight_dtype)  # before the move: half the transfer
    return teacher.to(prec.device)


@torch.no_grad()
def teacher_text_features(
    teacher: nn.Module, n_classes: int, prec: Precision, chunk: int = TEXT_CHUNK
) -> torch.Tensor:
    """Normalised text features (C, E) fp32 of all classes, ``chunk`` classes at a time."""
    ids = torch.arange(n_classes, device=prec.device)
    with prec.autocast():
        return torch.cat([teacher.text_features(part).float() for part in ids.split(chunk)])
