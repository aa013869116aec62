"""PromptKD (CVPR 2024): distil a frozen, prompt-tuned CLIP teacher into a prompted student.

Spec §3. The student (``MODEL.BACKBONE.NAME``) learns deep visual prompts and a projector from
UNLABELED images, with the KD loss (spec §3.4; or KDPL's symmetric KL, ``TRAINER.PROMPTKD.LOSS``)
between its logits and the teacher's, both against the teacher's text features: computed once
and kept as the student's class vectors (saved with it). The teacher sees the student's
augmented batch at its own resolution (:func:`teacher_view`), or, with stored views
(``STORED_VIEWS`` K > 0), its features of that view come from a bank built once
(``trainers/promptkd_views.py``) and the teacher is never built. Evaluation runs the student
only. The teacher: ``trainers/promptkd_teacher.py``.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from dassl_ext.config import (
    Check,
    OneOf,
    Range,
    Rule,
    check_rules,
    register_config_extension,
    register_config_rules,
)
from dassl_ext.config.defaults import register_added_keys
from dassl_ext.data.views import ReplayTransform, stored_view_loader
from dassl_ext.engine import TRAINER_REGISTRY, FrozenTeacher, TrainerX
from dassl_ext.engine.hooks import CallbackHook, HookBase
from dassl_ext.engine.precision import PRECISIONS
from dassl_ext.errors import UserError
from dassl_ext.modeling import (
    ClipSizes,
    clip_root_from_cfg,
    clip_sizes,
    find_clip_file,
    load_clip,
)
from dassl_ext.optim import build_lr_scheduler, build_optimizer
from dassl_ext.utils.distributed import is_main_process
from trainers.base import check_clip_model, check_open_clip_support, l2_normalize
from trainers.losses import KD_LOSSES
from trainers.promptkd_student import new_student
from trainers.promptkd_teacher import (
    build_frozen_teacher,
    load_cached_text_features,
    missing_teacher_error,
    resolve_teacher,
    save_cached_text_features,
    teacher_text_features,
    teacher_trainer,
    teacher_trainers,
)
from trainers.promptkd_views import ViewBank, log_view_schedule, prepare_bank, views_dir

logger = logging.getLogger(__name__)

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
    # new: kl (official forward KL) or symmetric (KDPL: mean of forward and reverse KL)
    pk.LOSS = "kl"
    # new: trainer that trained the teacher: PromptSRC, IVLP, MaPLe, CoOp or ZeroshotCLIP
    pk.TEACHER_TRAINER = "PromptSRC"
    # new: teacher model file or folder; "" -> teacher_model/<DATASET.NAME>/VLPromptLearner/
    # (cross: teacher_model/ImageNet-xd/VLPromptLearner_large/), best file else newest epoch
    pk.TEACHER_CKPT = ""
    # new: folder of the teacher text-feature cache; "" -> <OUTPUT_DIR>/../teacher_text_features
    pk.TEXT_CACHE_DIR = ""
    # new: K > 0: K augmented views per training image and the teacher's features of each,
    # stored once (a bank, trainers/promptkd_views.py) and replayed by every student run;
    # 0: the teacher runs at every step (official)
    pk.STORED_VIEWS = 0
    # new: folder of the banks; "" -> teacher_views beside the text-feature cache folder
    pk.VIEW_CACHE_DIR = ""
    # new: the seed of the bank's view draws (each run's own seed orders its visits)
    pk.VIEW_SEED = 1
    # Official keys the student does not use (spec §7.12: its text side is the teacher's);
    # kept so that the official yaml files load.
    pk.N_CTX_TEXT = 4
    pk.CTX_INIT = "a photo of a"
    pk.PROMPT_DEPTH_TEXT = 9
    pk.PROJECT_LAYER = 2
    pk.CE_WEIGHT = 0.0


# Runs recorded before these keys existed keep their config hash and can be resumed.
register_added_keys(
    {
        "TRAINER.PROMPTKD.LOSS": "kl",
        "TRAINER.PROMPTKD.STORED_VIEWS": 0,
        "TRAINER.PROMPTKD.VIEW_CACHE_DIR": "",
        "TRAINER.PROMPTKD.VIEW_SEED": 1,
    }
)

register_config_rules(
    OneOf("TRAINER.MODAL", tuple(MODAL_EVAL_SPLITS)),
    Range("TRAINER.PROMPTKD.N_CTX_VISION", 1, integer=True),
    Range("TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", 0, integer=True, note="0: no visual prompts"),
    Range("TRAINER.PROMPTKD.KD_WEIGHT", 0),
    Range("TRAINER.PROMPTKD.TEMPERATURE", 0, low_open=True, note="the KD softmax temperature"),
    OneOf("TRAINER.PROMPTKD.LOSS", tuple(KD_LOSSES), note="the distillation loss"),
    Range("TRAINER.PROMPTKD.STORED_VIEWS", 0, integer=True, note="0: the teacher at every step"),
    Range("TRAINER.PROMPTKD.VIEW_SEED", 0, integer=True, note="the seed of the stored views"),
    Check(
        "TRAINER.PROMPTKD.TEACHER_PREC",
        lambda v: str(v).lower() in ("", *PRECISIONS),
        f"use one of {', '.join(PRECISIONS)}, or leave it empty for PREC",
    ),
    OneOf(
        "TRAINER.PROMPTKD.TEACHER_TRAINER",
        teacher_trainers,
        note="a trainer whose model has fixed class text features to distil",
    ),
    OneOf(
        "TRAINER.PROMPTKD.CE_WEIGHT",
        (0.0,),
        note="the student learns without labels; the key stays so that official files load",
    ),
)


def teacher_view(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """The student's (normalised) batch (B, 3, H, W) as a teacher of ``resolution`` px sees it:
    ``images`` itself when H = W = resolution (bit for bit), else resized bicubically.

    ``antialias=True`` in both directions: downsizing without it aliases (bicubic then reads
    only 4 x 4 source pixels per output pixel), and with it torch uses PIL's bicubic kernel
    (a = -0.5), the resize CLIP's own preprocessing does; ``align_corners=False`` is the
    pixel-area convention of PIL and torchvision's Resize. Resizing after normalisation equals
    normalising the resized image (the interpolation weights sum to 1); a teacher with its own
    normalisation (open_clip) re-normalises the batch itself (``CLIPClassifier.model_input``)."""
    if tuple(images.shape[-2:]) == (resolution, resolution):
        return images
    return F.interpolate(images, size=(resolution, resolution), mode="bicubic",
                         align_corners=False, antialias=True)  # fmt: skip


@TRAINER_REGISTRY.register()
class PromptKD(TrainerX):
    """Unlabeled prompt distillation; the student is registered as ``VLPromptLearner``."""

    @classmethod
    def check_config(cls, cfg) -> None:
        """The keys that depend on each other; the student CLIP against INPUT.SIZE and its
        prompt depth, the teacher CLIP against the rules of the trainer that trained it (not
        INPUT.SIZE: it sees the images resized to its own resolution, :func:`teacher_view`)."""
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
        teacher_cls = teacher_trainer(cfg.TRAINER.PROMPTKD.TEACHER_TRAINER)
        name, root = cfg.TRAINER.PROMPTKD.TEACHER_NAME, clip_root_from_cfg(cfg)
        if cfg.TRAINER.PROMPTKD.STORED_VIEWS > 0:
            ReplayTransform.from_cfg(cfg)  # only replayable augmentations: said before any work
            try:  # stored views may stand in for a teacher whose files are gone
                find_clip_file(name, root, download=False)
            except UserError:
                logger.info(f"No teacher CLIP {name}: its rules are checked only if it is built")
                return
        sizes = clip_sizes(name, root)
        check_open_clip_support(sizes, teacher_cls)  # before its rules: the real reason
        model_rules = getattr(teacher_cls, "model_rules", None)
        check_rules(cfg, model_rules(cfg, sizes) if model_rules else [])

    @classmethod
    def model_rules(cls, cfg, sizes: ClipSizes) -> list[Rule]:
        if sizes.vision_layers is None:  # a ResNet: the prompted encoder says it needs a ViT
            return []
        key, note = "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", f"the vision layers of {sizes.name}"
        return [Range(key, 0, sizes.vision_layers, integer=True, note=note)]

    # ------------------------------------------------------------------ building
    def build_model(self) -> None:
        cfg, pk = self.cfg, self.cfg.TRAINER.PROMPTKD
        self.teacher_spec = resolve_teacher(cfg, self.device, self.classnames, self.class_prompts)
        self.teacher: FrozenTeacher | None = None  # built with the text features, else later
        self.view_bank: ViewBank | None = None  # stored views, opened before training
        self._text_logit_scale: float | None = None  # the logit scale of the text features' teacher
        text_features = self._class_text_features()
        teacher_dim = (
            self.teacher_spec.embed_dim() if text_features is None else text_features.shape[1]
        )
        logger.info(f"Building the student: {cfg.MODEL.BACKBONE.NAME} with visual prompts")
        clip_model = load_clip(cfg.MODEL.BACKBONE.NAME, clip_root_from_cfg(cfg))
        self.model = new_student(clip_model, pk.N_CTX_VISION, pk.PROMPT_DEPTH_VISION,
                                 teacher_dim, self.prec.weight_dtype)  # fmt: skip
        if text_features is not None:
            self.model.set_class_text_features(text_features)
        params = [p for p in self.model.parameters() if p.requires_grad]
        n = sum(p.numel() for p in params)
        logger.info(f"Trainable: {len(params)} tensors, {n:,} parameters (prompts + projector)")
        self.model.to(self.device)
        self.optim = build_optimizer(self.model, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("VLPromptLearner", self.model, self.optim, self.sched)

    def _class_text_features(self) -> torch.Tensor | None:
        """The teacher's text features of all classes (C, E): from the cache, else computed
        by building the teacher (training needs it anyway); None when there is no teacher."""
        spec = self.teacher_spec
        if not spec.available:
            logger.warning(
                f"No teacher checkpoint ({spec.where}): this run can only evaluate a student "
                "checkpoint that holds the class text features."
            )
            return None
        logger.info(
            f"Teacher: {spec.trainer}, checkpoint {spec.checkpoint or 'none'} (sha256 "
            f"{spec.checkpoint_sha256}), CLIP {spec.clip_file} (sha256 {spec.clip_sha256})"
        )
        cached = load_cached_text_features(spec, len(self.classnames))
        if cached is None:
            return self._build_teacher(compute_text=True)
        logger.info(f"Teacher text features from the cache {spec.cache_dir}")
        text_features, meta = cached
        self._text_logit_scale = meta.get("logit_scale")
        return text_features

    def results_provenance(self) -> dict:
        teacher = self.teacher_spec.provenance()
        if teacher and self.view_bank is not None:
            teacher.update(self.view_bank.provenance())
        return {"teacher": teacher} if teacher else {}

    def _build_teacher(self, compute_text: bool) -> torch.Tensor | None:
        """Build the frozen teacher (kept as ``self.teacher``, image side only); returns its
        text features (C, E) if ``compute_text``, cached."""
        spec, n_classes = self.teacher_spec, len(self.classnames)
        self.teacher = build_frozen_teacher(self.cfg, spec, self.classnames)
        text_features = None
        if compute_text:
            text_features = teacher_text_features(self.teacher, n_classes, spec.precision)
            self._text_logit_scale = float(self.teacher.logit_scale.float())
            if is_main_process():
                save_cached_text_features(spec, text_features, self.classnames,
                                          self._text_logit_scale)  # fmt: skip
        self.teacher.drop_text_tower()
        return text_features

    def build_hooks(self) -> list[HookBase]:
        """First: the teacher, unless building the model built it (its text features came
        from the cache, or there is no teacher: then this is the error); with stored views
        the bank instead (built first if needed)."""
        teacher = CallbackHook(before_train=lambda trainer: trainer.prepare_teacher())
        return [teacher, *super().build_hooks()]

    def prepare_teacher(self) -> None:
        """What training needs of the teacher: the stored views (K > 0), else the teacher."""
        if self.cfg.TRAINER.PROMPTKD.STORED_VIEWS > 0:
            self.use_stored_views()
        else:
            self.ensure_teacher()

    def ensure_teacher(self) -> None:
        if self.teacher is None:
            self._build_teacher(compute_text=False)

    def use_stored_views(self) -> ViewBank:
        """Open the bank of stored views (built first when missing: the only time the teacher
        is built) and train from it: the train loader replays its views."""
        spec = self.teacher_spec
        if not spec.available:
            raise missing_teacher_error(spec.where)

        def teacher():  # called only when the bank must be built
            if spec.missing:  # its files are gone: no teacher to build it with
                raise UserError(
                    f"No stored teacher views for these settings in "
                    f"{views_dir(self.cfg, spec.cache_dir)} (K, INPUT transforms, VIEW_SEED, "
                    "the images or the teacher's device / precision differ from the banks "
                    f"there), and the teacher needed to build them is gone: {spec.missing}"
                )
            self.ensure_teacher()
            scale = float(self.teacher.logit_scale.float())
            return self.teacher_image_embedding, scale, spec.precision.device

        width = self.model.class_text_features.shape[1]
        bank = prepare_bank(self.cfg, spec.identity, spec.cache_dir, self.dm.dataset.train_x,
                            width, teacher)  # fmt: skip
        if self._text_logit_scale is not None and self._text_logit_scale != bank.logit_scale:
            raise UserError(
                f"The stored teacher views in {bank.folder} were built by a teacher of logit "
                f"scale {bank.logit_scale}, the text features in {spec.cache_dir} by one of "
                f"{self._text_logit_scale}; delete both to compute them again."
            )
        self.teacher = None  # never needed again in this run
        loader = stored_view_loader(self.dm, bank.replay, bank.params, bank.features, bank.k)
        self.dm.train_loader_x = self.train_loader_x = loader
        log_view_schedule(bank.k, self.max_epoch, self.dm.seed)
        self.view_bank = bank
        self._view_logit_scale = torch.tensor(bank.logit_scale, device=self.device)  # once
        return bank

    @torch.no_grad()
    def teacher_image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's image embedding (B, E_t) of the student's batch, before normalisation,
        in its compute dtype (fp16 / bf16 under autocast: what a bank stores, losslessly)."""
        t_images = teacher_view(images, self.teacher.input_resolution)
        with self.teacher_spec.precision.autocast():
            return self.teacher.image_embedding(t_images)

    @torch.no_grad()
    def teacher_features(self, embedding: torch.Tensor) -> torch.Tensor:
        """Normalised fp32 features (B, E_t) of a teacher embedding, normalised as the teacher's
        ``image_features`` does it, under its precision: a stored embedding gives the features
        the live teacher gives, bit for bit."""
        with self.teacher_spec.precision.autocast():
            return l2_normalize(embedding).float()

    # ------------------------------------------------------------------ training
    def forward_backward(self, batch: dict) -> dict[str, float]:
        """One KD step on the images only: the labels are never read."""
        pk = self.cfg.TRAINER.PROMPTKD
        images = batch["img"].to(self.device)
        class_features = self.model.class_text_features  # (C, E_t), all classes
        if "view_features" in batch:  # stored views: the teacher's features of this view
            t_feats = self.teacher_features(batch["view_features"].to(self.device))  # (B, E_t)
            scale = self._view_logit_scale
        else:
            t_feats = self.teacher_features(self.teacher_image_embedding(images))  # (B, E_t)
            scale = self.teacher.logit_scale.float()
        t_logits = scale.exp() * t_feats @ class_features.t()
        with self.prec.autocast():
            s_logits = self.training_module()(images, class_features)  # (B, C)
        loss = pk.KD_WEIGHT * KD_LOSSES[pk.LOSS](s_logits.float(), t_logits, pk.TEMPERATURE)
        self.model_backward_and_update(loss)
        return {"loss": loss.item()}

    def filter_state_dict_on_load(self, state_dict: dict) -> dict:
        """The class vectors of a student checkpoint, of any number of classes, pass the
        strict loader; an official file has none, and those in hand stay."""
        key = "class_text_features"
        if key in state_dict:
            self.model.set_class_text_features(state_dict[key])
        return {**state_dict, key: self.model.class_text_features}

    # ------------------------------------------------------------------ evaluation
    def model_inference(self, input: torch.Tensor) -> torch.Tensor:
        """Student logits over the classes of the split being evaluated (base / new / all):
        rows ``eval_class_ids`` of the stored features, so each split has its own label space."""
        class_features = self.model.class_text_features
        if class_features.numel() == 0:
            raise UserError(
                "The student checkpoint holds no class text features and there is no teacher "
                f"to compute them ({self.teacher_spec.where}); set TRAINER.PROMPTKD.TEACHER_CKPT."
            )
        with self.prec.autocast():
            logits = self.model(input, class_features[self.eval_class_ids])
        return logits.float()
