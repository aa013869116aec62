"""Tiny copies of every benchmark in its exact on-disk layout, for the dataset tests.

Each `write_<Name>(root)` writes the raw layout (images + the annotation files the
reader falls back to) under `root` and returns what reading it must give:
class names in label order and the number of images per split.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class Expected:
    classnames: list[str]
    counts: dict[str, int]  # train / val / test sizes of the raw split
    download_name: str = ""


def write_image(path: str, seed: int = 0) -> str:
    """A 16x16 RGB image (JPEG or PNG by extension) with colours derived from `seed`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
        path, format="PNG" if path.endswith(".png") else "JPEG"
    )
    return path


def _lines(path: str, lines: list[str]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _class_folders(image_dir: str, folders: list[str], n: int = 10, ext: str = ".jpg") -> None:
    for c, folder in enumerate(folders):
        for i in range(n):
            write_image(os.path.join(image_dir, folder, f"{folder}_{i:03d}{ext}"), c * 100 + i)


# 10 images per class -> 50/20/30 gives 5/2/3.
def _split_503020(n_classes: int) -> dict[str, int]:
    return {"train": 5 * n_classes, "val": 2 * n_classes, "test": 3 * n_classes}


def write_OxfordPets(root: str) -> Expected:
    d = os.path.join(root, "oxford_pets")
    breeds = ["Abyssinian", "american_bulldog", "Bengal"]
    trainval, test = [], []
    for y, breed in enumerate(breeds):
        for i in range(7):  # 5 trainval (4 train + 1 val) and 2 test per breed
            name = f"{breed}_{i + 1}"
            write_image(os.path.join(d, "images", name + ".jpg"), y * 10 + i)
            (trainval if i < 5 else test).append(f"{name} {y + 1} 1 {y + 1}")
    _lines(os.path.join(d, "annotations", "trainval.txt"), trainval)
    _lines(os.path.join(d, "annotations", "test.txt"), test)
    names = ["abyssinian", "american_bulldog", "bengal"]
    return Expected(names, {"train": 12, "val": 3, "test": 6}, "oxford_pets")


def write_Caltech101(root: str) -> Expected:
    image_dir = os.path.join(root, "caltech-101", "101_ObjectCategories")
    folders = ["BACKGROUND_Google", "Faces", "Faces_easy", "Leopards", "accordion", "airplanes"]
    _class_folders(image_dir, folders)
    # Sorted, ignoring background and Faces_easy: Faces, Leopards, accordion, airplanes.
    return Expected(["face", "leopard", "accordion", "airplane"], _split_503020(4), "caltech101")


def write_DescribableTextures(root: str) -> Expected:
    _class_folders(os.path.join(root, "dtd", "images"), ["braided", "banded", "blotchy"])
    return Expected(["banded", "blotchy", "braided"], _split_503020(3), "dtd")


def write_Food101(root: str) -> Expected:
    _class_folders(os.path.join(root, "food-101", "images"), ["baklava", "apple_pie"])
    return Expected(["apple_pie", "baklava"], _split_503020(2), "food101")


def write_EuroSAT(root: str) -> Expected:
    _class_folders(os.path.join(root, "eurosat", "2750"), ["SeaLake", "AnnualCrop", "Forest"])
    return Expected(["Annual Crop Land", "Forest", "Sea or Lake"], _split_503020(3), "eurosat")


def write_OxfordFlowers(root: str) -> Expected:
    from scipy.io import savemat

    d = os.path.join(root, "oxford_flowers")
    labels = [2, 1, 3] * 10  # interleaved, as the real file; label 2 appears first
    for i in range(len(labels)):
        write_image(os.path.join(d, "jpg", f"image_{i + 1:05d}.jpg"), i)
    savemat(os.path.join(d, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    names = {"1": "pink primrose", "2": "hard-leaved pocket orchid", "3": "canterbury bells"}
    with open(os.path.join(d, "cat_to_name.json"), "w") as f:
        json.dump(names, f)
    return Expected([names["1"], names["2"], names["3"]], _split_503020(3), "oxford_flowers")


def _cars_annos(path: str, rows: list[tuple[str, int]]) -> None:
    from scipy.io import savemat

    annos = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
    for i, (fname, label) in enumerate(rows):
        annos[0, i] = (np.array([fname]), np.array([[label]], dtype=np.uint8))
    savemat(path, {"annotations": annos})


def write_StanfordCars(root: str) -> Expected:
    from scipy.io import savemat

    d = os.path.join(root, "stanford_cars")
    models = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Tesla Model S Sedan 2012"]
    train_rows, test_rows = [], []
    for y in range(3):
        for i in range(5):
            fname = f"{y * 5 + i + 1:05d}.jpg"
            write_image(os.path.join(d, "cars_train", fname), y * 10 + i)
            train_rows.append((fname, y + 1))
        for i in range(2):
            fname = f"{y * 2 + i + 1:05d}.jpg"
            write_image(os.path.join(d, "cars_test", fname), 50 + y * 10 + i)
            test_rows.append((fname, y + 1))
    os.makedirs(os.path.join(d, "devkit"))
    meta = np.empty((1, 3), dtype=object)
    for y, m in enumerate(models):
        meta[0, y] = np.array([m])
    savemat(os.path.join(d, "devkit", "cars_meta.mat"), {"class_names": meta})
    _cars_annos(os.path.join(d, "devkit", "cars_train_annos.mat"), train_rows)
    _cars_annos(os.path.join(d, "cars_test_annos_withlabels.mat"), test_rows)
    names = ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Tesla Model S Sedan"]
    return Expected(names, {"train": 12, "val": 3, "test": 6}, "stanford_cars")


def write_SUN397(root: str) -> Expected:
    d = os.path.join(root, "sun397")
    classes = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"]
    train, test = [], []
    for y, c in enumerate(classes):
        for i in range(7):
            rel = f"{c}/sun_{y}{i}.jpg"
            write_image(os.path.join(d, "SUN397", rel[1:]), y * 10 + i)
            (train if i < 5 else test).append(rel)
    _lines(os.path.join(d, "ClassName.txt"), classes)
    _lines(os.path.join(d, "Training_01.txt"), train)
    _lines(os.path.join(d, "Testing_01.txt"), test)
    names = ["abbey", "outdoor apartment_building", "shop bakery"]
    return Expected(names, {"train": 12, "val": 3, "test": 6}, "sun397")


def write_UCF101(root: str) -> Expected:
    d = os.path.join(root, "ucf101")
    actions = ["ApplyEyeMakeup", "BabyCrawling", "YoYo"]
    renamed = ["Apply_Eye_Makeup", "Baby_Crawling", "Yo_Yo"]
    train, test = [], []
    for y, (action, folder) in enumerate(zip(actions, renamed)):
        for i in range(7):
            video = f"v_{action}_g{i + 1:02d}_c01"
            write_image(os.path.join(d, "UCF-101-midframes", folder, video + ".jpg"), y * 10 + i)
            if i < 5:
                train.append(f"{action}/{video}.avi {y + 1}")
            else:
                test.append(f"{action}/{video}.avi")
    lists = os.path.join(d, "ucfTrainTestlist")
    _lines(os.path.join(lists, "classInd.txt"), [f"{y + 1} {a}" for y, a in enumerate(actions)])
    _lines(os.path.join(lists, "trainlist01.txt"), train)
    _lines(os.path.join(lists, "testlist01.txt"), test)
    return Expected(renamed, {"train": 12, "val": 3, "test": 6}, "ucf101")


def write_FGVCAircraft(root: str) -> Expected:
    d = os.path.join(root, "fgvc_aircraft")
    variants = ["707-320", "A300B4", "F-16A/B"]  # file order defines the label
    _lines(os.path.join(d, "variants.txt"), variants)
    n = 0
    for split, per_class in (("train", 3), ("val", 2), ("test", 2)):
        rows = []
        for v in variants:
            for _ in range(per_class):
                n += 1
                imid = f"{1000000 + n:07d}"
                write_image(os.path.join(d, "images", imid + ".jpg"), n)
                rows.append(f"{imid} {v}")
        _lines(os.path.join(d, f"images_variant_{split}.txt"), rows)
    return Expected(variants, {"train": 9, "val": 6, "test": 6}, "fgvc_aircraft")


WNIDS = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}


def _classnames_txt(d: str) -> None:
    _lines(os.path.join(d, "classnames.txt"), [f"{k} {v}" for k, v in WNIDS.items()])


def write_ImageNet(root: str) -> Expected:
    d = os.path.join(root, "imagenet")
    _classnames_txt(d)
    for split, n in (("train", 4), ("val", 2)):
        _class_folders(os.path.join(d, "images", split), list(WNIDS), n, ".JPEG")
    return Expected(list(WNIDS.values()), {"train": 12, "val": 0, "test": 6}, "")


def write_ImageNetV2(root: str) -> Expected:
    d = os.path.join(root, "imagenetv2")
    _classnames_txt(d)
    _class_folders(os.path.join(d, "imagenetv2-matched-frequency-format-val"), ["0", "1", "2"], 3)
    return Expected(list(WNIDS.values()), {"train": 9, "val": 0, "test": 9}, "imagenetv2")


def write_ImageNetSketch(root: str) -> Expected:
    d = os.path.join(root, "imagenet-sketch")
    _classnames_txt(d)
    _class_folders(os.path.join(d, "images"), list(WNIDS), 3, ".JPEG")
    return Expected(list(WNIDS.values()), {"train": 9, "val": 0, "test": 9}, "imagenet_sketch")


def _write_subset(root: str, folder: str, image_dir: str, download_name: str) -> Expected:
    # A 2-class subset of the classes in classnames.txt, plus the README the reader skips.
    d = os.path.join(root, folder)
    _classnames_txt(d)
    _class_folders(os.path.join(d, image_dir), ["n01484850", "n01440764"], 3)
    _lines(os.path.join(d, image_dir, "README.txt"), ["not a class"])
    counts = {"train": 6, "val": 0, "test": 6}
    return Expected(["tench", "great white shark"], counts, download_name)


def write_ImageNetA(root: str) -> Expected:
    return _write_subset(root, "imagenet-adversarial", "imagenet-a", "imagenet_a")


def write_ImageNetR(root: str) -> Expected:
    return _write_subset(root, "imagenet-rendition", "imagenet-r", "imagenet_r")


WRITERS: dict[str, Callable[[str], Expected]] = {
    name[len("write_") :]: fn for name, fn in globals().items() if name.startswith("write_")
}
WRITERS.pop("image")
# Readers that fall back to raw annotations only when their CoOp split file is missing.
SPLIT_FILES = {
    "OxfordPets": "oxford_pets/split_zhou_OxfordPets.json",
    "Caltech101": "caltech-101/split_zhou_Caltech101.json",
    "DescribableTextures": "dtd/split_zhou_DescribableTextures.json",
    "Food101": "food-101/split_zhou_Food101.json",
    "EuroSAT": "eurosat/split_zhou_EuroSAT.json",
    "OxfordFlowers": "oxford_flowers/split_zhou_OxfordFlowers.json",
    "StanfordCars": "stanford_cars/split_zhou_StanfordCars.json",
    "SUN397": "sun397/split_zhou_SUN397.json",
    "UCF101": "ucf101/split_zhou_UCF101.json",
}
TEST_ONLY = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")


def make_cfg(root: str, name: str, *opts: object):
    """Default config for dataset `name` under `root`, with `KEY VALUE` overrides."""
    from dassl_ext.config import get_cfg_default

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.NAME = name
    cfg.merge_from_list([str(o) if not isinstance(o, str) else o for o in opts])
    return cfg
