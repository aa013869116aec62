"""Every benchmark reader on a tiny copy of its on-disk layout, read through the registry."""

import json
import os

import pytest
from dataset_fixtures import SPLIT_FILES, TEST_ONLY, WRITERS, make_cfg

import datasets  # noqa: F401  (registers the readers)
from dassl_ext.data import DATASET_REGISTRY
from dassl_ext.errors import UserError

ALL = sorted(WRITERS)


def build(root, name, *opts):
    return DATASET_REGISTRY.get(name)(make_cfg(root, name, *opts))


def test_every_benchmark_has_a_fixture_and_a_config():
    assert len(ALL) == 15
    for name in ALL:
        assert name in DATASET_REGISTRY
    configs = os.path.join(os.path.dirname(__file__), "..", "configs", "datasets")
    names = set()
    for f in os.listdir(configs):
        with open(os.path.join(configs, f)) as fh:
            names.add(fh.read().split('NAME: "')[1].split('"')[0])
    assert names == set(ALL) | {"Digits", "ImageFolder"}  # no raw fixture: built-in / own


@pytest.mark.parametrize("name", ALL)
def test_reads_raw_layout(tmp_path, name):
    expected = WRITERS[name](str(tmp_path))
    ds = build(tmp_path, name, "DATASET.PROTOCOL", "clean")
    assert ds.classnames == expected.classnames
    assert ds.num_classes == len(expected.classnames)
    for items in (ds.train_x, ds.val, ds.test):
        for d in items:  # label order: label k is class name k
            assert ds.classnames[d.label] == d.classname
            assert os.path.isfile(d.impath)
    counts = {"train": len(ds.train_x), "val": len(ds.val), "test": len(ds.test)}
    assert counts == expected.counts
    assert list(ds.eval_splits) == ["test"]
    assert ds.eval_splits["test"].class_ids == list(range(ds.num_classes))
    if name in TEST_ONLY:  # train_x = test = everything
        assert ds.train_x == ds.test and ds.val_split is None


@pytest.mark.parametrize("name", sorted(SPLIT_FILES))
def test_split_file_written_then_used(tmp_path, name):
    WRITERS[name](str(tmp_path))
    first = build(tmp_path, name)
    split_path = tmp_path / SPLIT_FILES[name]
    split = json.loads(split_path.read_text())
    assert set(split) == {"train", "val", "test"}
    rel, label, cname = split["train"][0]
    assert not os.path.isabs(rel) and isinstance(label, int) and cname
    assert split_path.read_text().startswith('{\n    "train"')  # indent 4, as CoOp's
    # Remove every raw annotation file: the second read must come from the split file alone.
    for p in tmp_path.rglob("*"):
        if p.suffix in (".txt", ".mat") or p.name == "cat_to_name.json":
            p.unlink()
    second = build(tmp_path, name)
    assert second.classnames == first.classnames
    assert second.train_x == first.train_x and second.test == first.test


def test_coop_split_file_with_raw_names_gets_fixes(tmp_path):
    d = tmp_path / "eurosat"
    for i, folder in enumerate(["AnnualCrop", "SeaLake"]):
        (d / "2750" / folder).mkdir(parents=True)
        for j in range(2):
            from dataset_fixtures import write_image

            write_image(str(d / "2750" / folder / f"{j}.jpg"), i * 10 + j)
    rows = [[f"{c}/{j}.jpg", y, c] for y, c in enumerate(["AnnualCrop", "SeaLake"]) for j in (0, 1)]
    (d / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": rows, "val": [], "test": rows}))
    ds = build(tmp_path, "EuroSAT")
    assert ds.classnames == ["Annual Crop Land", "Sea or Lake"]


@pytest.mark.parametrize("name", sorted(set(ALL) - set(TEST_ONLY)))
@pytest.mark.parametrize("protocol", ["paper", "clean"])
def test_base_new_roles(tmp_path, name, protocol):
    WRITERS[name](str(tmp_path))
    plain = build(tmp_path, name, "DATASET.PROTOCOL", "clean")
    ds = build(tmp_path, name, "DATASET.EVAL_SPLITS", "base_new", "DATASET.PROTOCOL", protocol)
    c = plain.num_classes
    m = (c + 1) // 2
    assert ds.classnames == plain.classnames  # the trainer knows every class
    assert ds.train_x == plain.train_x  # all classes, original labels
    base, new = ds.eval_splits["base"], ds.eval_splits["new"]
    assert list(ds.eval_splits) == ["base", "new"]
    assert base.class_ids == list(range(m)) and new.class_ids == list(range(m, c))
    assert len(base.items) + len(new.items) == len(plain.test)
    for split in (base, new):
        for d in split.items:  # relabelled; class_ids maps back to the global class
            assert ds.classnames[split.class_ids[d.label]] == d.classname
    assert ds.test == base.items
    if protocol == "paper":
        assert ds.val == base.items  # the official selection split: base test images
    else:
        assert {d.impath for d in ds.val} <= {d.impath for d in plain.val}
        assert {d.label for d in ds.val} <= set(range(m))


def test_subsample_classes_relabels(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    base = build(tmp_path, "DescribableTextures", "DATASET.SUBSAMPLE_CLASSES", "base")
    new = build(tmp_path, "DescribableTextures", "DATASET.SUBSAMPLE_CLASSES", "new")
    assert base.classnames == ["banded", "blotchy"] and new.classnames == ["braided"]
    assert {d.label for d in new.train_x} == {0} and {d.label for d in new.test} == {0}
    assert base.val == base.test  # paper protocol: selection on the (subsampled) test split
    assert len(new.train_x) == 5 and len(base.test) == 6


def test_bad_config_values(tmp_path):
    WRITERS["DescribableTextures"](str(tmp_path))
    for opts, key in [
        (("DATASET.PROTOCOL", "honest"), "DATASET.PROTOCOL"),
        (("DATASET.EVAL_SPLITS", "b2n"), "DATASET.EVAL_SPLITS"),
        (("DATASET.SUBSAMPLE_CLASSES", "half"), "DATASET.SUBSAMPLE_CLASSES"),
    ]:
        with pytest.raises(UserError, match=key):
            build(tmp_path, "DescribableTextures", *opts)


def test_clean_protocol_without_val_split_cannot_select(tmp_path):
    WRITERS["ImageNet"](str(tmp_path))
    opts = ("DATASET.PROTOCOL", "clean", "TEST.FINAL_MODEL", "best_val")
    with pytest.raises(UserError, match="no validation split"):
        build(tmp_path, "ImageNet", *opts)
    assert build(tmp_path, "ImageNet", "DATASET.PROTOCOL", "clean").val_split is None
