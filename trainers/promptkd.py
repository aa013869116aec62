"""PromptKD (CVPR 2024): distil a frozen, prompt-tuned CLIP teacher into a prompted student.

Spec §3. The student (``MODEL.BACKBONE.NAME``, ViT-B/16) learns deep visual prompts and a
projector to the teacher's embedding width from UNLABELED images: the loss is the KD loss
of spec §3.4 between its logits and the teacher's, both against the teacher's text
features. Those are computed once after the teacher checkpoint is loaded, cached on disk,
and kept as the student's class vectors (buffer ``class_text_features``, saved in the
student checkpoint); the teacher's text tower is then dropped. Evaluation runs the student
only. The teacher (``TRAINER.PROMPTKD.TEACHER_TRAINER``) is built by the trainer that
trained it, through its ``build_frozen_model``.
"""

from __future__ import annotations

import logging
import os

import torch
from yacs.config import CfgNode as CN

from dassl_ext.config import OneOf, Range, Rule, register_config_extension, register_config_rules
from dassl_ext.engine import TRAINER_REGISTRY, FrozenTeacher, TrainerX
from dassl_ext.engine.hooks import CallbackHook, HookBase
from dassl_ext.errors import UserError
from dassl_ext.modeling import (
    ClipSizes,
    PromptedImageEncoder,
    clip_root_from_cfg,
    find_clip_file,
    load_clip,
    read_clip_state_dict,
    set_trainable,
)
from dassl_ext.modeling.lean import use_lean_quick_gelu
from dassl_ext.modeling.loading import clip_weight_dtype
from dassl_ext.modeling.prompted import cast_frozen_weights
from dassl_ext.optim import build_lr_scheduler, build_optimizer
from dassl_ext.utils.distributed import is_main_process
from trainers.base import check_clip_model
from trainers.losses import kd_loss
from trainers.promptkd_frozen import (
    prepare_frozen_teacher,
    teacher_precision,
    teacher_text_features,
)
from trainers.promptkd_student import PromptKDStudent
from trainers.promptkd_teacher import (
    file_digests,
    load_cached_text_features,
    missing_teacher_error,
    resolve_teacher_checkpoint,
    save_cached_text_features,
    teacher_trainer,
    text_cache_dir,
    text_feature_key,
)

logger = logging.getLogger(__name__)

DIGEST_STORE = "file_digests.json"  # in the text-feature cache folder: digests across runs
# TRAINER.MODAL -> the DATASET.EVAL_SPLITS it needs (spec §3.5)
MODAL_EVAL_SPLITS = {"base2novel": "base_new", "cross": "standard"}


@register_config_extension
def add_promptkd_config(cfg: CN) -> None:
    """``cfg.TRAINER.PROMPTKD`` with the official keys and defaults (spec §3.1), and the
    official ``TRAINER.MODAL`` (outside the section, where the official scripts set it)."""
    cfg.TRAINER.MODAL = "base2novel"  # base2novel or cross (spec §3.5)
    cfg.TRAINER.PROMPTKD = pk = CN()
    pk.N_CTX_VISION = 4
    pk.PROMPT_DEPTH_VISION = 9
    pk.PREC = "fp16"
    # new: precision of the frozen teacher (fp32, fp16, bf16, amp); "" -> PREC
    pk.TEACHER_PREC = ""
    pk.TEACHER_NAME = "ViT-L/14"  # the official code default "ViT/L-14" is a typo (§7.5)
    pk.KD_WEIGHT = 1.0
    pk.TEMPERATURE = 1.0
    # new: trainer that trained the teacher: PromptSRC, IVLP, MaPLe, CoOp or ZeroshotCLIP
    pk.TEACHER_TRAINER = "PromptSRC"
    # new: teacher model file or folder; "" -> teacher_model/<DATASET.NAME>/VLPromptLearner/
    # (cross: teacher_model/ImageNet-xd/VLPromptLearner_large/), best file else newest epoch
    pk.TEACHER_CKPT = ""
    # new: folder of the teacher text-feature cache; "" -> <OUTPUT_DIR>/../teacher_text_features
    pk.TEXT_CACHE_DIR = ""
    # Official keys the student does not use (spec §7.12: its text side is the teacher's);
    # kept so that the official yaml files load.
    pk.N_CTX_TEXT = 4
    pk.CTX_INIT = "a photo of a"
    pk.PROMPT_DEPTH_TEXT = 9
    pk.PROJECT_LAYER = 2
    pk.CE_WEIGHT = 0.0


def _teacher_trainers() -> list[str]:
    return [name for name, cls in TRAINER_REGISTRY if cls.frozen_teacher is not None]


register_config_rules(
    OneOf("TRAINER.MODAL", tuple(MODAL_EVAL_SPLITS)),
    Range("TRAINER.PROMPTKD.N_CTX_VISION", 1, integer=True),
    Range("TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", 0, integer=True, note="0: no visual prompts"),
    Range("TRAINER.PROMPTKD.KD_WEIGHT", 0),
    Range("TRAINER.PROMPTKD.TEMPERATURE", 0, low_open=True, note="the KD softmax temperature"),
    OneOf(
        "TRAINER.PROMPTKD.TEACHER_TRAINER",
        _teacher_trainers,
        note="a trainer whose model has fixed class text features to distil",
    ),
    OneOf(
        "TRAINER.PROMPTKD.CE_WEIGHT",
        (0.0,),
        note="the student learns without labels; the key stays so that official files load",
    ),
)


@TRAINER_REGISTRY.register()
class PromptKD(TrainerX):
    """Unlabeled prompt distillation; the student is registered as ``VLPromptLearner``."""

    @classmethod
    def check_config(cls, cfg) -> None:
        """Before any work (called by ``validate_config``): the keys that depend on each
        other, then student and teacher CLIP against INPUT.SIZE and the prompt depths (the
        teacher by the rules of the trainer that trained it)."""
        modal, splits = cfg.TRAINER.MODAL, cfg.DATASET.EVAL_SPLITS
        if splits != MODAL_EVAL_SPLITS[modal]:
            raise UserError(
                f"TRAINER.MODAL {modal} needs DATASET.EVAL_SPLITS {MODAL_EVAL_SPLITS[modal]}, "
                f"got {splits}; use the configs in configs/trainers/PromptKD/ or set both."
            )
        if modal == "base2novel" and cfg.DATASET.SUBSAMPLE_CLASSES != "all":
            raise UserError(
                "PromptKD base2novel distils on the images of ALL classes and reports base and "
                f"new itself; set DATASET.SUBSAMPLE_CLASSES all (got "
                f"{cfg.DATASET.SUBSAMPLE_CLASSES})."
            )
        check_clip_model(cfg, "MODEL.BACKBONE.NAME", cls)
        teacher_cls = TRAINER_REGISTRY.get(cfg.TRAINER.PROMPTKD.TEACHER_TRAINER)
        check_clip_model(cfg, "TRAINER.PROMPTKD.TEACHER_NAME", teacher_cls)

    @classmethod
    def model_rules(cls, cfg, sizes: ClipSizes) -> list[Rule]:
        if sizes.vision_layers is None:  # a ResNet: the prompted encoder says it needs a ViT
            return []
        key, note = "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", f"the vision layers of {sizes.name}"
        return [Range(key, 0, sizes.vision_layers, integer=True, note=note)]

    # ------------------------------------------------------------------ building
    def build_model(self) -> None:
        cfg, pk = self.cfg, self.cfg.TRAINER.PROMPTKD
        self.teacher: FrozenTeacher | None = None
        self.teacher_cls, self.teacher_support = teacher_trainer(cfg)
        self.teacher_prec = teacher_precision(cfg, self.device)
        self.teacher_ckpt, self._teacher_where = resolve_teacher_checkpoint(cfg)
        self._cache_dir = text_cache_dir(cfg)
        self._cache_key = None
        self.teacher_files: dict = {}  # the teacher's files and digests (log, results.json)
        text_features = None
        if self._teacher_available():
            compute = f"{self.device.type}-{self.teacher_prec.effective}"
            clip_file = find_clip_file(pk.TEACHER_NAME, clip_root_from_cfg(cfg))  # built if tiny
            store = os.path.join(self._cache_dir, DIGEST_STORE)
            digests = file_digests(clip_file, self.teacher_ckpt, store)
            self.teacher_files = {
                "trainer": pk.TEACHER_TRAINER,
                "checkpoint": self.teacher_ckpt and os.path.abspath(self.teacher_ckpt),
                "checkpoint_sha256": digests["checkpoint_sha256"],
                "clip_file": os.path.abspath(clip_file),
                "clip_sha256": digests["clip_sha256"],
            }
            logger.info(
                f"Teacher: {pk.TEACHER_TRAINER}, checkpoint {self.teacher_ckpt or 'none'} "
                f"(sha256 {digests['checkpoint_sha256']}), CLIP {clip_file} "
                f"(sha256 {digests['clip_sha256']})"
            )
            self._cache_key = text_feature_key(cfg, self.classnames, digests, compute)
            text_features = load_cached_text_features(
                self._cache_dir, self._cache_key, len(self.classnames)
            )
            if text_features is not None:
                logger.info(f"Teacher text features from the cache {self._cache_dir}")
            else:  # computing them needs the teacher, which training needs anyway
                text_features = self._build_teacher(compute_text=True)
        else:
            logger.warning(
                f"No teacher checkpoint ({self._teacher_where}): this run can only evaluate a "
                "student checkpoint that holds the class text features."
            )
        teacher_dim = (
            text_features.shape[1] if text_features is not None else self._teacher_embed_dim()
        )

        logger.info(f"Building the student: {cfg.MODEL.BACKBONE.NAME} with visual prompts")
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, clip_root_from_cfg(cfg))
        encoder = PromptedImageEncoder(clip_model.visual, pk.N_CTX_VISION, pk.PROMPT_DEPTH_VISION)
        self.model = PromptKDStudent(
            encoder, clip_model.logit_scale, encoder.output_dim, teacher_dim
        )
        if text_features is not None:
            self.model.set_class_text_features(text_features)
        names = set_trainable(self.model, self.model.trainable_parameters())
        n = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        logger.info(f"Trainable: {len(names)} tensors, {n:,} parameters (prompts + projector)")
        cast_frozen_weights(self.model.image_encoder, self.prec.weight_dtype)
        use_lean_quick_gelu(self.model.image_encoder)  # same values, less kept for backward
        self.model.to(self.device)
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("VLPromptLearner", self.model, self.optim, self.sched)

    def results_provenance(self) -> dict:
        """results.json names the teacher: trainer, files and their sha256 digests."""
        return {"teacher": self.teacher_files} if self.teacher_files else {}

    def _teacher_available(self) -> bool:
        return self.teacher_ckpt is not None or not self.teacher_support.needs_checkpoint

    def _teacher_embed_dim(self) -> int:
        """The teacher's embedding width read from its CLIP weights (no teacher built)."""
        pk = self.cfg.TRAINER.PROMPTKD
        path = find_clip_file(pk.TEACHER_NAME, clip_root_from_cfg(self.cfg))
        return int(read_clip_state_dict(path, mmap=True)["text_projection"].shape[1])

    def _build_teacher(self, compute_text: bool) -> torch.Tensor | None:
        """Build the frozen teacher (kept as ``self.teacher``, image side only) and, if
        ``compute_text``, its text features for all classes, once; returns them (C, E)."""
        pk = self.cfg.TRAINER.PROMPTKD
        if not self._teacher_available():
            raise missing_teacher_error(self._teacher_where)
        logger.info(
            f"Building the teacher: {pk.TEACHER_TRAINER} on {pk.TEACHER_NAME} from "
            f"{self.teacher_ckpt or 'no checkpoint'}"
        )
        # The teacher's own prompt initialisation must not shift the student's random
        # stream: a cache hit (no teacher built here) must give the same student.
        with torch.random.fork_rng(devices=[]), clip_weight_dtype(self.teacher_prec.weight_dtype):
            teacher = self.teacher_cls.build_frozen_model(
                self.cfg, list(self.classnames), pk.TEACHER_NAME, self.teacher_ckpt
            )
        if not isinstance(teacher, FrozenTeacher):
            raise TypeError(f"{pk.TEACHER_TRAINER}.build_frozen_model returned no FrozenTeacher.")
        teacher.eval().requires_grad_(False)  # frozen, never registered: never saved or synced
        prepare_frozen_teacher(teacher, self.teacher_prec)
        text_features = None
        if compute_text:
            text_features = teacher_text_features(teacher, len(self.classnames), self.teacher_prec)
            if is_main_process():
                meta = {"classnames": list(self.classnames), "teacher": pk.TEACHER_TRAINER}
                save_cached_text_features(self._cache_dir, self._cache_key, text_features, meta)
        teacher.drop_text_tower()
        self.teacher = teacher
        return text_features

    def build_hooks(self) -> list[HookBase]:
        """First: the teacher, unless building the model built it (its text features came
        from the cache, or there is no teacher: then this is the error)."""
        teacher = CallbackHook(before_train=lambda trainer: trainer.ensure_teacher())
        return [teacher, *super().build_hooks()]

    def ensure_teacher(self) -> None:
        """Build the frozen teacher (image side) unless it is built."""
        if self.teacher is None:
            self._build_teacher(compute_text=False)

    # ------------------------------------------------------------------ training
    def forward_backward(self, batch: dict) -> dict[str, float]:
        """One KD step on the images only: the labels are never read."""
        pk = self.cfg.TRAINER.PROMPTKD
        images = batch["img"].to(self.device)
        class_features = self.model.class_text_features  # (C, E_t), all classes
        with torch.no_grad(), self.teacher_prec.autocast():
            t_feats = self.teacher.image_features(images).float()  # (B, E_t)
        t_logits = self.teacher.logit_scale.float().exp() * t_feats @ class_features.t()
        with self.prec.autocast():
            s_logits = self.training_module()(images, class_features)  # (B, C)
        loss = pk.KD_WEIGHT * kd_loss(s_logits.float(), t_logits, pk.TEMPERATURE)
        self.model_backward_and_update(loss)
        return {"loss": loss.item()}

    # ------------------------------------------------------------------ evaluation
    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        """Student logits over the classes of the split being evaluated (base / new / all):
        rows ``eval_class_ids`` of the stored features, so each split has its own label space."""
        class_features = self.model.class_text_features
        if class_features.numel() == 0:
            raise UserError(
                "The student checkpoint holds no class text features and there is no teacher "
                f"to compute them ({self._teacher_where}); set TRAINER.PROMPTKD.TEACHER_CKPT."
            )
        with self.prec.autocast():
            logits = self.model(input, class_features[self.eval_class_ids])
        return logits.float()
