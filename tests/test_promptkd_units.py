"""PromptKD pieces without training: KD loss, parameter set, official keys, slicing, paths."""

from __future__ import annotations

import hashlib
import os
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import trainers  # noqa: F401  (registers the trainers and their config sections)
from dassl_ext.config import validate_config
from dassl_ext.config.setup import apply_config_extensions, get_cfg_default, setup_cfg
from dassl_ext.engine import TRAINER_REGISTRY, TeacherSupport, TrainerX, resolve_precision
from dassl_ext.errors import UserError
from dassl_ext.modeling import PromptedImageEncoder, clip, set_trainable
from trainers.losses import kd_loss
from trainers.promptkd import PromptKD
from trainers.promptkd_student import PromptKDStudent, prompt_parameters
from trainers.promptkd_teacher import (
    missing_teacher_error,
    resolve_teacher,
    teacher_trainer,
    text_feature_key,
)

CPU = torch.device("cpu")


def _cfg(**opts):
    cfg = apply_config_extensions(get_cfg_default())
    for key, value in opts.items():
        node = cfg
        *parents, last = key.split("__")
        for p in parents:
            node = node[p]
        node[last] = value
    return cfg


def _tiny_student(depth: int = 3, teacher_dim: int = 48) -> PromptKDStudent:
    visual = clip.model.VisionTransformer(32, 8, 64, 4, 1, 32)
    return PromptKDStudent(
        PromptedImageEncoder(visual, 2, depth), torch.tensor(4.6), 32, teacher_dim
    )


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_loss_matches_formula(temperature):
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(4, 7, generator=g) * 5, torch.randn(4, 7, generator=g) * 5
    t = temperature
    p_t = F.softmax(zt / t, dim=1)
    expected = (p_t * (p_t.log() - F.log_softmax(zs / t, dim=1))).sum() * t * t / (4 * 7)
    assert torch.allclose(kd_loss(zs, zt, t), expected, atol=1e-6)
    assert kd_loss(zt, zt, t).abs() < 1e-6  # zero when the student matches the teacher


@pytest.mark.parametrize("depth, count", [(9, 1_013_760), (3, 995_328)])
def test_trainable_parameters_at_real_size(depth, count):
    """ViT-B/16 student, ViT-L/14 teacher width: shapes only (meta device), spec §3.3."""
    with torch.device("meta"):
        visual = clip.model.VisionTransformer(224, 16, 768, 12, 12, 512)
        student = PromptKDStudent(
            PromptedImageEncoder(visual, 4, depth), torch.tensor(4.6), 512, 768
        )
    names = set_trainable(student, student.trainable_parameters())
    assert sum(p.numel() for p in student.parameters() if p.requires_grad) == count
    assert len(prompt_parameters(student.image_encoder)) == depth
    assert all(n.startswith("VPT_image_trans.") or "VPT" in n for n in names)
    assert not student.logit_scale.requires_grad


def test_state_dict_has_official_keys_and_loads_official_files():
    student = _tiny_student(depth=3)
    keys = set(student.state_dict())
    projector = {
        f"VPT_image_trans.conv1.{k}"
        for k in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                  "1.num_batches_tracked", "3.weight", "3.bias")
    }  # fmt: skip
    assert projector <= keys
    assert {"logit_scale", "image_encoder.VPT", "image_encoder.conv1.weight",
            "image_encoder.transformer.resblocks.2.VPT_shallow"} <= keys  # fmt: skip
    assert keys - projector - {"logit_scale", "class_text_features"} == {
        k for k in keys if k.startswith("image_encoder.")
    }
    # An official student file has no class_text_features: it loads strictly, and the
    # features already held are kept; ours carry them (any number of classes).
    feats = F.normalize(torch.randn(5, 48), dim=-1)
    student.set_class_text_features(feats)
    official = {k: v for k, v in student.state_dict().items() if k != "class_text_features"}
    other = _tiny_student(depth=3)
    other.set_class_text_features(feats)
    other.load_state_dict(official, strict=True)
    assert torch.equal(other.class_text_features, feats)
    ours = dict(student.state_dict(), class_text_features=torch.ones(7, 48))
    other.load_state_dict(ours, strict=True)
    assert other.class_text_features.shape == (7, 48)


def test_eval_logits_are_sliced_per_split():
    """base / new each get logits over their own classes only (own label space)."""
    torch.manual_seed(0)
    student = _tiny_student().eval()
    student.set_class_text_features(F.normalize(torch.randn(10, 48), dim=-1))
    images = torch.randn(3, 3, 32, 32)
    fake = SimpleNamespace(model=student, prec=resolve_precision("fp32", "cpu"))
    with torch.no_grad():
        full = student(images, student.class_text_features)  # (3, 10)
        for ids in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9]):
            fake.eval_class_ids = torch.tensor(ids)
            logits = PromptKD.model_inference(fake, images)
            assert logits.shape == (3, 5)
            assert torch.allclose(logits, full[:, ids], atol=1e-5)


def test_modal_is_promptkds_key_where_the_official_scripts_set_it(tmp_path):
    assert _cfg().TRAINER.MODAL == "base2novel"  # added with TRAINER.PROMPTKD
    args = SimpleNamespace(opts=["TRAINER.MODAL", "cross"], trainer="PromptKD")
    assert setup_cfg(args).TRAINER.MODAL == "cross"  # as scripts/promptkd/*.sh pass it


def test_modal_and_eval_splits_must_agree(tiny_clip_root):
    def cfg(modal, splits):
        return _cfg(
            TRAINER__NAME="PromptKD", TRAINER__MODAL=modal, DATASET__EVAL_SPLITS=splits,
            MODEL__CLIP_ROOT=tiny_clip_root, MODEL__BACKBONE__NAME="tiny-student",
            TRAINER__PROMPTKD__TEACHER_NAME="tiny-teacher", INPUT__SIZE=(32, 32),
        )  # fmt: skip

    validate_config(cfg("base2novel", "base_new"))
    validate_config(cfg("cross", "standard"))
    for modal, splits in (("base2novel", "standard"), ("cross", "base_new"), ("novel", "standard")):
        with pytest.raises(UserError, match="MODAL"):
            validate_config(cfg(modal, splits))


def _teacher(cfg, clip_root: str):
    """The teacher ``cfg`` names, resolved as PromptKD resolves it (on tiny-teacher)."""
    cfg.MODEL.CLIP_ROOT, cfg.TRAINER.PROMPTKD.TEACHER_NAME = clip_root, "tiny-teacher"
    return resolve_teacher(cfg, CPU, ["cat", "dog"])


def test_teacher_checkpoint_resolution(tmp_path, monkeypatch, tiny_clip_root):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(DATASET__NAME="OxfordPets")
    none = _teacher(cfg, tiny_clip_root)
    assert none.checkpoint is None and not none.available  # nothing there yet
    assert (none.cache_key, none.clip_sha256, none.provenance()) == (None, None, {})
    folder = tmp_path / "teacher_model" / "OxfordPets" / "VLPromptLearner"
    folder.mkdir(parents=True)
    for name in ("model.pth.tar-5", "model.pth.tar-20"):
        (folder / name).write_bytes(b"x")
    assert _teacher(cfg, tiny_clip_root).checkpoint.endswith("model.pth.tar-20")
    (folder / "model-best.pth.tar").write_bytes(b"y")
    spec = _teacher(cfg, tiny_clip_root)
    assert spec.checkpoint.endswith("model-best.pth.tar") and spec.available
    # the files' digests: what they contain (results.json and the cache key name them)
    assert spec.checkpoint_sha256 == hashlib.sha256(b"y").hexdigest()
    with open(spec.clip_file, "rb") as f:
        assert spec.clip_sha256 == hashlib.sha256(f.read()).hexdigest()
    assert spec.provenance() == {
        "trainer": "PromptSRC", "checkpoint": str(folder / "model-best.pth.tar"),
        "checkpoint_sha256": spec.checkpoint_sha256, "clip_file": spec.clip_file,
        "clip_sha256": spec.clip_sha256,
    }  # fmt: skip
    assert spec.cache_dir == str(tmp_path / "teacher_text_features")  # next to ./output
    assert "ImageNet-xd" in _teacher(_cfg(TRAINER__MODAL="cross"), tiny_clip_root).where
    explicit = _cfg(TRAINER__PROMPTKD__TEACHER_CKPT=str(folder / "model.pth.tar-5"))
    assert _teacher(explicit, tiny_clip_root).checkpoint == str(folder / "model.pth.tar-5")
    zero_shot = _teacher(_cfg(TRAINER__PROMPTKD__TEACHER_TRAINER="ZeroshotCLIP"), tiny_clip_root)
    assert zero_shot.checkpoint is None and zero_shot.available and zero_shot.cache_key
    with pytest.raises(UserError, match="TEACHER_CKPT"):
        _teacher(_cfg(TRAINER__PROMPTKD__TEACHER_TRAINER="CoOp"), tiny_clip_root)
    assert os.path.isdir(folder)


@pytest.mark.parametrize(
    "name,folder",
    [
        ("FGVCAircraft", os.path.join("teacher_model", "FGVCaircraft")),
        ("StanfordCars", os.path.join("teacher_models", "StandfordCars")),
        ("OxfordPets", os.path.join("teacher_models", "OxfordPets")),
    ],
)
def test_train_py_finds_released_teacher_folders(
    name, folder, tmp_path, monkeypatch, tiny_clip_root
):
    """The released teachers' spellings and roots, as the scripts accept them."""
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(DATASET__NAME=name)
    spec = _teacher(cfg, tiny_clip_root)
    assert spec.checkpoint is None
    message = str(missing_teacher_error(spec.where))
    for looked in ("teacher_model", "teacher_models", name):
        assert os.path.join(looked, "") in message or f"{looked}/" in message, looked
    if name != "OxfordPets":  # the released spelling is listed too
        assert f"{os.path.basename(folder)}/VLPromptLearner/" in message
    assert "TRAIN_TEACHER=1" in message and "github.com/zhengli97/PromptKD" in message
    (tmp_path / folder / "VLPromptLearner").mkdir(parents=True)
    (tmp_path / folder / "VLPromptLearner" / "model.pth.tar-20").write_bytes(b"x")
    path = _teacher(cfg, tiny_clip_root).checkpoint
    assert path == os.path.join(folder, "VLPromptLearner", "model.pth.tar-20")


@pytest.mark.parametrize("script", ["base2new.sh", "xd.sh"])
def test_pipeline_scripts_parse_and_reject_unknown_datasets(script):
    import subprocess

    path = os.path.join(os.path.dirname(__file__), "..", "scripts", "promptkd", script)
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    run = subprocess.run(["bash", path, "no_such_dataset"], capture_output=True, text=True)
    assert run.returncode == 2 and "configs/datasets/no_such_dataset.yaml" in run.stderr


def test_teacher_is_what_its_trainer_class_declares(tmp_path, monkeypatch, tiny_clip_root):
    """No list of trainer names: a new trainer that declares TeacherSupport teaches."""

    class ShapeLearner(TrainerX):
        frozen_teacher = TeacherSupport(default_model_name="ShapePrompts")

    TRAINER_REGISTRY.register(ShapeLearner)
    try:
        monkeypatch.chdir(tmp_path)
        cfg = _cfg(DATASET__NAME="Shapes", TRAINER__PROMPTKD__TEACHER_TRAINER="ShapeLearner")
        assert teacher_trainer("ShapeLearner") is ShapeLearner
        spec = _teacher(cfg, tiny_clip_root)
        assert (spec.trainer_cls, spec.support) == (ShapeLearner, ShapeLearner.frozen_teacher)
        where = os.path.join("teacher_model", "Shapes", "ShapePrompts")
        assert spec.checkpoint is None and where in spec.where
        folder = tmp_path / "teacher_model" / "Shapes" / "ShapePrompts"
        folder.mkdir(parents=True)
        (folder / "model.pth.tar-3").write_bytes(b"x")
        assert _teacher(cfg, tiny_clip_root).checkpoint.endswith("model.pth.tar-3")
    finally:
        TRAINER_REGISTRY.unregister("ShapeLearner")
    with pytest.raises(UserError, match="CoCoOp cannot serve.*IVLP, MaPLe, PromptSRC"):
        teacher_trainer("CoCoOp")


def test_text_feature_key_is_pinned_and_resolved_from_the_teacher(
    tiny_clip_root, tmp_path, monkeypatch
):
    """The key of fixed values is pinned (caches written before stay hits: the values below
    are those of the code that wrote them); resolve_teacher keys by the teacher's section, the
    files' content, the classes and where they are computed; every part changes the key."""
    parts = {
        "trainer": "PromptSRC", "section": "N_CTX_TEXT: 4\nPREC: fp16\n", "backbone": "ViT-L/14",
        "clip_sha256": "a" * 64, "checkpoint_sha256": "b" * 64, "classnames": ["cat", "dog"],
        "compute": "cpu-fp32",
    }  # fmt: skip
    assert text_feature_key(parts) == "c1d28803ee0b94cacbd9"
    zero_shot = {**parts, "trainer": "ZeroshotCLIP", "section": None, "checkpoint_sha256": None,
                 "compute": "cuda-fp16"}  # fmt: skip
    assert text_feature_key(zero_shot) == "0d325a3a7a552685d02a"
    others = {text_feature_key({**parts, k: v}) for k, v in [
        ("classnames", ["dog", "cat"]), ("clip_sha256", "0" * 64), ("checkpoint_sha256", None),
        ("compute", "cuda-fp16"), ("section", "N_CTX_TEXT: 2\nPREC: fp16\n"),
        ("trainer", "IVLP"), ("backbone", "ViT-B/16"),
    ]}  # fmt: skip
    monkeypatch.setattr("trainers.promptkd_teacher.TEXT_FEATURES_VERSION", 2)
    others.add(text_feature_key(parts))  # another code version
    assert len(others - {text_feature_key(zero_shot)}) == 8 and "c1d28803ee0b94cacbd9" not in others

    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.pth").write_bytes(b"t")
    cfg = _cfg(TRAINER__PROMPTKD__TEACHER_CKPT=str(tmp_path / "t.pth"))
    spec = _teacher(cfg, tiny_clip_root)
    assert spec.cache_key == text_feature_key({
        "trainer": "PromptSRC", "section": cfg.TRAINER.PROMPTSRC.dump(),
        "backbone": "tiny-teacher", "clip_sha256": spec.clip_sha256,
        "checkpoint_sha256": hashlib.sha256(b"t").hexdigest(), "classnames": ["cat", "dog"],
        "compute": f"cpu-{spec.precision.effective}",
    })  # fmt: skip
    cfg = _cfg(TRAINER__PROMPTKD__TEACHER_TRAINER="CoOp", TRAINER__PROMPTKD__TEACHER_CKPT="t.pth")
    assert _teacher(cfg, tiny_clip_root).cache_key == text_feature_key({
        **parts, "trainer": "CoOp", "section": cfg.TRAINER.COOP.dump(), "backbone": "tiny-teacher",
        "clip_sha256": spec.clip_sha256, "checkpoint_sha256": spec.checkpoint_sha256,
        "compute": f"cpu-{spec.precision.effective}",
    })  # fmt: skip


def test_export_stores_the_architecture_and_reads_old_files(tmp_path):
    """Two heads on width 64: not CLIP's width // 64, so only a stored architecture rebuilds
    it; a file of the first format (no architecture) still loads, by CLIP's rule."""
    from trainers.promptkd_export import FORMAT_V1, ExportedStudent, export_student

    torch.manual_seed(0)
    visual = clip.model.VisionTransformer(32, 8, 64, 4, 2, 32)
    student = PromptKDStudent(PromptedImageEncoder(visual, 2, 3), torch.tensor(4.6), 32, 48)
    student.set_class_text_features(F.normalize(torch.randn(10, 48), dim=-1))
    student.eval()
    trainer = SimpleNamespace(
        model=student, classnames=[str(i) for i in range(10)], cfg=_cfg(INPUT__SIZE=(32, 32))
    )
    path = str(tmp_path / "student.pt")
    export_student(trainer, path)
    obj = torch.load(path, weights_only=True)
    assert obj["architecture"] == {
        "input_resolution": 32, "patch_size": 8, "width": 64, "layers": 4, "heads": 2,
        "output_dim": 32, "n_ctx": 2, "prompt_depth": 3, "teacher_dim": 48,
    }  # fmt: skip
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = student(images, student.class_text_features)
    loaded = ExportedStudent(path)
    assert loaded.model.image_encoder.transformer.resblocks[0].attn.num_heads == 2
    torch.testing.assert_close(loaded.logits(images), expected)

    # a first-format file (written by the previous version: CLIP's heads) loads as before
    clip_like = _tiny_student().eval()
    clip_like.set_class_text_features(student.class_text_features)
    trainer.model = clip_like
    export_student(trainer, path)
    old = torch.load(path, weights_only=True)
    del old["architecture"]
    torch.save({**old, "format": FORMAT_V1}, path)
    with torch.no_grad():
        expected = clip_like(images, clip_like.class_text_features)
    torch.testing.assert_close(ExportedStudent(path).logits(images), expected)
