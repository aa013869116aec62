"""Data a user brings, tried as a new user would: folders named on another system, symbolic
links between the training and the labeled folder, file names that are not UTF-8, damaged
student exports, an ONNX file where a student.pt is expected."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import unicodedata

import numpy as np
import pytest
import torch
from export_fixtures import write_tiny_export
from image_folder_fixtures import write_folders
from PIL import Image

import datasets  # noqa: F401  (registers the readers)
import trainers  # noqa: F401  (registers the trainers and their config sections)
from dassl_ext.config import apply_config_extensions, get_cfg_default
from dassl_ext.data import DATASET_REGISTRY
from dassl_ext.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ ImageFolder


def folder_cfg(root, f, eval_dir=None):
    cfg = apply_config_extensions(get_cfg_default())
    cfg.DATASET.ROOT, cfg.DATASET.NAME = str(root), "ImageFolder"
    s = cfg.DATASET.IMAGE_FOLDER
    s.TRAIN_DIR, s.CLASSNAMES_FILE = f.train_dir, f.class_file
    s.EVAL_DIR = f.eval_dir if eval_dir is None else eval_dir
    return cfg


def build_folder(root, f, eval_dir=None):
    cls = DATASET_REGISTRY.get("ImageFolder")
    cfg = folder_cfg(root, f, eval_dir)
    cls.check_config(cfg)
    return cls(cfg)


def _rewrite_class_file(f, first: list[str]) -> None:
    """Replace the first lines of the class file with ``first``."""
    with open(f.class_file, encoding="utf-8") as inp:
        lines = inp.read().splitlines()
    lines[: len(first)] = first
    with open(f.class_file, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("folder_form, file_form", [("NFD", "NFC"), ("NFC", "NFD")])
def test_class_folders_named_in_the_other_unicode_form_match(tmp_path, folder_form, file_form):
    # macOS writes 'café' decomposed (e + combining accent); a class file typed elsewhere has
    # it composed: the same name to the user (and to CLIP), other code points to the os
    f = write_folders(str(tmp_path / "mine"))
    name = "caf\u00e9"
    os.rename(os.path.join(f.eval_dir, f.names[0]),
              os.path.join(f.eval_dir, unicodedata.normalize(folder_form, name)))  # fmt: skip
    _rewrite_class_file(f, [unicodedata.normalize(file_form, name)])
    ds = build_folder(tmp_path, f)
    label = ds.classnames.index(unicodedata.normalize(file_form, name))
    tested = {d.impath for d in ds.val + ds.test if d.label == label}
    assert len(tested) >= 4 and all(os.path.isfile(p) for p in tested)  # 5 labeled: 1 val
    again = build_folder(tmp_path, f)  # the split file written is read back alike
    assert [d.impath for d in again.test] == [d.impath for d in ds.test]


def test_class_names_differing_only_in_unicode_form_are_one_class(tmp_path):
    f = write_folders(str(tmp_path / "mine"))
    _rewrite_class_file(f, ["caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")])
    with pytest.raises(UserError, match="line 2 repeats class"):
        build_folder(tmp_path, f)


@pytest.mark.parametrize("how", ["class folder links to the training folder",
                                 "training folder links into the labeled folder",
                                 "one labeled image links to a training image"])  # fmt: skip
def test_labeled_images_reached_from_the_training_folder_are_refused(tmp_path, how):
    f = write_folders(str(tmp_path / "mine"))
    first = os.path.join(f.eval_dir, f.names[0])
    if how.startswith("class folder"):
        shutil.rmtree(first)
        os.symlink(f.train_dir, first)
    elif how.startswith("training folder"):
        os.symlink(f.eval_dir, os.path.join(f.train_dir, "more"))
    else:
        target = os.path.join(f.train_dir, "batch0", "day1", "img000.png")
        os.remove(os.path.join(first, "00.png"))
        os.symlink(target, os.path.join(first, "00.png"))
    with pytest.raises(UserError) as e:
        build_folder(tmp_path, f)
    message = str(e.value)
    assert "TRAIN_DIR and EVAL_DIR reach the same image file" in message, message
    assert "\n" not in message and not os.path.exists(tmp_path / "image_folder" / "x")


def test_an_eval_folder_that_is_a_link_to_the_training_folder_is_refused_first(tmp_path):
    f = write_folders(str(tmp_path / "mine"))
    link = str(tmp_path / "labeled_link")
    os.symlink(f.train_dir, link)
    with pytest.raises(UserError, match="overlap"):
        build_folder(tmp_path, f, eval_dir=link)


def test_a_separate_folder_reached_through_a_link_is_fine(tmp_path):
    f = write_folders(str(tmp_path / "mine"))
    link = str(tmp_path / "labeled_link")
    os.symlink(f.eval_dir, link)  # a link to the labeled folder itself: still apart
    assert len(build_folder(tmp_path, f, eval_dir=link).test) > 0


def test_an_image_name_that_is_not_utf8_is_read(tmp_path):
    f = write_folders(str(tmp_path / "mine"))
    source = os.path.join(f.train_dir, "batch0", "day1", "img000.png")
    shutil.copy(source, os.path.join(os.fsencode(f.train_dir), b"photo\xff.png"))
    ds = build_folder(tmp_path, f)
    odd = [d.impath for d in ds.train_x if "photo" in d.impath]
    assert len(odd) == 1 and os.path.isfile(odd[0])
    again = build_folder(tmp_path, f)
    assert [d.impath for d in again.train_x] == [d.impath for d in ds.train_x]


# ------------------------------------------------------------------ student exports


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    return write_tiny_export(str(tmp_path_factory.mktemp("export") / "student.pt"), list("abc"))


@pytest.fixture
def image(tmp_path) -> str:
    path = str(tmp_path / "x.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path)
    return path


def _variant(student, tmp_path, change) -> str:
    obj = torch.load(student, weights_only=True)
    change(obj)
    path = str(tmp_path / "variant.pt")
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda o: o["state_dict"]["class_text_features"].fill_(float("nan")),
         "'class_text_features' holds NaN or infinite values"),
        (lambda o: o["state_dict"]["logit_scale"].fill_(float("inf")),
         "'logit_scale' holds NaN or infinite values"),
        (lambda o: o["preprocess"].__setitem__("SIZE", [64, 64]),
         "preprocess SIZE [64, 64] for a model of input resolution 32"),
    ],
)  # fmt: skip
def test_a_damaged_export_is_refused_not_used(student, image, tmp_path, capsys, change, says):
    # NaN weights printed 'a nan%' with exit 0; a SIZE of another resolution was a traceback
    path = _variant(student, tmp_path, change)
    rc = _script("predict").main(["-m", path, image])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "" and "Traceback" not in err
    assert err.startswith(f"Error: {path} is a damaged PromptKD student export") and says in err


def test_an_intact_export_still_classifies(student, image, capsys):
    assert _script("predict").main(["-m", student, image, "--topk", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: ")


def test_export_student_given_an_onnx_file_or_a_bare_export(student, tmp_path, capsys):
    onnx = tmp_path / "student.onnx"
    onnx.write_bytes(b"\x08\x07protobuf")
    export = _script("export_student")
    assert export.main([str(onnx), "--onnx"]) == 1
    err = capsys.readouterr().err
    assert "is already an ONNX model; pass the student.pt" in err and "corrupt" not in err
    assert not (tmp_path / "student.onnx.onnx").exists()
    assert export.main([student]) == 1  # an export without --onnx: not a run folder
    assert "is a file (add --onnx to convert a student export to ONNX)" in capsys.readouterr().err


# ------------------------------------------------------------------ stored teacher views


def _bank_setup(digits_root, tiny_clip_root, tmp_path):
    import train
    from dassl_ext.config import setup_cfg
    from dassl_ext.data.data_manager import build_dataset

    argv = ["--root", str(digits_root), "--seed", "1", "--trainer", "PromptKD",
            "--dataset-config-file", os.path.join(REPO, "configs", "datasets", "digits.yaml"),
            "--config-file", os.path.join(REPO, "configs", "trainers", "PromptKD", "base2new",
                                          "digits.yaml"),
            "--output-dir", str(tmp_path / "run"), "MODEL.BACKBONE.NAME", "tiny-student",
            "TRAINER.PROMPTKD.TEACHER_NAME", "tiny-teacher", "MODEL.CLIP_ROOT", tiny_clip_root,
            "TRAINER.PROMPTKD.TEACHER_CKPT", "unused", "DATASET.NUM_SHOTS", "2",
            "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "TRAINER.PROMPTKD.STORED_VIEWS", "2",
            "TRAINER.PROMPTKD.VIEW_CACHE_DIR", str(tmp_path / "views")]  # fmt: skip
    cfg = setup_cfg(train.parse_args(argv))
    return cfg, build_dataset(cfg).train_x


def _teacher(nan_at: int | None = None):
    def features(views: torch.Tensor) -> torch.Tensor:
        out = views.mean(dim=(2, 3))  # (B, 3)
        if nan_at is not None and len(out) > nan_at:  # not the 1-view probe
            out[nan_at] = float("nan")
        return out

    return lambda: (features, 4.6052, torch.device("cpu"))


def test_a_teacher_giving_nan_features_builds_no_bank(digits_root, tiny_clip_root, tmp_path):
    # a bank of NaN features was stored, and every student run from it stopped at
    # 'The loss is NaN ... lower OPTIM.LR' (which cannot help)
    from trainers.promptkd_views import prepare_bank

    cfg, data = _bank_setup(digits_root, tiny_clip_root, tmp_path)
    with pytest.raises(UserError) as e:
        prepare_bank(cfg, {"teacher": "fake"}, str(tmp_path / "text"), data, 3, _teacher(5))
    message = str(e.value)
    assert "teacher's image features are NaN or infinite for image" in message, message
    assert data[2].impath in message  # view 5 of 2 per image: the third image
    assert "TEACHER_PREC fp32" in message
    assert not any(n.startswith("features-") for _, _, files in os.walk(tmp_path / "views")
                   for n in files)  # fmt: skip


def test_a_bank_row_changed_after_the_build_is_named_when_read(
    digits_root, tiny_clip_root, tmp_path
):
    # same size and header, so the bank still opens as complete: the row read says it
    from trainers.promptkd_views import prepare_bank

    cfg, data = _bank_setup(digits_root, tiny_clip_root, tmp_path)
    bank = prepare_bank(cfg, {"teacher": "fake"}, str(tmp_path / "text"), data, 3, _teacher())
    assert torch.isfinite(bank.features[3]).all()
    path = bank.features.paths[0]
    rows = np.load(path, mmap_mode="r+")
    rows[3, 1, 0] = np.nan
    rows.flush()
    del rows
    bank = prepare_bank(cfg, {"teacher": "fake"}, str(tmp_path / "text"), data, 3, _teacher())
    bank.features[2]  # other rows still read
    with pytest.raises(
        UserError, match=r"features-00000.npy holds NaN or infinite values in row 3"
    ):
        bank.features[3, 1]
    os.remove(path)  # what the sentence says to do: the shard is rebuilt
    bank = prepare_bank(cfg, {"teacher": "fake"}, str(tmp_path / "text"), data, 3, _teacher())
    assert torch.isfinite(bank.features[3]).all()


def test_predict_skips_hidden_files_in_a_folder(student, tmp_path, capsys):
    # a folder copied from macOS holds ._photo.png beside photo.png (AppleDouble, no image):
    # each was 'Skipped: ... is not a readable image' and the exit status 1
    photos = tmp_path / "photos"
    (photos / ".thumbnails").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(photos / "photo.png")
    (photos / "._photo.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / ".thumbnails" / "photo.png")
    assert _script("predict").main(["-m", student, str(photos), "--topk", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{photos / 'photo.png'}: " + out.split(": ", 1)[1].strip()]
    assert err == ""
    hidden = str(photos / "._photo.png")  # named explicitly, it is still tried
    assert _script("predict").main(["-m", student, hidden]) == 1
    assert "is not a readable image" in capsys.readouterr().err


def test_base_classes_in_the_other_unicode_form_are_found(tmp_path):
    f = write_folders(str(tmp_path / "mine"))
    os.rename(os.path.join(f.eval_dir, f.names[3]), os.path.join(f.eval_dir, "caf\u00e9"))
    _rewrite_class_file(f, f.names[:3] + ["caf\u00e9"])
    cfg = folder_cfg(tmp_path, f)
    cfg.DATASET.IMAGE_FOLDER.BASE_CLASSES = (unicodedata.normalize("NFD", "caf\u00e9"), "one")
    ds = DATASET_REGISTRY.get("ImageFolder")(cfg)
    assert ds.classnames[:2] == ["one", "caf\u00e9"]


# ------------------------------------------------------------------ download_data.py


@pytest.mark.parametrize(
    "name, archive", [("dtd", "dtd-r1.0.1.tar.gz"), ("eurosat", "EuroSAT.zip")]
)
def test_download_data_with_a_page_saved_as_the_archive(tmp_path, capsys, name, archive):
    # gdown / a proxy saving an HTML page under the archive's name was a BadZipFile /
    # ReadError traceback
    folder = tmp_path / {"dtd": "dtd", "eurosat": "eurosat"}[name]
    folder.mkdir()
    (folder / archive).write_text("<html>Google Drive - quota exceeded</html>")
    assert _script("download_data").main(["--root", str(tmp_path), name]) == 1
    err = capsys.readouterr().err
    assert f"[{name}] FAILED: {folder / archive} is not a readable archive" in err
    assert "delete it and run again" in err and len(err.strip().splitlines()) == 1


def test_download_data_with_a_root_that_is_a_file(tmp_path, capsys):
    root = tmp_path / "data"
    root.write_text("not a folder")
    assert _script("download_data").main(["--root", str(root), "dtd"]) == 1
    err = capsys.readouterr().err
    assert f"[dtd] FAILED: cannot write under {root}" in err and "choose another --root" in err


# ------------------------------------------------------------------ split files


def _dtd_split(tmp_path, change):
    """DTD written and read once (its split file saved), the split file changed, built again."""
    import json

    from dataset_fixtures import WRITERS, make_cfg

    WRITERS["DescribableTextures"](str(tmp_path))
    DATASET_REGISTRY.get("DescribableTextures")(make_cfg(str(tmp_path), "DescribableTextures"))
    path = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    split = json.loads(path.read_text())
    change(split)
    path.write_text(json.dumps(split))
    cfg = make_cfg(str(tmp_path), "DescribableTextures")
    return lambda: DATASET_REGISTRY.get("DescribableTextures")(cfg)


def _relabel(split, name):
    row = split[name][0]
    other = next(r for r in split["train"] if r[1] != row[1])
    split["test"].append([row[0], other[1], other[2]])


@pytest.mark.parametrize("name", ["test", "train"])
def test_an_image_listed_with_two_labels_is_refused(tmp_path, name):
    # was a warning that the image is listed twice and 'each copy counts': one copy is wrong
    build = _dtd_split(tmp_path, lambda s: _relabel(s, name))
    with pytest.raises(UserError) as e:
        build()
    message = str(e.value)
    assert "is listed in" in message and "so one of them is wrong" in message, message
    assert "(test split)" in message


def test_one_image_spelled_two_ways_is_listed_twice(tmp_path, caplog):
    def respell(split):
        path, label, name = split["test"][0]
        split["test"].append(["./" + path, label, name])

    build = _dtd_split(tmp_path, respell)
    with caplog.at_level("WARNING"):
        build()
    assert "1 image(s) are listed more than once in the test split" in caplog.text


@pytest.mark.parametrize("what", ["onnx name", "a checkpoint", "an earlier export"])
def test_export_student_output_that_is_not_a_student_pt(student, tmp_path, capsys, what):
    # -o student.onnx wrote a torch file under an ONNX name (predict -m then said 'not a
    # readable ONNX model'); -o onto a checkpoint or config replaced it with the export
    run = tmp_path / "run"
    run.mkdir()  # no config.yaml: the output is checked first, the run after it
    if what == "onnx name":
        out = tmp_path / "student.onnx"
    elif what == "a checkpoint":
        out = tmp_path / "model-best.pth.tar"
        torch.save({"state_dict": {}, "epoch": 3}, out)
    else:
        out = tmp_path / "old.pt"
        shutil.copy(student, out)
    before = out.read_bytes() if out.exists() else None
    assert _script("export_student").main([str(run), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    if what == "onnx name":
        assert "names an ONNX file, but -o is the PyTorch export" in err
        assert not out.exists()
    elif what == "a checkpoint":
        assert "already holds a file that is not a student export" in err
        assert out.read_bytes() == before
    else:  # an export may be replaced: the run is what is missing here
        assert "holds no config.yaml" in err and "not a student export" not in err


def test_base_classes_naming_one_class_in_both_unicode_forms_is_refused(tmp_path):
    f = write_folders(str(tmp_path / "mine"))
    os.rename(os.path.join(f.eval_dir, f.names[3]), os.path.join(f.eval_dir, "caf\u00e9"))
    _rewrite_class_file(f, f.names[:3] + ["caf\u00e9"])
    cfg = folder_cfg(tmp_path, f)
    cfg.DATASET.IMAGE_FOLDER.BASE_CLASSES = ("caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9"))
    with pytest.raises(UserError, match="BASE_CLASSES lists 1 class name"):
        DATASET_REGISTRY.get("ImageFolder")(cfg)
