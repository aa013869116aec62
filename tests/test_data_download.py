"""scripts/download_data.py without a network: offline errors, extraction, layout check."""

import importlib.util
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request

import pytest
from dataset_fixtures import WRITERS, make_cfg

from dassl_ext.data import DATASET_REGISTRY

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "download_data.py")


@pytest.fixture(scope="module")
def dl():
    spec = importlib.util.spec_from_file_location("download_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["download_data"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_source_names_a_registered_reader(dl):
    import datasets  # noqa: F401

    for name, (reg, folder, fetches) in dl.SOURCES.items():
        assert reg in DATASET_REGISTRY and DATASET_REGISTRY.get(reg).dataset_dir == folder
        assert DATASET_REGISTRY.get(reg).download_name == name
        assert fetches


def test_offline_names_the_url_and_fails(dl, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert dl.main(["dtd", "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "[dtd] FAILED" in err
    assert "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz" in err
    assert not list((tmp_path / "dtd").glob("*.part"))


def test_download_extracts_into_layout_and_verifies(dl, tmp_path, monkeypatch, capsys):
    # A tiny DTD as the archive would unpack (dtd/images/...), plus its split file.
    staging = tmp_path / "staging"
    WRITERS["DescribableTextures"](str(staging))
    DATASET_REGISTRY.get("DescribableTextures")(make_cfg(staging, "DescribableTextures"))
    split = staging / "dtd" / "split_zhou_DescribableTextures.json"
    shutil.move(str(split), str(tmp_path / split.name))
    archive = tmp_path / "dtd.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(staging / "dtd", arcname="dtd")
    calls = []

    def fake_download(url, dest):
        calls.append(url)
        src = archive if dest.endswith(".tar.gz") else tmp_path / split.name
        shutil.copy(src, dest)

    monkeypatch.setattr(dl, "download", fake_download)
    root = tmp_path / "data"
    assert dl.main(["dtd", "--root", str(root)]) == 0
    assert "[dtd] OK: DescribableTextures: 3 classes, 15 train, 9 test" in capsys.readouterr().out
    assert (root / "dtd" / "images" / "banded").is_dir()
    assert (root / "dtd" / "split_zhou_DescribableTextures.json").is_file()
    assert not (root / "dtd" / "dtd-r1.0.1.tar.gz").exists()
    assert len(calls) == 2
    assert dl.main(["dtd", "--root", str(root)]) == 0  # finished steps are not repeated
    assert len(calls) == 2


def test_imagenet_is_documented_not_downloaded(dl, tmp_path, capsys):
    assert dl.main(["imagenet", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "imagenet/images/train" in out.out and "download_data.py" not in out.out
    assert "[imagenet] FAILED" in out.err
