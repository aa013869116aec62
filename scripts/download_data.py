#!/usr/bin/env python
"""Download benchmarks into DATASET.ROOT in the layout the readers expect (see DATASETS.md).

    python scripts/download_data.py oxford_pets dtd [--root $DATA] [--keep-archives]
    python scripts/download_data.py --list

Sources are the ones CoOp's DATASETS.md lists: Google Drive files (split files,
UCF101 frames, ImageNet-Sketch) through gdown, everything else by plain URL.
Finished steps are remembered, so a rerun resumes. Afterwards the dataset is read
once through its reader, which checks the split file and every listed image.
ImageNet is not downloaded (it needs an account): the script prints how to lay it out.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dassl_ext.errors import first_line  # noqa: E402
from dassl_ext.utils.atomic import atomic_write, write_text_atomic  # noqa: E402


@dataclass(frozen=True)
class Fetch:
    url: str  # http(s) URL, or "gdrive:<file id>"
    name: str  # saved as <dataset folder>/<name>
    moves: tuple[tuple[str, str], ...] = ()  # archives: (extracted path, final path) renames


def gd(file_id: str) -> str:
    return f"gdrive:{file_id}"


CLASSNAMES = Fetch(gd("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"), "classnames.txt")  # ImageNet's
VGG = "https://www.robots.ox.ac.uk/~vgg/data"
CARS = "http://ai.stanford.edu/~jkrause/car196"
BERKELEY = "https://people.eecs.berkeley.edu/~hendrycks"

# name -> (registry name, folder under the root, what to fetch)
SOURCES: dict[str, tuple[str, str, tuple[Fetch, ...]]] = {
    "caltech101": ("Caltech101", "caltech-101", (
        Fetch("http://www.vision.caltech.edu/Image_Datasets/Caltech101/101_ObjectCategories.tar.gz",
              "101_ObjectCategories.tar.gz"),
        Fetch(gd("1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"), "split_zhou_Caltech101.json"),
    )),
    "oxford_pets": ("OxfordPets", "oxford_pets", (
        Fetch(f"{VGG}/pets/data/images.tar.gz", "images.tar.gz"),
        Fetch(f"{VGG}/pets/data/annotations.tar.gz", "annotations.tar.gz"),
        Fetch(gd("1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"), "split_zhou_OxfordPets.json"),
    )),
    "stanford_cars": ("StanfordCars", "stanford_cars", (
        Fetch(f"{CARS}/cars_train.tgz", "cars_train.tgz"),
        Fetch(f"{CARS}/cars_test.tgz", "cars_test.tgz"),
        Fetch("https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz", "car_devkit.tgz"),
        Fetch(f"{CARS}/cars_test_annos_withlabels.mat", "cars_test_annos_withlabels.mat"),
        Fetch(gd("1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"), "split_zhou_StanfordCars.json"),
    )),
    "oxford_flowers": ("OxfordFlowers", "oxford_flowers", (
        Fetch(f"{VGG}/flowers/102/102flowers.tgz", "102flowers.tgz"),
        Fetch(f"{VGG}/flowers/102/imagelabels.mat", "imagelabels.mat"),
        Fetch(gd("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"), "cat_to_name.json"),
        Fetch(gd("1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"), "split_zhou_OxfordFlowers.json"),
    )),
    "food101": ("Food101", "food-101", (
        Fetch("http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz", "food-101.tar.gz",
              (("food-101", "."),)),
        Fetch(gd("1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"), "split_zhou_Food101.json"),
    )),
    "fgvc_aircraft": ("FGVCAircraft", "fgvc_aircraft", (
        Fetch(f"{VGG}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
              "fgvc-aircraft-2013b.tar.gz", (("fgvc-aircraft-2013b/data", "."),)),
    )),
    "sun397": ("SUN397", "sun397", (
        Fetch("http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz", "SUN397.tar.gz"),
        Fetch("https://vision.princeton.edu/projects/2010/SUN/download/Partitions.zip",
              "Partitions.zip"),
        Fetch(gd("1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"), "split_zhou_SUN397.json"),
    )),
    "dtd": ("DescribableTextures", "dtd", (
        Fetch(f"{VGG}/dtd/download/dtd-r1.0.1.tar.gz", "dtd-r1.0.1.tar.gz", (("dtd", "."),)),
        Fetch(gd("1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"), "split_zhou_DescribableTextures.json"),
    )),
    "eurosat": ("EuroSAT", "eurosat", (
        Fetch("http://madm.dfki.de/files/sentinel/EuroSAT.zip", "EuroSAT.zip"),
        Fetch(gd("1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"), "split_zhou_EuroSAT.json"),
    )),
    "ucf101": ("UCF101", "ucf101", (
        Fetch(gd("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"), "UCF-101-midframes.zip"),
        Fetch(gd("1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"), "split_zhou_UCF101.json"),
    )),
    "imagenetv2": ("ImageNetV2", "imagenetv2", (
        Fetch("https://s3-us-west-2.amazonaws.com/imagenetv2public/"
              "imagenetv2-matched-frequency.tar.gz", "imagenetv2-matched-frequency.tar.gz"),
        CLASSNAMES,
    )),
    "imagenet_sketch": ("ImageNetSketch", "imagenet-sketch", (
        Fetch(gd("1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA"), "ImageNet-Sketch.zip",
              (("sketch", "images"),)),
        CLASSNAMES,
    )),
    "imagenet_a": ("ImageNetA", "imagenet-adversarial", (
        Fetch(f"{BERKELEY}/imagenet-a.tar", "imagenet-a.tar"),
        CLASSNAMES,
    )),
    "imagenet_r": ("ImageNetR", "imagenet-rendition", (
        Fetch(f"{BERKELEY}/imagenet-r.tar", "imagenet-r.tar"),
        CLASSNAMES,
    )),
}  # fmt: skip

IMAGENET_HOWTO = """ImageNet needs an account and is not downloaded. Lay it out as
  {root}/imagenet/images/train/n01440764/...   (1,000 class folders)
  {root}/imagenet/images/val/n01440764/...     (the val set, sorted into class folders)
  {root}/imagenet/classnames.txt               (from {url})
then run this script again with `imagenet` to verify it."""


class DownloadError(RuntimeError):
    pass


def download(url: str, dest: str) -> None:
    """Fetch `url` (or "gdrive:<id>") to `dest` through a temporary file."""

    def fetch(tmp: str) -> None:
        if url.startswith("gdrive:"):
            import gdown

            if gdown.download(id=url[len("gdrive:") :], output=tmp, quiet=False) is None:
                raise DownloadError(f"gdown could not fetch {gdrive_url(url)}")
        else:
            with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)

    try:
        atomic_write(dest, fetch)
    except DownloadError:
        raise
    except Exception as e:  # network errors come in many types (URLError, gdown, OSError)
        raise DownloadError(f"could not reach {gdrive_url(url)} ({e})") from None


def gdrive_url(url: str) -> str:
    return f"https://drive.google.com/uc?id={url[7:]}" if url.startswith("gdrive:") else url


def extract(archive: str, out_dir: str) -> None:
    if archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as z:
            z.extractall(out_dir)
    else:
        with tarfile.open(archive) as t:
            t.extractall(out_dir, filter="data")  # no absolute paths or links out of out_dir


def move(src: str, dst: str) -> None:
    """Rename `src` to `dst`; if `dst` exists, move `src`'s entries into it."""
    if not os.path.exists(dst):
        os.rename(src, dst)
        return
    for name in os.listdir(src):
        os.rename(os.path.join(src, name), os.path.join(dst, name))
    os.rmdir(src)


def fetch_dataset(name: str, root: str, keep_archives: bool = False) -> None:
    _, folder, fetches = SOURCES[name]
    out = os.path.join(root, folder)
    os.makedirs(out, exist_ok=True)
    for item in fetches:
        dest = os.path.join(out, item.name)
        done = os.path.join(out, f".{item.name}.done")
        if os.path.exists(done) or (os.path.exists(dest) and not is_archive(dest)):
            continue
        if not os.path.exists(dest):
            print(f"[{name}] downloading {gdrive_url(item.url)}")
            download(item.url, dest)
        if is_archive(dest):
            print(f"[{name}] extracting {item.name}")
            try:
                extract(dest, out)
            except (zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
                reason = f"{type(e).__name__}: {first_line(e).rstrip(':')}"
                raise DownloadError(
                    f"{dest} is not a readable archive ({reason}): a download cut short, or a "
                    "web page saved in its place (Google Drive's quota or virus-scan page); "
                    f"delete it and run again, or fetch it by hand from {gdrive_url(item.url)}"
                ) from None
            for src, dst in item.moves:
                move(os.path.join(out, src), os.path.normpath(os.path.join(out, dst)))
            if not keep_archives:
                os.remove(dest)
        write_text_atomic(done, "")


def is_archive(path: str) -> bool:
    return path.endswith((".zip", ".tar", ".tar.gz", ".tgz"))


def verify(name: str, root: str) -> str:
    """Read the dataset through its reader; returns a one-line summary."""
    import datasets  # noqa: F401  (registers the readers)
    from dassl_ext.config import get_cfg_default
    from dassl_ext.data import DATASET_REGISTRY

    cfg = get_cfg_default()
    cfg.DATASET.ROOT = root
    cfg.DATASET.NAME = SOURCES[name][0] if name in SOURCES else "ImageNet"
    ds = DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
    n_train, n_test = len(ds.train_x), len(ds.test)
    return f"{cfg.DATASET.NAME}: {ds.num_classes} classes, {n_train} train, {n_test} test images"


def main(argv: list[str] | None = None) -> int:
    names = [*SOURCES, "imagenet"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", metavar="DATASET", help=", ".join(names))
    default_root = os.environ.get("DATA", "data")
    parser.add_argument("--root", default=default_root, help="folder to fill ($DATA or ./data)")
    parser.add_argument("--keep-archives", action="store_true", help="keep downloaded archives")
    parser.add_argument("--list", action="store_true", help="print the sources and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (reg, folder, fetches) in SOURCES.items():
            print(f"{name} ({reg}) -> {folder}/")
            for f in fetches:
                print(f"    {f.name:<40} {gdrive_url(f.url)}")
        return 0
    unknown = [n for n in args.datasets if n not in names]
    if unknown or not args.datasets:
        parser.error(f"choose datasets from: {', '.join(names)}")

    from dassl_ext.errors import UserError

    root = os.path.abspath(os.path.expanduser(args.root))
    status = 0
    for name in args.datasets:
        try:
            if name == "imagenet":
                print(IMAGENET_HOWTO.format(root=root, url=gdrive_url(CLASSNAMES.url)))
            else:
                fetch_dataset(name, root, args.keep_archives)
            print(f"[{name}] OK: {verify(name, root)}")
        except (DownloadError, UserError) as e:
            print(f"[{name}] FAILED: {e}", file=sys.stderr)
            status = 1
        except OSError as e:  # --root a file, no space left, no permission
            where = f" ({e.filename})" if e.filename else ""
            print(
                f"[{name}] FAILED: cannot write under {root}{where}: {e.strerror or e}; "
                "choose another --root (or free space there).",
                file=sys.stderr,
            )
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
