"""A dataset's own per-class prompts (ImageFolder's ``name<TAB>prompt`` lines) in zero-shot
CLIP: ZeroshotCLIP / ZeroshotCLIP2 and PromptKD's ZeroshotCLIP teacher, whose cache key names
them only when there are any."""

from __future__ import annotations

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from image_folder_fixtures import write_folders

import train
from dassl_ext.config import setup_cfg
from dassl_ext.engine import build_trainer
from dassl_ext.errors import UserError
from dassl_ext.modeling import IMAGENET_TEMPLATES_SELECT, load_clip
from dassl_ext.modeling._clip import clip
from datasets.image_folder import SECTION
from trainers.promptkd_teacher import (
    build_frozen_teacher,
    resolve_teacher,
    teacher_text_features,
    text_feature_key,
)
from trainers.zsclip import ZeroshotCLIP, ZeroshotModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_CFG = os.path.join(REPO, "configs", "datasets", "image_folder.yaml")
NAMES = ["zero", "one", "two", "three"]
TEMPLATE = "a photo of a {}."
OWN = "a handwritten digit {}, a number."
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_root):
    return load_clip("tiny-teacher", tiny_clip_root)


def encoded(clip_model, texts: list[str]) -> torch.Tensor:
    """CLIP's own text features of ``texts``, normalised (the reference)."""
    with torch.no_grad():
        return F.normalize(clip_model.encode_text(clip.tokenize(texts)).float(), dim=-1)


# ---------------------------------------------------------------------- the model


def test_own_prompt_replaces_the_template_for_its_class_only(tiny_clip):
    prompts = [None, OWN, None, None]
    plain = ZeroshotModel(tiny_clip, NAMES, [TEMPLATE]).text_features()
    mixed = ZeroshotModel(tiny_clip, NAMES, [TEMPLATE], prompts).text_features()
    own = encoded(tiny_clip, [OWN.format("one")])[0]
    torch.testing.assert_close(mixed[1], own, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(mixed[1], plain[1], atol=1e-3)  # the prompt did change it
    torch.testing.assert_close(mixed[[0, 2, 3]], plain[[0, 2, 3]], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        plain, encoded(tiny_clip, [TEMPLATE.format(n) for n in NAMES]), rtol=1e-5, atol=1e-5
    )
    # ZeroshotCLIP2's ensemble: the own prompt replaces every template (its one feature)
    ensemble = [*IMAGENET_TEMPLATES_SELECT, TEMPLATE]
    plain2 = ZeroshotModel(tiny_clip, NAMES, ensemble).text_features()
    mixed2 = ZeroshotModel(tiny_clip, NAMES, ensemble, prompts).text_features()
    torch.testing.assert_close(mixed2[1], own, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed2[[0, 2, 3]], plain2[[0, 2, 3]], rtol=1e-6, atol=1e-6)
    # every class prompted: no template is used; a class's name goes where "{}" is
    every = ZeroshotModel(tiny_clip, ["golden_retriever", "cat"], ensemble,
                          ["a {} dog.", "a {} cat."]).text_features()  # fmt: skip
    reference = encoded(tiny_clip, ["a golden retriever dog.", "a cat cat."])
    torch.testing.assert_close(every, reference, rtol=1e-5, atol=1e-5)
    # without prompts (None, or all None): exactly today's features
    assert torch.equal(ZeroshotModel(tiny_clip, NAMES, [TEMPLATE], [None] * 4).text_features(),
                       plain)  # fmt: skip


def test_too_long_own_prompt_is_one_clear_sentence(tiny_clip):
    model = ZeroshotModel(tiny_clip, NAMES[:2], [TEMPLATE], [None, "a photo " * 40 + "{}."])
    with pytest.raises(UserError, match=r"Class 1 'one': its own prompt .* shorten it in the"):
        model.text_features()


# ---------------------------------------------------------------- ZeroshotCLIP runs


def _folders(root, prompts: dict[str, str] | None = None):
    return write_folders(str(root), n_classes=4, n_train=2, n_eval=3, prompts=prompts)


def _argv(tmp_path, folders, out, clip_root, trainer="ZeroshotCLIP", *opts):
    config = os.path.join(REPO, "configs", "trainers", "CoOp", "vit_b16.yaml")
    return [
        "--eval-only", "--root", str(tmp_path), "--seed", "1", "--trainer", trainer,
        "--dataset-config-file", DATASET_CFG, "--config-file", config, "--output-dir", str(out),
        f"{SECTION}.TRAIN_DIR", folders.train_dir, f"{SECTION}.CLASSNAMES_FILE", folders.class_file,
        f"{SECTION}.EVAL_DIR", folders.eval_dir, "MODEL.BACKBONE.NAME", "tiny-teacher",
        "MODEL.CLIP_ROOT", clip_root, "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
        *opts,
    ]  # fmt: skip


def _trainer(tmp_path, folders, clip_root, trainer="ZeroshotCLIP", *opts):
    train.import_plugins()
    argv = _argv(tmp_path, folders, tmp_path / "out", clip_root, trainer, *opts)
    return build_trainer(setup_cfg(train.parse_args(argv)))


@pytest.mark.parametrize("name", ["ZeroshotCLIP", "ZeroshotCLIP2"])
def test_zero_shot_trainer_uses_the_class_file_prompts(name, tmp_path, tiny_clip_root, tiny_clip):
    plain = _trainer(tmp_path, _folders(tmp_path / "plain"), tiny_clip_root, name)
    prompted_folders = _folders(tmp_path / "prompted", {"three": OWN})
    prompted = _trainer(tmp_path, prompted_folders, tiny_clip_root, name)
    assert plain.class_prompts is None
    assert prompted.class_prompts == [None, None, None, OWN]
    a, b = plain.model.text_features(), prompted.model.text_features()
    if prompted.prec.effective == "fp32":
        own = encoded(tiny_clip, [OWN.format("three")])[0]
        torch.testing.assert_close(b[3].cpu(), own, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[:3], b[:3], rtol=1e-6, atol=1e-6)  # encoded 4 vs 3 at once
    assert not torch.allclose(a[3], b[3], atol=1e-3)
    images = torch.randn(2, 3, 32, 32)
    ids = torch.arange(4)
    plain.eval_class_ids = prompted.eval_class_ids = ids
    la, lb = plain.model_inference(images), prompted.model_inference(images)
    torch.testing.assert_close(la[:, :3], lb[:, :3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(la[:, 3], lb[:, 3], atol=1e-2)


def test_prompts_follow_their_class_through_relabelling(tmp_path, tiny_clip_root):
    """SUBSAMPLE_CLASSES new relabels the new classes from 0: each keeps its own prompt."""
    folders = _folders(tmp_path / "mine", {"one": "a photo of the digit {}.", "three": OWN})
    trainer = _trainer(tmp_path, folders, tiny_clip_root, "ZeroshotCLIP",
                       "DATASET.SUBSAMPLE_CLASSES", "new")  # fmt: skip
    assert trainer.classnames == ["two", "three"] and trainer.class_prompts == [None, OWN]


def test_eval_only_run_logs_the_prompts(tmp_path, tiny_clip_root, caplog):
    folders = _folders(tmp_path / "mine", {"three": OWN})
    with caplog.at_level(logging.INFO, logger="trainers.zsclip"):
        assert train.main(_argv(tmp_path, folders, tmp_path / "out", tiny_clip_root)) == 0
    assert f"1 of 4 classes use the dataset's own prompt instead of the template(s): 'three': " \
        f"{OWN!r}" in caplog.text  # fmt: skip
    assert os.path.isfile(tmp_path / "out" / "results.json")


# ------------------------------------------------------------------ PromptKD's teacher


def _kd_cfg(tmp_path, clip_root, trainer="ZeroshotCLIP", *opts):
    train.import_plugins()
    kd = os.path.join(REPO, "configs", "trainers", "PromptKD", "base2new", "digits.yaml")
    folders = _folders(tmp_path / "kd_data")
    argv = [
        "--root", str(tmp_path), "--trainer", "PromptKD", "--dataset-config-file", DATASET_CFG,
        "--config-file", kd, "--output-dir", str(tmp_path / "kd"),
        f"{SECTION}.TRAIN_DIR", folders.train_dir, f"{SECTION}.CLASSNAMES_FILE", folders.class_file,
        f"{SECTION}.EVAL_DIR", folders.eval_dir, "MODEL.BACKBONE.NAME", "tiny-student",
        "TRAINER.PROMPTKD.TEACHER_NAME", "tiny-teacher", "TRAINER.PROMPTKD.TEACHER_TRAINER",
        trainer, "MODEL.CLIP_ROOT", clip_root, "INPUT.SIZE", "(32, 32)", *opts,
    ]  # fmt: skip
    return setup_cfg(train.parse_args(argv))


def test_zero_shot_teacher_key_names_prompts_only_when_there_are_any(tmp_path, tiny_clip_root):
    cfg = _kd_cfg(tmp_path, tiny_clip_root)
    today = resolve_teacher(cfg, CPU, NAMES)
    parts = {
        "trainer": "ZeroshotCLIP", "section": None, "backbone": "tiny-teacher",
        "clip_sha256": today.clip_sha256, "checkpoint_sha256": None, "classnames": NAMES,
        "compute": f"cpu-{today.precision.effective}",
    }  # fmt: skip
    assert today.cache_key == text_feature_key(parts) and today.class_prompts is None
    for none in (None, [], [None] * 4):  # no prompts: the key of before
        spec = resolve_teacher(cfg, CPU, NAMES, none)
        assert spec.cache_key == today.cache_key and spec.class_prompts is None
    own = resolve_teacher(cfg, CPU, NAMES, [None, None, None, OWN])
    assert own.class_prompts == (None, None, None, OWN)
    assert own.cache_key == text_feature_key({**parts, "class_prompts": [None, None, None, OWN]})
    changed = resolve_teacher(cfg, CPU, NAMES, [None, None, None, "a {} digit."])
    moved = resolve_teacher(cfg, CPU, NAMES, [None, None, OWN, None])
    assert len({today.cache_key, own.cache_key, changed.cache_key, moved.cache_key}) == 4

    # built from the spec, the teacher's features are the prompted zero-shot CLIP's
    feats = {}
    for spec in (today, own):
        teacher = build_frozen_teacher(cfg, spec, NAMES)
        feats[spec.cache_key] = teacher_text_features(teacher, 4, spec.precision)
    expected = ZeroshotCLIP.build_frozen_model(cfg, NAMES, "tiny-teacher", None,
                                               [None, None, None, OWN]).text_features()  # fmt: skip
    torch.testing.assert_close(feats[own.cache_key], expected, rtol=1e-5, atol=1e-5)
    a, b = feats[today.cache_key], feats[own.cache_key]
    torch.testing.assert_close(a[:3], b[:3], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(a[3], b[3], atol=1e-3)


def test_prompt_tuned_teacher_ignores_prompts(tmp_path, tiny_clip_root, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.pth").write_bytes(b"t")
    cfg = _kd_cfg(tmp_path, tiny_clip_root, "PromptSRC", "TRAINER.PROMPTKD.TEACHER_CKPT",
                  str(tmp_path / "t.pth"))  # fmt: skip
    with_prompts = resolve_teacher(cfg, CPU, NAMES, [None, OWN, None, None])
    assert with_prompts.class_prompts is None
    assert with_prompts.cache_key == resolve_teacher(cfg, CPU, NAMES).cache_key


def test_promptkd_run_caches_the_prompted_teacher_features(tmp_path, tiny_clip_root):
    """Through train.py: the cached entry of a ZeroshotCLIP teacher records the prompts, and
    the student's class vectors are the prompted teacher's."""
    folders = _folders(tmp_path / "mine", {"three": OWN})
    kd = os.path.join(REPO, "configs", "trainers", "PromptKD", "base2new", "digits.yaml")
    out = tmp_path / "kd"
    argv = [
        "--root", str(tmp_path), "--seed", "1", "--trainer", "PromptKD",
        "--dataset-config-file", DATASET_CFG, "--config-file", kd, "--output-dir", str(out),
        f"{SECTION}.TRAIN_DIR", folders.train_dir, f"{SECTION}.CLASSNAMES_FILE", folders.class_file,
        f"{SECTION}.EVAL_DIR", folders.eval_dir, "MODEL.BACKBONE.NAME", "tiny-student",
        "TRAINER.PROMPTKD.TEACHER_NAME", "tiny-teacher", "TRAINER.PROMPTKD.TEACHER_TRAINER",
        "ZeroshotCLIP", "MODEL.CLIP_ROOT", tiny_clip_root, "INPUT.SIZE", "(32, 32)",
        "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "0",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "TEST.FINAL_MODEL", "last_step",
    ]  # fmt: skip
    assert train.main(argv) == 0
    entries = list((tmp_path / "teacher_text_features").glob("*.pt"))
    assert len(entries) == 1
    entry = torch.load(entries[0], weights_only=True)
    assert entry["meta"]["class_prompts"] == [None, None, None, OWN]
    cfg = setup_cfg(train.parse_args(argv))
    expected = ZeroshotCLIP.build_frozen_model(cfg, NAMES, "tiny-teacher", None,
                                               [None, None, None, OWN]).text_features()  # fmt: skip
    torch.testing.assert_close(entry["text_features"], expected, rtol=1e-4, atol=1e-4)
