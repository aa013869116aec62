"""dassl_ext.data: split files, few-shot cache, errors, DataManager, transforms, Digits."""

import json
import os
import random

import pytest
import torch
from dataset_fixtures import WRITERS, make_cfg, write_image

import datasets  # noqa: F401  (registers the readers)
from dassl_ext.data import DATASET_REGISTRY, DataManager, Datum, build_transform
from dassl_ext.data.splits import (
    generate_fewshot_dataset,
    read_split,
    save_split,
    split_trainval,
    subsample_classes,
)
from dassl_ext.errors import UserError


def build(root, name, *opts):
    return DATASET_REGISTRY.get(name)(make_cfg(root, name, *opts))


# ------------------------------------------------------------------ split helpers


def test_split_file_round_trip(tmp_path):
    prefix = str(tmp_path / "images")
    items = [Datum(os.path.join(prefix, "a", f"{i}.jpg"), i % 2, 0, "ab"[i % 2]) for i in range(4)]
    path = str(tmp_path / "split.json")
    save_split({"train": items, "val": items[:1], "test": []}, path, prefix)
    raw = json.loads((tmp_path / "split.json").read_text())
    assert raw["train"][1] == ["a/1.jpg", 1, "b"]
    back = read_split(path, prefix)
    assert back == {"train": items, "val": items[:1], "test": []}


def test_split_trainval_is_seeded_and_per_class():
    items = [Datum(f"{i}.jpg", i % 2, 0, "ab"[i % 2]) for i in range(20)]
    train, val = split_trainval(items, p_val=0.2)
    assert len(val) == 4 and sum(d.label == 0 for d in val) == 2
    assert split_trainval(items, p_val=0.2) == (train, val)


def test_fewshot_matches_dassl_sampling():
    items = [Datum(f"{i}.jpg", i % 3, 0, "abc"[i % 3]) for i in range(30)]
    got = generate_fewshot_dataset(items, 2, random.Random(5))
    rng = random.Random(5)  # Dassl: random.sample per label group, first-appearance order
    want = []
    for y in (0, 1, 2):
        want += rng.sample([d for d in items if d.label == y], 2)
    assert got == want
    assert generate_fewshot_dataset(items, 0, random.Random(0)) is items


def test_subsample_relabels_every_list():
    items = [Datum(f"{i}.jpg", y, 0, str(y)) for i, y in enumerate([4, 0, 2, 6, 8])]
    (base,) = subsample_classes(items, subsample="base")
    (new,) = subsample_classes(items, subsample="new")
    assert [(d.label, d.classname) for d in base] == [(2, "4"), (0, "0"), (1, "2")]
    assert [(d.label, d.classname) for d in new] == [(0, "6"), (1, "8")]
    with pytest.raises(UserError, match="SUBSAMPLE_CLASSES is 'neww'; use one of: all, base, new"):
        subsample_classes(items, subsample="neww")  # a typo never silently means "new"


# ------------------------------------------------------------------ few-shot cache


def test_fewshot_cache_deterministic_per_seed_and_reused(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    a = build(tmp_path, "DescribableTextures", "DATASET.NUM_SHOTS", 2, "SEED", 1)
    cache = tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_1.json"
    assert cache.is_file()
    cached = json.loads(cache.read_text())
    assert len(cached["train"]) == 6 and len(cached["val"]) == 6  # val: min(K, 4) shots
    assert all(not os.path.isabs(row[0]) for row in cached["train"])
    assert len(a.train_x) == 6 and sorted(d.label for d in a.train_x) == [0, 0, 1, 1, 2, 2]

    cache.unlink()  # same seed -> the same draw, even without the cache
    assert build(tmp_path, "DescribableTextures", "DATASET.NUM_SHOTS", 2, "SEED", 1).train_x == (
        a.train_x
    )
    draws = {
        tuple(build(tmp_path, "DescribableTextures", "DATASET.NUM_SHOTS", 2, "SEED", s).train_x)
        for s in range(1, 6)
    }
    assert len(draws) > 1  # seeds differ

    # The cache is read back, not redrawn: edit it and see the edit.
    cached["train"] = cached["train"][:3]
    cache.write_text(json.dumps(cached))
    again = build(tmp_path, "DescribableTextures", "DATASET.NUM_SHOTS", 2, "SEED", 1)
    assert again.train_x == a.train_x[:3]


def test_fewshot_before_base_new(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    ds = build(
        tmp_path,
        "DescribableTextures",
        "DATASET.NUM_SHOTS",
        1,
        "SEED",
        2,
        "DATASET.EVAL_SPLITS",
        "base_new",
        "DATASET.PROTOCOL",
        "clean",
    )
    assert len(ds.train_x) == 3  # all classes, one shot each
    assert len(ds.val) == 2  # one-shot val of the two base classes
    assert len(ds.eval_splits["base"].items) == 6  # test images are never few-shot


# ------------------------------------------------------------------ errors


def test_missing_dataset_folder_names_download_command(tmp_path):
    with pytest.raises(UserError) as e:
        build(tmp_path, "OxfordPets")
    msg = str(e.value)
    assert str(tmp_path / "oxford_pets") in msg
    assert "python scripts/download_data.py oxford_pets" in msg


def test_missing_split_file_and_raw_files(tmp_path):
    (tmp_path / "oxford_pets" / "images").mkdir(parents=True)
    with pytest.raises(UserError, match="split_zhou_OxfordPets.json is missing") as e:
        build(tmp_path, "OxfordPets")
    assert "trainval.txt" in str(e.value)
    (tmp_path / "ucf101").mkdir()
    with pytest.raises(UserError, match="classInd.txt"):
        build(tmp_path, "UCF101")


def test_missing_image_is_reported_before_training(tmp_path):
    WRITERS["OxfordPets"](str(tmp_path))
    build(tmp_path, "OxfordPets")  # writes the split file
    (tmp_path / "oxford_pets" / "images" / "Bengal_7.jpg").unlink()
    with pytest.raises(UserError, match="Bengal_7.jpg does not exist.*download_data.py"):
        build(tmp_path, "OxfordPets")


def test_empty_class_folder(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    (tmp_path / "dtd" / "images" / "zigzagged").mkdir()
    with pytest.raises(UserError, match="zigzagged holds no images"):
        build(tmp_path, "DescribableTextures")
    WRITERS["ImageNetSketch"](str(tmp_path))
    (tmp_path / "imagenet-sketch" / "images" / "n01443537").mkdir(exist_ok=True)
    for p in (tmp_path / "imagenet-sketch" / "images" / "n01443537").iterdir():
        p.unlink()
    with pytest.raises(UserError, match="n01443537 is missing or empty"):
        build(tmp_path, "ImageNetSketch")


def test_class_without_training_images_in_split_file(tmp_path):
    (tmp_path / "dtd" / "images" / "a").mkdir(parents=True)
    write_image(str(tmp_path / "dtd" / "images" / "a" / "0.jpg"))
    split = {"train": [["a/0.jpg", 1, "a"]], "val": [], "test": [["a/0.jpg", 1, "a"]]}
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text(json.dumps(split))
    with pytest.raises(UserError, match="class label 0 has no training images"):
        build(tmp_path, "DescribableTextures")


def test_malformed_split_file(tmp_path):
    (tmp_path / "dtd").mkdir()
    (tmp_path / "dtd" / "split_zhou_DescribableTextures.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        build(tmp_path, "DescribableTextures")


def test_corrupt_image_is_a_user_error_naming_the_file(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    cfg = make_cfg(
        tmp_path,
        "DescribableTextures",
        "DATALOADER.NUM_WORKERS",
        0,
        "DATALOADER.TEST.BATCH_SIZE",
        4,
        "INPUT.SIZE",
        (8, 8),
    )
    dm = DataManager(cfg)
    bad = dm.dataset.test[1].impath
    with open(bad, "wb") as f:
        f.write(b"not an image")
    with pytest.raises(UserError, match=f"Cannot decode image {bad}"):
        list(dm.test_loader)


def test_corrupt_image_from_worker_keeps_a_clean_message(tmp_path):
    WRITERS["Food101"](str(tmp_path))
    cfg = make_cfg(tmp_path, "Food101", "DATALOADER.NUM_WORKERS", 1, "INPUT.SIZE", (8, 8))
    dm = DataManager(cfg)
    bad = dm.dataset.test[0].impath
    with open(bad, "wb") as f:
        f.write(b"")
    with pytest.raises(UserError) as e:
        list(dm.test_loader)
    assert str(e.value).startswith(f"Cannot decode image {bad}")
    assert "Traceback" not in str(e.value)


# ------------------------------------------------------------------ DataManager


@pytest.fixture
def dtd_cfg(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    return make_cfg(
        tmp_path,
        "DescribableTextures",
        "SEED",
        3,
        "DATALOADER.NUM_WORKERS",
        0,
        "DATALOADER.TRAIN_X.BATCH_SIZE",
        4,
        "DATALOADER.TEST.BATCH_SIZE",
        5,
        "INPUT.SIZE",
        (8, 8),
        "INPUT.TRANSFORMS",
        ("random_resized_crop", "random_flip", "normalize"),
    )


def test_data_manager_loaders_and_batches(dtd_cfg):
    dm = DataManager(dtd_cfg)
    assert dm.num_classes == 3 and dm.classnames == ["banded", "blotchy", "braided"]
    assert list(dm.eval_loaders) == ["test"] and dm.test_loader is dm.eval_loaders["test"]
    batch = next(iter(dm.train_loader_x))
    assert set(batch) == {"img", "label", "impath", "index", "domain"}
    assert batch["img"].shape == (4, 3, 8, 8)
    assert len(dm.train_loader_x) == 15 // 4  # drop_last: 15 images, batch 4
    test_batches = list(dm.test_loader)
    assert sum(len(b["label"]) for b in test_batches) == 9  # no drop_last for eval
    assert [p for b in test_batches for p in b["impath"]] == [d.impath for d in dm.dataset.test]


def test_train_order_is_fixed_by_set_epoch(dtd_cfg):
    dm = DataManager(dtd_cfg)

    def order(epoch):
        dm.set_epoch(epoch)
        return [i for b in dm.train_loader_x for i in b["index"].tolist()]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert DataManager(dtd_cfg).train_loader_x is not None and order(2) == order(2)


def test_small_train_set_keeps_its_only_batch(tmp_path):
    WRITERS["Food101"](str(tmp_path))
    cfg = make_cfg(
        tmp_path,
        "Food101",
        "DATALOADER.TRAIN_X.BATCH_SIZE",
        64,
        "DATALOADER.NUM_WORKERS",
        0,
        "INPUT.SIZE",
        (8, 8),
    )
    assert len(DataManager(cfg).train_loader_x) == 1


def test_transforms(dtd_cfg):
    from PIL import Image

    img = Image.new("RGB", (20, 12))
    train = build_transform(dtd_cfg, is_train=True)
    names = [type(t).__name__ for t in train.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train(img).shape == (3, 8, 8)
    test = build_transform(dtd_cfg, is_train=False)
    names = [type(t).__name__ for t in test.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert test.transforms[0].size == 8  # shorter side
    cfg = dtd_cfg.clone()
    cfg.INPUT.TRANSFORMS = ("random_flip", "sharpen")
    with pytest.raises(UserError, match="sharpen"):
        build_transform(cfg, is_train=True)


# ------------------------------------------------------------------ Digits


def test_digits_written_once_in_coop_layout(digits_root):
    ds = build(digits_root, "Digits")
    assert ds.classnames == [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
    ]
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (898, 540, 540)  # paper: val = test
    d = ds.train_x[0]
    assert d.impath.startswith(os.path.join(str(digits_root), "digits", "images", d.classname))
    from PIL import Image

    with Image.open(d.impath) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    split = json.loads((digits_root / "digits" / "split_zhou_Digits.json").read_text())
    assert {k: len(v) for k, v in split.items()} == {"train": 898, "val": 359, "test": 540}
    mtime = os.path.getmtime(digits_root / "digits" / "split_zhou_Digits.json")
    build(digits_root, "Digits")  # second construction does not rewrite anything
    assert os.path.getmtime(digits_root / "digits" / "split_zhou_Digits.json") == mtime
    assert torch.is_tensor(
        build_transform(make_cfg(digits_root, "Digits"), False)(Image.open(d.impath))
    )


def test_tensor_transforms(dtd_cfg):
    from PIL import Image

    cfg = dtd_cfg.clone()
    cfg.INPUT.TRANSFORMS = ("random_crop", "cutout", "normalize", "gaussian_noise", "instance_norm")
    cfg.INPUT.CUTOUT_LEN = 4
    train = build_transform(cfg, is_train=True)
    names = [type(t).__name__ for t in train.transforms]
    assert names == [
        "RandomCrop",
        "ToTensor",
        "Cutout",
        "Normalize",
        "GaussianNoise",
        "InstanceNormalization",
    ]
    out = train(Image.new("RGB", (8, 8), (90, 20, 200)))
    assert out.shape == (3, 8, 8) and torch.isfinite(out).all()
    test = build_transform(cfg, is_train=False)
    assert [type(t).__name__ for t in test.transforms][-1] == "InstanceNormalization"


def _manager(cfg, monkeypatch, rank: int, world: int, *opts) -> DataManager:
    from dassl_ext.data import data_manager

    monkeypatch.setattr(data_manager, "get_rank", lambda: rank)
    monkeypatch.setattr(data_manager, "get_world_size", lambda: world)
    if opts:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.merge_from_list(list(opts))
    return DataManager(cfg)


def _epoch_batches(dm: DataManager, epoch: int) -> list[list[int]]:
    dm.set_epoch(epoch)
    return list(dm.train_loader_x.batch_sampler)


def test_global_batches_split_over_ranks(dtd_cfg, monkeypatch):
    """15 train images, global batch 4: one process reads what a seeded RandomSampler +
    BatchSampler read; 2 ranks read 2 + 2 of each of those batches, in order."""
    from torch.utils.data import BatchSampler, RandomSampler

    single = _epoch_batches(_manager(dtd_cfg, monkeypatch, 0, 1), 4)
    g = torch.Generator().manual_seed(3 + 4)  # SEED + epoch
    assert single == list(BatchSampler(RandomSampler(range(15), generator=g), 4, drop_last=True))
    ranks = [_manager(dtd_cfg, monkeypatch, r, 2) for r in (0, 1)]
    shares = [_epoch_batches(dm, 4) for dm in ranks]
    assert [a + b for a, b in zip(*shares)] == single  # 3 steps, the last 3 images dropped
    assert all(len(b) == 2 for share in shares for b in share)
    assert [len(dm.train_loader_x) for dm in ranks] == [3, 3]
    assert _epoch_batches(ranks[0], 5) != shares[0]  # a new order per epoch
    assert list(ranks[0].test_loader.sampler) == [0, 2, 4, 6, 8]  # 9 test images, no padding
    assert list(ranks[1].test_loader.sampler) == [1, 3, 5, 7]
    assert ranks[1].global_batch == 4


def test_batch_per_rank_and_batches_that_do_not_split(dtd_cfg, monkeypatch):
    per_rank = ("DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK", True)
    dm = _manager(dtd_cfg, monkeypatch, 1, 2, *per_rank)
    assert dm.global_batch == 8 and [len(b) for b in _epoch_batches(dm, 0)] == [4]
    with pytest.raises(UserError, match="BATCH_SIZE 3 is the global batch and does not split"):
        _manager(dtd_cfg, monkeypatch, 0, 2, "DATALOADER.TRAIN_X.BATCH_SIZE", 3)
    with pytest.raises(UserError, match="batch of 3 training images cannot be shared by 8"):
        _manager(dtd_cfg, monkeypatch, 0, 8, *per_rank, "DATALOADER.TRAIN_X.BATCH_SIZE", 1,
                 "DATASET.NUM_SHOTS", 1)  # fmt: skip


def test_linear_lr_scaling_only_for_per_rank_batches():
    from dassl_ext.config import get_cfg_default
    from dassl_ext.engine import scale_for_world_size

    cfg = get_cfg_default()
    cfg.OPTIM.LR = 0.002
    cfg.freeze()
    assert scale_for_world_size(cfg, 4).OPTIM.LR == 0.002  # global batch: same optimisation
    cfg.defrost()
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK = True
    cfg.freeze()
    assert abs(scale_for_world_size(cfg, 4).OPTIM.LR - 0.008) < 1e-12
    assert cfg.is_frozen()


def test_global_batch_sampler_edges():
    from dassl_ext.data.samplers import GlobalBatchSampler, rank_share

    assert [rank_share(list(range(5)), r, 2) for r in (0, 1)] == [[0, 1, 2], [3, 4]]
    only = GlobalBatchSampler(5, 8, rank=1, world_size=2, shuffle=False, drop_last=False)
    assert list(only) == [[3, 4]]  # the only batch is kept (as Dassl), split 3 + 2
    with pytest.raises(UserError, match="batch of 1 training images cannot be shared by 2"):
        GlobalBatchSampler(9, 4, rank=0, world_size=2, drop_last=False)


def test_annotation_with_unknown_class(tmp_path):
    WRITERS["FGVCAircraft"](str(tmp_path))
    with open(tmp_path / "fgvc_aircraft" / "images_variant_test.txt", "a") as f:
        f.write("1000001 Concorde\n")
    with pytest.raises(UserError, match="class 'Concorde'"):
        build(tmp_path, "FGVCAircraft")
    WRITERS["ImageNetR"](str(tmp_path))
    write_image(str(tmp_path / "imagenet-rendition" / "imagenet-r" / "n99999999" / "0.jpg"))
    with pytest.raises(UserError, match="n99999999 is not listed in classnames.txt"):
        build(tmp_path, "ImageNetR")
