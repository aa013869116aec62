"""Data that cannot lie: content-keyed few-shot caches, data checked before training, split
rows kept inside the dataset, high-bit-depth images read with their full range."""

import json
import logging
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from dataset_fixtures import WRITERS, make_cfg, write_image
from PIL import Image

import datasets  # noqa: F401  (registers the readers)
from dassl_ext.config import apply_config_extensions, validate_config
from dassl_ext.data import DATASET_REGISTRY, read_image
from dassl_ext.data.images import check_images
from dassl_ext.data.tensor_transforms import read_image_tensor
from dassl_ext.errors import UserError

DTD_SPLIT = "dtd/split_zhou_DescribableTextures.json"


def build(root, name, *opts):
    return DATASET_REGISTRY.get(name)(make_cfg(root, name, *opts))


def dtd(tmp_path, *opts):
    return build(tmp_path, "DescribableTextures", *opts)


# ------------------------------------------------------------------ few-shot cache


def test_fewshot_cache_is_redrawn_when_the_split_file_changes(tmp_path, caplog):
    WRITERS["DescribableTextures"](str(tmp_path))
    first = dtd(tmp_path, "DATASET.NUM_SHOTS", 2, "SEED", 1)
    cache = tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_1.json"
    key = json.loads(cache.read_text())["derived_from"]
    assert key["num_shots"] == 2 and key["seed"] == 1 and len(key["split_sha256"]) == 64

    # The split file changes: the images drawn for training become test images.
    split_path = tmp_path / DTD_SPLIT
    split = json.loads(split_path.read_text())
    drawn = {os.path.relpath(d.impath, first.image_dir) for d in first.train_x}
    moved = [row for row in split["train"] if row[0] in drawn]
    split["train"] = [row for row in split["train"] if row[0] not in drawn]
    split["test"] += moved
    split_path.write_text(json.dumps(split))

    with caplog.at_level(logging.INFO):
        second = dtd(tmp_path, "DATASET.NUM_SHOTS", 2, "SEED", 1)
    test_paths = {d.impath for d in second.test}
    assert not test_paths & {d.impath for d in second.train_x}  # no test image is trained on
    assert "drawn from other data or by another version (split_sha256 " in caplog.text
    assert json.loads(cache.read_text())["derived_from"] != key  # rewritten with the new key


def test_fewshot_cache_from_an_older_version_or_without_key_is_redrawn(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    first = dtd(tmp_path, "DATASET.NUM_SHOTS", 2, "SEED", 1)
    cache = tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_1.json"
    obj = json.loads(cache.read_text())
    # A cache written without a key (an older version) that names a non-draw: not used.
    obj.pop("derived_from")
    obj["train"] = obj["train"][:1]
    cache.write_text(json.dumps(obj))
    assert dtd(tmp_path, "DATASET.NUM_SHOTS", 2, "SEED", 1).train_x == first.train_x
    # A keyed cache naming images that are not in the source lists: not used either.
    obj = json.loads(cache.read_text())
    obj["train"][0][0] = obj["val"][0][0]
    cache.write_text(json.dumps(obj))
    assert dtd(tmp_path, "DATASET.NUM_SHOTS", 2, "SEED", 1).train_x == first.train_x


@pytest.mark.parametrize("content", ['{"train": [["a.jpg", 0', "", "\xff\xfe", "[1, 2]"])
def test_corrupt_fewshot_cache_is_redrawn_with_a_warning(tmp_path, caplog, content):
    WRITERS["DescribableTextures"](str(tmp_path))
    first = dtd(tmp_path, "DATASET.NUM_SHOTS", 2, "SEED", 1)
    cache = tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_1.json"
    cache.write_bytes(content.encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        again = dtd(tmp_path, "DATASET.NUM_SHOTS", 2, "SEED", 1)
    assert again.train_x == first.train_x
    assert f"Few-shot split {cache} cannot be used (" in caplog.text
    assert "derived_from" in json.loads(cache.read_text())


def test_no_fixed_seed_writes_no_fewshot_cache(tmp_path, caplog):
    WRITERS["DescribableTextures"](str(tmp_path))
    with caplog.at_level(logging.INFO):
        draws = {tuple(dtd(tmp_path, "DATASET.NUM_SHOTS", 2, "SEED", -1).train_x) for _ in range(6)}
    assert "SEED -1 (no fixed seed): few-shot split drawn with seed" in caplog.text
    assert not (tmp_path / "dtd" / "split_fewshot").exists()
    assert len(draws) > 1  # each run draws anew, as "no fixed seed" says


def test_num_shots_above_a_class_size_warns_naming_the_classes(tmp_path, caplog):
    WRITERS["DescribableTextures"](str(tmp_path))
    split_path = tmp_path / DTD_SPLIT
    dtd(tmp_path)  # writes the split file: 5 train images per class
    split = json.loads(split_path.read_text())
    split["train"] = [r for r in split["train"] if r[2] != "blotchy"] + [
        r for r in split["train"] if r[2] == "blotchy"
    ][:3]
    split_path.write_text(json.dumps(split))
    with caplog.at_level(logging.WARNING):
        ds = dtd(tmp_path, "DATASET.NUM_SHOTS", 4, "SEED", 1)
    assert len(ds.train_x) == 4 + 3 + 4
    assert (
        "DATASET.NUM_SHOTS is 4, but 1 of 3 classes have fewer training images and use all "
        "they have: 'blotchy' (3)." in caplog.text
    )


# ------------------------------------------------------------------ empty splits


def _one_class_dtd(tmp_path, test_rows: bool = True):
    folder = tmp_path / "dtd" / "images" / "banded"
    rows = [[f"banded/{i}.jpg", 0, "banded"] for i in range(4)]
    for i in range(4):
        write_image(str(folder / f"{i}.jpg"), i)
    split = {"train": rows[:2], "val": rows[2:3], "test": rows[3:] if test_rows else []}
    (tmp_path / DTD_SPLIT).write_text(json.dumps(split))


def test_subsample_new_of_one_class_is_refused_when_built(tmp_path):
    _one_class_dtd(tmp_path)
    with pytest.raises(UserError, match="SUBSAMPLE_CLASSES new selects no classes"):
        dtd(tmp_path, "DATASET.SUBSAMPLE_CLASSES", "new")
    with pytest.raises(UserError, match="'new' split has no classes"):
        dtd(tmp_path, "DATASET.EVAL_SPLITS", "base_new")


def test_empty_test_list_is_refused_when_built(tmp_path):
    _one_class_dtd(tmp_path, test_rows=False)
    with pytest.raises(UserError) as e:
        dtd(tmp_path)
    assert str(e.value) == (
        f"DescribableTextures: the 'test' split has no images: {tmp_path / DTD_SPLIT} lists "
        "no test images; add test images to the split file (or regenerate it)."
    )


def test_empty_val_under_best_val_and_base_split_without_base_new(tmp_path):
    _one_class_dtd(tmp_path)
    split = json.loads((tmp_path / DTD_SPLIT).read_text())
    split["val"] = []
    (tmp_path / DTD_SPLIT).write_text(json.dumps(split))
    opts = ("DATASET.PROTOCOL", "clean", "TEST.FINAL_MODEL", "best_val")
    with pytest.raises(UserError, match="no validation split to select a checkpoint on"):
        dtd(tmp_path, *opts)
    cfg = make_cfg(tmp_path, "DescribableTextures", "TEST.SPLIT", "new")
    apply_config_extensions(cfg)  # the trainers' sections, which their registered rules read
    with pytest.raises(UserError, match="TEST.SPLIT is 'new', which only DATASET.EVAL_SPLITS"):
        validate_config(cfg)


# ------------------------------------------------------------------ paths in split files


@pytest.mark.parametrize("rel", ["../../../etc/hostname", "/etc/hostname", "banded/../../x.jpg"])
def test_split_row_outside_the_image_folder_is_refused(tmp_path, rel):
    _one_class_dtd(tmp_path)
    split = json.loads((tmp_path / DTD_SPLIT).read_text())
    split["test"].append([rel, 0, "banded"])
    (tmp_path / DTD_SPLIT).write_text(json.dumps(split))
    with pytest.raises(UserError) as e:
        dtd(tmp_path)
    assert str(e.value).startswith(
        f"{tmp_path / DTD_SPLIT}: row 1 of 'test' names image '{rel}', which is outside the "
        "image folder"
    )


def test_annotation_outside_the_dataset_is_refused_but_symlinks_are_followed(tmp_path):
    WRITERS["OxfordPets"](str(tmp_path))
    outside = write_image(str(tmp_path / "elsewhere" / "Bengal_9.jpg"), 5)
    images = tmp_path / "oxford_pets" / "images"
    os.symlink(outside, images / "Bengal_8.jpg")  # a link inside the folder is allowed
    with open(tmp_path / "oxford_pets" / "annotations" / "test.txt", "a") as f:
        f.write("Bengal_8 3 1 3\n")
    assert len(build(tmp_path, "OxfordPets").test) == 7
    (tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json").unlink()
    with open(tmp_path / "oxford_pets" / "annotations" / "test.txt", "a") as f:
        f.write("../../elsewhere/Bengal_9 3 1 3\n")
    with pytest.raises(UserError, match="name image .*Bengal_9.jpg, which is outside that folder"):
        build(tmp_path, "OxfordPets")


# ------------------------------------------------------------------ high bit depth


def _png16(path, arr: np.ndarray) -> str:
    """A 16-bit PNG written by hand (PIL writes 16-bit grey only): arr is (H, W, C) uint16."""
    h, w, c = arr.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)))
        f.write(chunk(b"IEND", b""))
    return str(path)


def _both_backends(path) -> tuple[np.ndarray, np.ndarray]:
    pil = np.asarray(read_image(str(path)))
    tensor = read_image_tensor(str(path)).permute(1, 2, 0).numpy()
    return pil, tensor


GRADIENT16 = (np.arange(4 * 1024).reshape(4, 1024) * 16).astype(np.uint16)  # 0..65520


def test_16bit_grey_png_keeps_its_grey_levels_in_both_backends(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(GRADIENT16).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # what PIL's convert("RGB") clips to 0 / 255
    pil, tensor = _both_backends(path)
    assert len(np.unique(pil)) > 200 and len(np.unique(tensor)) > 200
    assert np.abs(pil.astype(int) - tensor.astype(int)).max() <= 1
    assert np.abs(pil[..., 0].astype(int) - (GRADIENT16 / 257)).max() <= 1


def test_16bit_rgb_and_grey_alpha_pngs_agree(tmp_path):
    rgb = np.stack([GRADIENT16, GRADIENT16[:, ::-1], 65535 - GRADIENT16], -1)
    for arr in (rgb, np.stack([GRADIENT16, GRADIENT16], -1)):
        pil, tensor = _both_backends(_png16(tmp_path / "x.png", arr))
        assert len(np.unique(pil[..., 0])) > 200
        assert np.abs(pil.astype(int) - tensor.astype(int)).max() <= 1


@pytest.mark.parametrize("mode", ["I", "F", "F_wide"])
def test_32bit_int_and_float_images_use_their_range(tmp_path, mode):
    ramp = np.arange(4 * 1024).reshape(4, 1024)
    values = {
        "I": (ramp * 16).astype(np.int32),  # 16-bit values in a 32-bit image: >> 8
        "F": (ramp / ramp.max()).astype(np.float32),  # 0..1: * 255
        "F_wide": (ramp * 3.5 - 1000).astype(np.float32),  # other range: stretched
    }[mode]
    path = tmp_path / "x.tif"  # TIFF: torchvision cannot decode it, the PIL reader does
    Image.fromarray(values).save(path)
    pil, tensor = _both_backends(path)
    assert len(np.unique(pil)) == 256 and pil.min() == 0 and pil.max() == 255
    assert np.array_equal(pil, tensor)


@pytest.mark.parametrize("mode", ["P", "LA", "RGBA", "1", "CMYK", "L"])
def test_other_modes_read_alike_in_both_backends(tmp_path, mode):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path, **({"transparency": 3} if mode == "P" else {}))
    pil, tensor = _both_backends(path)
    assert pil.shape == (16, 16, 3) and np.array_equal(pil, tensor)


# ------------------------------------------------------------------ images scanned up front


def test_unusable_images_are_found_when_the_dataset_is_built(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    ds = dtd(tmp_path)
    empty, text = ds.test[0].impath, ds.train_x[0].impath
    open(empty, "wb").close()
    with open(text, "w") as f:
        f.write("<html>not an image</html>")
    with pytest.raises(UserError) as e:
        dtd(tmp_path)
    msg = str(e.value)
    assert msg.startswith("DescribableTextures: 2 of 24 images cannot be used: ")
    assert f"{empty} is empty (0 bytes)" in msg and f"{text} is not a readable image" in msg
    assert msg.endswith("(DATASET.CHECK_IMAGES off skips this check).")
    assert len(dtd(tmp_path, "DATASET.CHECK_IMAGES", "exists").test) == 9
    assert len(dtd(tmp_path, "DATASET.CHECK_IMAGES", "off").test) == 9
    with pytest.raises(UserError, match="DATASET.CHECK_IMAGES is 'full'; use one of"):
        dtd(tmp_path, "DATASET.CHECK_IMAGES", "full")


def test_check_images_lists_missing_files_and_folders(tmp_path):
    good = write_image(str(tmp_path / "a.png"))
    (tmp_path / "d.png").mkdir()
    found = check_images([good, str(tmp_path / "b.png"), str(tmp_path / "d.png")], "header", 2)
    assert found == [
        (str(tmp_path / "b.png"), "does not exist"),
        (str(tmp_path / "d.png"), "is a folder"),
    ]
    assert check_images([str(tmp_path / "d.png")], "exists") == [
        (str(tmp_path / "d.png"), "does not exist")
    ]
    assert torch.equal(read_image_tensor(good), read_image_tensor(good))


# ------------------------------------------------------------------ split files that disagree


def test_split_file_naming_a_label_two_ways_is_refused(tmp_path):
    _one_class_dtd(tmp_path)
    split = json.loads((tmp_path / DTD_SPLIT).read_text())
    split["test"][0][2] = "zigzagged"
    (tmp_path / DTD_SPLIT).write_text(json.dumps(split))
    with pytest.raises(UserError, match="label 0 is class 'banded' in the train split of .* but "
                       "'zigzagged' in its test split"):  # fmt: skip
        dtd(tmp_path)


def test_train_images_in_the_test_split_warn_and_a_bom_is_read(tmp_path, caplog):
    _one_class_dtd(tmp_path)
    split = json.loads((tmp_path / DTD_SPLIT).read_text())
    split["test"].append(split["train"][0])
    (tmp_path / DTD_SPLIT).write_bytes(b"\xef\xbb\xbf" + json.dumps(split).encode())
    with caplog.at_level(logging.WARNING):
        dtd(tmp_path)
    assert "1 image(s) of" in caplog.text and "in both the train and the test split" in caplog.text
