"""Red-team inputs for the data layer: unusual image files, split files with odd labels or
keys, malformed raw annotation files of each benchmark. Each was a traceback, a hang or a
silently wrong dataset before; each is now one sentence (or, where honest, a warning)."""

import json
import logging
import os

import numpy as np
import pytest
from dataset_fixtures import WRITERS, make_cfg, write_image
from PIL import Image

import datasets  # noqa: F401  (registers the readers)
from dassl_ext.data import DATASET_REGISTRY, DatasetWrapper, Datum, read_image
from dassl_ext.data.images import check_images
from dassl_ext.data.tensor_transforms import read_image_tensor
from dassl_ext.errors import UserError

DTD_SPLIT = "dtd/split_zhou_DescribableTextures.json"


def build(root, name, *opts):
    return DATASET_REGISTRY.get(name)(make_cfg(root, name, *opts))


# ------------------------------------------------------------------ image files


def test_decompression_bomb_is_one_sentence_in_the_scan_and_both_backends(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above 2000 pixels
    bomb = str(tmp_path / "bomb.png")
    Image.new("L", (100, 100)).save(bomb)
    [(path, why)] = check_images([bomb], "header")
    assert path == bomb and why.startswith("is too large to decode (Image size (10000 pixels)")
    with pytest.raises(Image.DecompressionBombError):  # what scripts/predict.py words itself
        read_image(bomb)
    for reader in (read_image, read_image_tensor):  # torchvision would decode it silently
        data = DatasetWrapper([Datum(bomb, 0, 0, "a")], lambda img: img, reader)
        with pytest.raises(UserError) as e:  # the training / evaluation loaders' item
            data[0]
        assert str(e.value).startswith(f"Image {bomb} is too large to decode (Image size")
        assert str(e.value).endswith("shrink it, or remove it from the split file.")


def test_animated_gif_is_its_first_frame_in_both_backends(tmp_path):
    rng = np.random.default_rng(0)
    frames = [
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).convert("P")
        for _ in range(3)
    ]
    path = str(tmp_path / "anim.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:])
    tensor = read_image_tensor(path)  # was (3 frames, 3, 8, 8): a 4-D "image"
    assert tuple(tensor.shape) == (3, 8, 8)
    assert np.array_equal(tensor.permute(1, 2, 0).numpy(), np.asarray(read_image(path)))


# ------------------------------------------------------------------ split files


def _dtd_split(tmp_path, mutate=None, raw: bytes | None = None):
    WRITERS["DescribableTextures"](str(tmp_path))
    build(tmp_path, "DescribableTextures")  # writes the split file
    path = tmp_path / DTD_SPLIT
    if raw is not None:
        path.write_bytes(raw)
    else:
        split = json.loads(path.read_text())
        mutate(split)
        path.write_text(json.dumps(split))
    return path


def _label_row0(value):
    def mutate(split):
        assert split["train"][0][1] == 0
        split["train"][0][1] = value

    return mutate


@pytest.mark.parametrize("label", [0.4, False, "x", 1e300])
def test_a_label_that_is_not_a_whole_number_is_refused(tmp_path, label, monkeypatch):
    # 0.4 and False were read as class 0 (int() truncates); 1e300 built range(10**300).
    import dassl_ext.data.base_dataset as base

    def small_range(*args):
        assert max(args) < 10**6, "work proportional to the largest label"
        return range(*args)

    monkeypatch.setattr(base, "range", small_range, raising=False)
    path = _dtd_split(tmp_path, _label_row0(label))
    with pytest.raises(UserError) as e:
        build(tmp_path, "DescribableTextures")
    message = str(e.value)
    if label == 1e300:  # a whole number: the gap is named, in one short sentence
        assert "class label 3 has no training images" in message
        assert "labels must run 0..100000... (301 digits)" in message
    else:
        assert message.startswith(f"{path} is not a split file: row 0 of 'train' is [")
        assert message.endswith("with an integer label from 0.")


def test_an_infinite_label_is_one_sentence(tmp_path):
    raw = (
        b'{"train": [["banded/banded_000.jpg", 0, "a"], ["banded/banded_001.jpg", Infinity, "b"]]}'
    )
    _dtd_split(tmp_path, raw=raw)  # was: OverflowError traceback
    with pytest.raises(UserError, match="row 1 of 'train' is .*inf.*integer label from 0"):
        build(tmp_path, "DescribableTextures")


def test_a_negative_label_names_the_row(tmp_path):
    path = _dtd_split(tmp_path, _label_row0(-1))
    with pytest.raises(UserError) as e:
        build(tmp_path, "DescribableTextures")
    assert str(e.value) == (
        f"{path}: row 0 of 'train' has label -1; labels run from 0 (fix the row or regenerate "
        "the split file)."
    )


def test_duplicate_json_key_and_deep_nesting_are_refused(tmp_path):
    path = _dtd_split(tmp_path, raw=b'{"train": [["banded/banded_000.jpg", 0, "a"]], "train": []}')
    with pytest.raises(UserError) as e:  # json kept the second, empty "train" silently
        build(tmp_path, "DescribableTextures")
    assert str(e.value) == (
        f"{path} gives the key 'train' twice in one object (JSON keeps only the last); keep one "
        "of them."
    )
    path.write_bytes(b'{"train": ' + b"[" * 100000 + b"]" * 100000 + b"}")
    with pytest.raises(UserError, match="nested too deep to read"):  # was RecursionError
        build(tmp_path, "DescribableTextures")


def test_duplicate_rows_and_indistinct_class_names_warn(tmp_path, caplog):
    def mutate(split):
        split["test"].append(split["test"][0])  # counted twice in the accuracy
        for rows in split.values():
            for row in rows:
                if row[2] == "banded":
                    row[2] = "Blotchy"  # label 0 'Blotchy', label 1 'blotchy'

    _dtd_split(tmp_path, mutate)
    with caplog.at_level(logging.WARNING):
        ds = build(tmp_path, "DescribableTextures")
    assert len(ds.test) == 10
    assert "1 image(s) are listed more than once in the test split of" in caplog.text
    assert "labels 0 'Blotchy' and 1 'blotchy'; their text prompts are the same" in caplog.text


# ------------------------------------------------------------------ raw annotation files


def _append(path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


RAW_LINES = [
    ("OxfordPets", "oxford_pets/annotations/trainval.txt", "Bengal_99\n", "line 16 is 'Bengal_99'"),
    ("OxfordPets", "oxford_pets/annotations/test.txt", "Bengal_5 0 1 1\n", "line 7 is 'Bengal_5 0"),
    ("UCF101", "ucf101/ucfTrainTestlist/classInd.txt", "4 Foo Bar\n", "line 4 is '4 Foo Bar'"),
    ("UCF101", "ucf101/ucfTrainTestlist/trainlist01.txt", "v_x.avi 1\n", "line 16 is 'v_x.avi"),
    ("UCF101", "ucf101/ucfTrainTestlist/trainlist01.txt", "No/v.avi 1\n", "uses class 'No'"),
    ("SUN397", "sun397/Training_01.txt", "abbey.jpg\n", "line 16 is 'abbey.jpg'"),
    ("FGVCAircraft", "fgvc_aircraft/images_variant_train.txt", "1000001\t707-320\n", "line 10"),
    ("FGVCAircraft", "fgvc_aircraft/variants.txt", "A300B4\n", "lists the variant 'A300B4' twice"),
    ("ImageNet", "imagenet/classnames.txt", "n01440764\n", "line 4 is 'n01440764'"),
    ("ImageNet", "imagenet/classnames.txt", "n01440764 cat\n", "lists the wnid 'n01440764' twice"),
]


@pytest.mark.parametrize("name,rel,line,expected", RAW_LINES)
def test_a_malformed_annotation_line_names_the_file_and_line(tmp_path, name, rel, line, expected):
    WRITERS[name](str(tmp_path))
    _append(tmp_path / rel, line)
    with pytest.raises(UserError) as e:
        build(tmp_path, name)
    assert str(e.value).startswith(str(tmp_path / rel))
    assert expected in str(e.value)


def test_classnames_txt_with_tabs_or_two_spaces_gives_clean_names(tmp_path):
    WRITERS["ImageNet"](str(tmp_path))
    (tmp_path / "imagenet" / "classnames.txt").write_text(
        "\ufeffn01440764\ttench\nn01443537  goldfish\nn01484850 great white shark\n"
    )  # was: a traceback (tab), ' goldfish' (two spaces), a BOM made the wnid unknown
    ds = build(tmp_path, "ImageNet")
    assert ds.classnames == ["tench", "goldfish", "great white shark"]


def test_imagenetv2_folders_must_match_classnames_txt(tmp_path):
    WRITERS["ImageNetV2"](str(tmp_path))
    write_image(
        str(tmp_path / "imagenetv2" / "imagenetv2-matched-frequency-format-val" / "3" / "a.jpg")
    )
    with pytest.raises(UserError, match=r"folder .*/3 is not a class: folders are named 0..2"):
        build(tmp_path, "ImageNetV2")  # its images were left out silently


@pytest.mark.parametrize("name,rel", [
    ("StanfordCars", "stanford_cars/devkit/cars_meta.mat"),
    ("OxfordFlowers", "oxford_flowers/imagelabels.mat"),
])  # fmt: skip
def test_corrupt_or_foreign_mat_files_are_one_sentence(tmp_path, name, rel):
    from scipy.io import savemat

    WRITERS[name](str(tmp_path))
    (tmp_path / rel).write_bytes(b"not a mat file")
    with pytest.raises(UserError, match=f"{tmp_path / rel} is not a MATLAB file scipy can read"):
        build(tmp_path, name)
    savemat(str(tmp_path / rel), {"other": np.zeros(2)})
    with pytest.raises(UserError, match=r"holds no '\w+' \(it holds other\)"):
        build(tmp_path, name)  # was: "use class 'labels', which their class list ..."


@pytest.mark.parametrize("content", ["{bad", "[1, 2]", '{"1": 5, "2": "b", "3": "c"}'])
def test_flowers_cat_to_name_json_must_map_ids_to_names(tmp_path, content):
    WRITERS["OxfordFlowers"](str(tmp_path))
    path = tmp_path / "oxford_flowers" / "cat_to_name.json"
    path.write_text(content)  # was: JSONDecodeError / TypeError, or a class named 5
    with pytest.raises(UserError, match="is not a JSON object of class names"):
        build(tmp_path, "OxfordFlowers")
    assert os.path.isfile(path)


# ------------------------------------------------------------------ CLIP weights


def test_clip_weights_that_are_a_folder_or_an_empty_name_are_one_sentence(tmp_path):
    from dassl_ext.modeling.loading import load_clip

    (tmp_path / "tiny-teacher.pt").mkdir()  # was: IsADirectoryError writing the tiny model
    (tmp_path / "ViT-B-16.pt").mkdir()  # was: "not found in <that folder>"
    for name in ("tiny-teacher", "ViT-B/16"):
        with pytest.raises(UserError) as e:
            load_clip(name, str(tmp_path), download=False)
        path = tmp_path / ("tiny-teacher.pt" if name == "tiny-teacher" else "ViT-B-16.pt")
        assert str(e.value).startswith(f"CLIP weights {path} is a folder, not a weights file;")
    with pytest.raises(UserError, match=r"The CLIP model name is empty \(MODEL.BACKBONE.NAME"):
        load_clip("", str(tmp_path), download=False)


@pytest.mark.parametrize("backend", ["tensor"])  # pil: the DatasetWrapper test above
def test_a_bomb_found_at_evaluation_stops_train_py_with_one_line(
    backend, digits_root, tiny_clip_root, tmp_path, monkeypatch, capsys
):
    """DATASET.CHECK_IMAGES off: the image is met by the loader, which says one sentence."""
    import shutil

    from test_trainer_all import ZS_CONFIG, argv

    import train

    shutil.copytree(digits_root / "digits", tmp_path / "data" / "digits")
    split = json.loads((tmp_path / "data" / "digits" / "split_zhou_Digits.json").read_text())
    bomb = tmp_path / "data" / "digits" / "images" / split["test"][-1][0]
    Image.new("L", (100, 100)).save(bomb, format="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 10,000 pixels: over 2 x 1000
    opts = ("DATASET.CHECK_IMAGES", "off", "INPUT.BACKEND", backend, "DATALOADER.NUM_WORKERS", "0")
    args = argv("ZeroshotCLIP", tmp_path / "out", tmp_path / "data", tiny_clip_root, *opts,
                config=ZS_CONFIG, flags=("--eval-only",))  # fmt: skip
    assert train.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"Error: Image {bomb} is too large to decode (Image size (10000 pix")
    assert "Traceback" not in err and not (tmp_path / "out" / "results.json").exists()


def test_clip_weights_holding_nan_are_refused_when_loaded(tiny_clip_root, tmp_path):
    import torch

    from dassl_ext.modeling.loading import load_clip

    sd = torch.load(os.path.join(tiny_clip_root, "tiny-student.pt"), weights_only=True)
    sd["ln_final.weight"] = torch.full_like(sd["ln_final.weight"], float("nan"))
    path = str(tmp_path / "nan.pt")
    torch.save(sd, path)  # was: loaded; a NaN loss ("lower OPTIM.LR") or NaN logits later
    with pytest.raises(UserError) as e:
        load_clip(path)
    assert str(e.value).startswith(
        f"CLIP weights '{path}' hold NaN or infinite values (tensor 'ln_final.weight');"
    )
