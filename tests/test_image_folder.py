"""ImageFolder: your own unlabeled images, a class file and a labeled folder, no code.

Digits are written as image files into the folders (tests/image_folder_fixtures.py); the
dataset is built through the registry, then through train.py with the tiny CLIPs.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from image_folder_fixtures import Folders, write_digit, write_folders

import datasets  # noqa: F401  (registers the readers)
import train
from dassl_ext.config import apply_config_extensions, get_cfg_default, validate_config
from dassl_ext.data import DATASET_REGISTRY, DatasetWrapper
from dassl_ext.data.images import read_image
from dassl_ext.errors import UserError
from datasets.digits import CLASSNAMES
from datasets.image_folder import SECTION, read_class_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_CFG = os.path.join(REPO, "configs", "datasets", "image_folder.yaml")


def make_cfg(root, folders, *opts, eval_dir=True):
    cfg = apply_config_extensions(get_cfg_default())
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = "ImageFolder"
    f = cfg.DATASET.IMAGE_FOLDER
    f.TRAIN_DIR, f.CLASSNAMES_FILE = folders.train_dir, folders.class_file
    f.EVAL_DIR = folders.eval_dir if eval_dir else ""
    cfg.merge_from_list([str(o) for o in opts])
    return cfg


def build(root, folders, *opts, eval_dir=True):
    return DATASET_REGISTRY.get("ImageFolder")(make_cfg(root, folders, *opts, eval_dir=eval_dir))


def refused(root, folders, *opts, eval_dir=True) -> str:
    """The one sentence a bad input gets (from the config check or the dataset)."""
    cfg = make_cfg(root, folders, *opts, eval_dir=eval_dir)
    with pytest.raises(UserError) as e:
        validate_config_and_build(cfg)
    message = str(e.value)
    assert "\n" not in message and message.endswith((".", ")")), message
    return message


def validate_config_and_build(cfg):
    DATASET_REGISTRY.get("ImageFolder").check_config(cfg)
    return DATASET_REGISTRY.get("ImageFolder")(cfg)


@pytest.fixture
def folders(tmp_path):
    # 4 classes, 3 unlabeled + 5 labeled images each; prompts on two lines
    prompts = {"one": "a photo of the digit {}.", "three": "a handwritten {}."}
    return write_folders(str(tmp_path / "mine"), prompts=prompts)


# ------------------------------------------------------------------------ reading


def test_reads_folders_and_class_file(tmp_path, folders):
    ds = build(tmp_path, folders, "DATASET.EVAL_SPLITS", "base_new")
    assert ds.classnames == ["zero", "one", "two", "three"] and ds.num_classes == 4
    assert ds.class_prompts == {"one": "a photo of the digit {}.", "three": "a handwritten {}."}
    # 12 unlabeled images, sorted by path, with placeholder labels i mod 4
    assert len(ds.train_x) == 12
    paths = [d.impath for d in ds.train_x]
    assert paths == sorted(paths) and all(p.startswith(folders.train_dir) for p in paths)
    assert [d.label for d in ds.train_x] == [i % 4 for i in range(12)]
    # labeled: per class round(0.2 * 5) = 1 val, 4 test; base = first half of the file
    assert ds.eval_splits["base"].class_ids == [0, 1] and ds.eval_splits["new"].class_ids == [2, 3]
    assert len(ds.eval_splits["base"].items) == 8 and len(ds.eval_splits["new"].items) == 8
    for split in ds.eval_splits.values():
        for d in split.items:  # labels local to the split; the folder is the class
            assert os.path.basename(os.path.dirname(d.impath)) == d.classname
            assert ds.classnames[split.class_ids[d.label]] == d.classname
    clean = build(tmp_path, folders, "DATASET.PROTOCOL", "clean")
    assert len(clean.val) == 4 and len(clean.test) == 16
    assert not {d.impath for d in clean.val} & {d.impath for d in clean.test}


def test_split_file_is_coop_format_keyed_by_content(tmp_path, folders):
    first = build(tmp_path, folders)
    split_dir = tmp_path / "image_folder"
    written = sorted(split_dir.glob("split_ImageFolder_*.json"))
    assert [str(p) for p in written] == [first.split_path]
    text = written[0].read_text()
    split = json.loads(text)
    assert text.startswith('{\n    "train"') and len(split["train"]) == 12
    rel, label, cname = split["train"][0]
    assert rel == os.path.join("unlabeled", "batch0", "day1", "img000.png")
    assert (label, cname) == (0, "zero")
    assert split["test"][0][0].startswith(os.path.join("labeled", "zero", ""))
    # unchanged folders: the same file is read (not rewritten), the same split
    mtime = os.path.getmtime(first.split_path)
    os.utime(first.split_path, (mtime - 100, mtime - 100))
    again = build(tmp_path, folders)
    assert again.split_path == first.split_path and again.train_x == first.train_x
    assert os.path.getmtime(first.split_path) == mtime - 100
    assert again.test == first.test
    # the folders moved together keep the key; a new image makes a new split file
    moved = write_folders(str(tmp_path / "elsewhere"))
    assert build(tmp_path, moved).content_key == first.content_key
    write_digit(os.path.join(folders.train_dir, "new", "extra.png"), 5, 0)
    grown = build(tmp_path, folders)
    assert grown.split_path != first.split_path and len(grown.train_x) == 13
    assert len(list(split_dir.glob("split_ImageFolder_*.json"))) == 2
    # hidden files and other files are not images
    (tmp_path / "mine" / "unlabeled" / ".hidden.png").write_bytes(b"")
    (tmp_path / "mine" / "unlabeled" / "notes.txt").write_text("x")
    assert build(tmp_path, folders).split_path == grown.split_path


def test_val_test_split_is_deterministic_per_class(tmp_path, folders):
    ds = build(tmp_path, folders, "DATASET.PROTOCOL", "clean")
    val = {d.impath for d in ds.val}
    # another class's images do not move this class's split
    write_digit(os.path.join(folders.eval_dir, "two", "99.png"), 2, 30)
    ds2 = build(tmp_path, folders, "DATASET.PROTOCOL", "clean")
    assert {d.impath for d in ds2.val if d.classname != "two"} == {
        p for p in val if os.sep + "two" + os.sep not in p
    }


def test_base_classes_list_orders_labels(tmp_path, folders):
    ds = build(tmp_path, folders, "DATASET.EVAL_SPLITS", "base_new",
               f"{SECTION}.BASE_CLASSES", "['three', 'one']")  # fmt: skip
    assert ds.classnames == ["one", "three", "zero", "two"]  # base first, file order
    assert ds.class_prompts == {"one": "a photo of the digit {}.", "three": "a handwritten {}."}
    base = ds.eval_splits["base"]
    assert {d.classname for d in base.items} == {"one", "three"}


def test_without_labeled_folder_only_training(tmp_path, folders):
    message = refused(tmp_path, folders, eval_dir=False)
    assert f"{SECTION}.EVAL_DIR is empty" in message and "TEST.NO_TEST True" in message
    ds = build(tmp_path, folders, "TEST.NO_TEST", "True", eval_dir=False)
    assert len(ds.train_x) == 12
    with open(ds.split_path) as fh:
        split = json.load(fh)
    assert split["val"] == [] and split["test"] == []  # nothing pretends to be labeled
    assert ds.nothing_to_evaluate == f"no labeled images ({SECTION}.EVAL_DIR is empty)"
    assert build(tmp_path, folders).nothing_to_evaluate == ""


def test_summary_says_there_is_nothing_to_evaluate(tmp_path, folders, caplog):
    """No labeled folder: the summary shows no val/base/new sizes of stand-in images."""
    from dassl_ext.data.data_manager import DataManager

    dm = DataManager.__new__(DataManager)  # the summary reads only the dataset
    caplog.set_level("INFO")
    dm.dataset = build(tmp_path, folders, "TEST.NO_TEST", "True", eval_dir=False)
    dm.show_dataset_summary()
    text = " ".join(caplog.text.split())
    assert "# train_x 12" in text and "# val" not in text and "# base" not in text
    assert f"Evaluation none: no labeled images ({SECTION}.EVAL_DIR is empty)" in text
    caplog.clear()
    dm.dataset = build(tmp_path, folders, "DATASET.EVAL_SPLITS", "base_new")
    dm.show_dataset_summary()
    assert "# val" in caplog.text and "# base" in caplog.text and "Evaluation" not in caplog.text


def test_a_trainer_that_learns_from_labels_is_warned_truly(tmp_path, folders, caplog):
    """The dataset cannot know whether the run trains: the warning holds either way."""
    build(tmp_path, folders, "TRAINER.NAME", "PromptSRC")
    assert "PromptSRC learns from labels, so train it on a labeled dataset" in caplog.text
    assert "evaluating a trained one on ImageFolder (--eval-only) is fine" in caplog.text
    caplog.clear()
    build(tmp_path, folders, "TRAINER.NAME", "PromptKD")
    assert "learns from labels" not in caplog.text


def test_mixed_modes_and_bit_depths_are_read_as_rgb(tmp_path):
    f = write_folders(str(tmp_path / "mixed"), n_classes=3, n_train=4, n_eval=3, mixed=True)
    ds = build(tmp_path, f)
    exts = {os.path.splitext(d.impath)[1] for d in ds.train_x + ds.test}
    assert exts >= {".png", ".jpg", ".bmp", ".webp", ".tif", ".gif"}
    from PIL import Image

    modes = set()
    for d in ds.train_x + ds.test:
        with Image.open(d.impath) as img:
            modes.add(img.mode)
    assert {"L", "RGBA", "P", "I;16"} <= modes, modes
    wrapper = DatasetWrapper(ds.train_x + ds.test, lambda img: torch.from_numpy(np.array(img)))
    for i in range(len(wrapper)):
        assert wrapper[i]["img"].shape == (32, 32, 3)
    # the 16-bit image keeps its range (value >> 8), not clipped to white
    sixteen = next(p for p in (d.impath for d in ds.train_x) if Image.open(p).mode == "I;16")
    pixels = np.asarray(read_image(sixteen))
    assert 0 < (pixels == 255).mean() < 0.5 and pixels.min() == 0


# ---------------------------------------------------------------------- bad input


def test_missing_or_empty_training_folder(tmp_path, folders):
    cfg_missing = make_cfg(tmp_path, folders, f"{SECTION}.TRAIN_DIR", str(tmp_path / "nope"))
    with pytest.raises(UserError, match=rf"TRAIN_DIR {tmp_path / 'nope'} does not exist"):
        validate_config_and_build(cfg_missing)
    empty = tmp_path / "empty" / "sub"
    empty.mkdir(parents=True)
    (empty / "readme.txt").write_text("no images here")
    message = refused(tmp_path, folders, f"{SECTION}.TRAIN_DIR", str(tmp_path / "empty"))
    assert "no images found in" in message and str(tmp_path / "empty") in message
    assert ".png" in message and ".webp" in message and "readme.txt" in message


def test_too_few_training_images_for_the_classes(tmp_path):
    f = write_folders(str(tmp_path / "few"), n_classes=4, n_train=1)
    for p in sorted(os.listdir(os.path.join(f.train_dir, "batch0", "day1")))[:1]:
        os.remove(os.path.join(f.train_dir, "batch0", "day1", p))
    message = refused(tmp_path, f)
    assert "holds 3 image(s) for 4 classes" in message


@pytest.mark.parametrize(
    "lines, expected",
    [
        (["cat", "dog", "Cat"], "line 3 repeats class 'Cat' of line 1"),
        (["sea_lake", "forest", "sea  lake"], "line 3 repeats class 'sea  lake' of line 1"),
        (["cat", "", "dog"], "line 2 is empty"),
        (["cat", "   ", "dog"], "line 2 is empty"),
        (["cat", "\ta photo of a {}.", "dog"], "line 2 has an empty class name"),
        (["cat", "dog\ta photo of a dog."], "line 2 has prompt 'a photo of a dog.'"),
        (["cat", "dog\ta {name}."], "line 2 has prompt"),
        (["# only one", "cat"], "lists 1 class name(s)"),
    ],
)
def test_bad_class_file_names_the_line(tmp_path, lines, expected):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        read_class_file(str(path))
    assert expected in str(e.value) and str(path) in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_class_file_comments_prompts_and_bom(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeff# my classes\ncat\na b\ta photo of {}, a pet.\n\n".encode())
    assert read_class_file(str(path)) == [("cat", None), ("a b", "a photo of {}, a pet.")]


def test_bad_class_file_is_refused_before_training(tmp_path, folders):
    with open(folders.class_file, "a", encoding="utf-8") as f:
        f.write("ZERO\n")
    message = refused(tmp_path, folders)
    assert f"{folders.class_file} line 5 repeats class 'ZERO' of line 1" in message


def test_labeled_folder_must_match_the_class_file(tmp_path, folders):
    os.rename(os.path.join(folders.eval_dir, "two"), os.path.join(folders.eval_dir, "Two"))
    os.makedirs(os.path.join(folders.eval_dir, "seven"))
    message = refused(tmp_path, folders)
    assert f"EVAL_DIR {folders.eval_dir} does not match the class file" in message
    assert "no sub-folder for 'two'" in message and "'Two', 'seven' not in the class" in message


def test_labeled_folder_problems(tmp_path, folders):
    empty_class = os.path.join(folders.eval_dir, "three")
    for name in os.listdir(empty_class):
        os.remove(os.path.join(empty_class, name))
    assert f"class folder {empty_class} holds no images" in refused(tmp_path, folders)
    write_digit(os.path.join(empty_class, "0.png"), 3, 0)
    write_digit(os.path.join(folders.eval_dir, "stray.png"), 3, 1)
    assert "holds image stray.png outside a class sub-folder" in refused(tmp_path, folders)
    os.remove(os.path.join(folders.eval_dir, "stray.png"))
    inside = os.path.join(folders.train_dir, "batch0")
    assert "overlap (one holds the other)" in refused(
        tmp_path, folders, f"{SECTION}.EVAL_DIR", inside
    )
    missing = str(tmp_path / "no_labels")
    message = refused(tmp_path, folders, f"{SECTION}.EVAL_DIR", missing)
    assert f"EVAL_DIR {missing} does not exist" in message


def test_base_classes_must_be_half_of_the_file(tmp_path, folders):
    key = f"{SECTION}.BASE_CLASSES"
    unknown = refused(tmp_path, folders, key, "['one', 'eight']")
    assert "names 'eight', not in the class file" in unknown
    assert "lists 1 class name(s), but base/new" in refused(tmp_path, folders, key, "['one']")


def test_unreadable_image_is_named(tmp_path, folders):
    bad = os.path.join(folders.train_dir, "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    message = refused(tmp_path, folders)
    assert bad in message and "cannot be used" in message
    assert "or remove them from their folder" in message and "split file" not in message


def test_config_rule_and_yaml(tmp_path):
    cfg = apply_config_extensions(get_cfg_default())
    cfg.DATASET.IMAGE_FOLDER.BASE_CLASSES = ("cat", "cat")
    with pytest.raises(UserError, match="BASE_CLASSES"):
        validate_config(cfg)
    with open(DATASET_CFG) as f:
        assert 'NAME: "ImageFolder"' in f.read()


# -------------------------------------------------------------------- end to end


def _argv(root, folders, out, clip_root, *opts, eval_only=False):
    kd = os.path.join(REPO, "configs", "trainers", "PromptKD", "base2new", "digits.yaml")
    return [
        *(("--eval-only", "--model-dir", str(root / "kd")) if eval_only else ()),
        "--root", str(root), "--seed", "1", "--trainer", "PromptKD",
        "--dataset-config-file", DATASET_CFG, "--config-file", kd, "--output-dir", str(out),
        f"{SECTION}.TRAIN_DIR", folders.train_dir, f"{SECTION}.CLASSNAMES_FILE", folders.class_file,
        f"{SECTION}.EVAL_DIR", folders.eval_dir,
        "MODEL.BACKBONE.NAME", "tiny-student", "TRAINER.PROMPTKD.TEACHER_NAME", "tiny-teacher",
        "TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP", "MODEL.CLIP_ROOT", clip_root,
        "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1",
        "DATASET.NUM_SHOTS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "TEST.FINAL_MODEL", "last_step", *opts,
    ]  # fmt: skip


def test_promptkd_distils_on_a_folder_through_train_py(tmp_path, tiny_clip_root):
    f = write_folders(str(tmp_path / "mine"), n_classes=4, n_train=4, n_eval=5, mixed=True)
    out = tmp_path / "kd"
    assert train.main(_argv(tmp_path, f, out, tiny_clip_root)) == 0
    with open(out / "results.json") as fh:
        splits = json.load(fh)["splits"]
    assert set(splits) == {"base", "new"}
    assert splits["base"]["num_images"] == 8 and splits["new"]["num_images"] == 8
    assert os.path.isfile(out / "VLPromptLearner" / "model.pth.tar-1")


def test_bad_folder_stops_train_py_before_training(tmp_path, tiny_clip_root, capsys):
    f = write_folders(str(tmp_path / "mine"), n_classes=4, n_train=2, n_eval=2)
    os.rename(os.path.join(f.eval_dir, "one"), os.path.join(f.eval_dir, "uno"))
    out = tmp_path / "kd"
    assert train.main(_argv(tmp_path, f, out, tiny_clip_root)) == 1
    err = capsys.readouterr()
    line = next(s for s in (err.out + err.err).splitlines() if s.startswith("Error:"))
    assert "no sub-folder for 'one'" in line and "'uno' not in the class file" in line
    assert not (out / "VLPromptLearner").exists()


# ---------------------------------------------- the method's claim on a folder (stand-ins)


def _digits_as_folders(digits_root, root) -> Folders:
    """Digits' train split as unlabeled images (renamed, one flat folder) and its test split
    as the labeled folder: what a user with their own images would have."""
    with open(os.path.join(digits_root, "digits", "split_zhou_Digits.json")) as fh:
        split = json.load(fh)
    images = os.path.join(digits_root, "digits", "images")
    train_dir, eval_dir = os.path.join(root, "unlabeled"), os.path.join(root, "labeled")
    os.makedirs(train_dir)
    for i, (rel, _, _) in enumerate(split["train"]):
        shutil.copy(os.path.join(images, rel), os.path.join(train_dir, f"{i:04d}.png"))
    for rel, _, cname in split["test"]:
        os.makedirs(os.path.join(eval_dir, cname), exist_ok=True)
        shutil.copy(os.path.join(images, rel), os.path.join(eval_dir, cname))
    class_file = os.path.join(root, "classes.txt")
    with open(class_file, "w") as fh:
        fh.write("\n".join(CLASSNAMES) + "\n")
    return Folders(train_dir, class_file, eval_dir, list(CLASSNAMES))


def test_folder_student_beats_its_zero_shot_on_new_classes(digits_root, tmp_path):
    """Issue 23's end-to-end claim (the stand-ins, about a minute per run): on Digits written
    as a folder of unlabeled images plus a labeled folder, the student distilled from the
    zero-shot digits-teacher beats its own zero-shot accuracy on the new classes, for seeds
    1 and 2 (the short recipe of tests/test_standins.py). Measured (seed 1, 2): zero-shot
    base 88.9 / new 83.7; distilled 92.6 / 89.8 and 88.9 / 89.3 (new +6.0 and +5.6; base is
    not what is claimed, so it may lose one point)."""
    from tests.test_standins import KD, KD_CONFIG, STANDIN

    f = _digits_as_folders(digits_root, str(tmp_path / "mine"))
    folder = [
        "--dataset-config-file", DATASET_CFG, "--root", str(tmp_path),
        f"{SECTION}.TRAIN_DIR", f.train_dir, f"{SECTION}.CLASSNAMES_FILE", f.class_file,
        f"{SECTION}.EVAL_DIR", f.eval_dir, "INPUT.SIZE", "(32, 32)",
        "DATALOADER.NUM_WORKERS", "0", "DATASET.EVAL_SPLITS", "base_new",
    ]  # fmt: skip

    def run(out, trainer, config, *opts, flags=()) -> dict:
        config = os.path.join(REPO, "configs", "trainers", config)
        argv = [*flags, "--trainer", trainer, "--output-dir", str(out), "--config-file", config,
                *folder, *STANDIN, *opts]  # fmt: skip
        assert train.main(argv) == 0
        with open(out / "results.json") as fh:
            return {s: v["accuracy"] for s, v in json.load(fh)["splits"].items()}

    zero_shot = run(tmp_path / "zs", "ZeroshotCLIP", "CoOp/vit_b16.yaml", "MODEL.BACKBONE.NAME",
                    "digits-student", flags=("--eval-only",))  # fmt: skip
    short = [
        "DATASET.NUM_SHOTS", "0", "OPTIM.MAX_EPOCH", "6", "TEST.FINAL_MODEL", "last_step",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "32", "OPTIM.LR", "0.008", "OPTIM.WARMUP_EPOCH", "0",
    ]  # fmt: skip
    for seed in ("1", "2"):
        out = tmp_path / f"kd{seed}"
        distilled = run(out, "PromptKD", KD_CONFIG, *KD, *short, flags=("--seed", seed))
        assert distilled["new"] >= zero_shot["new"] + 2.0, (seed, zero_shot, distilled)
        assert distilled["base"] >= zero_shot["base"] - 1.0, (seed, zero_shot, distilled)
