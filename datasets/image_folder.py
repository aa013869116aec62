"""ImageFolder: your own unlabeled images and a class list, no code (``DATASET.NAME ImageFolder``).

Keys (``DATASET.IMAGE_FOLDER``; relative paths are relative to ``DATASET.ROOT``):

- ``TRAIN_DIR``: the unlabeled training images, in any sub-folders (hidden files and
  folders are skipped; other files are ignored): .jpg .jpeg .png .bmp .gif (first frame)
  .tif .tiff .webp, in any mode and bit depth (read as every dataset reads them).
- ``CLASSNAMES_FILE``: UTF-8 text, one class per line, in label order. A line is
  ``name`` or ``name<TAB>prompt``, the prompt holding ``{}`` once where the name goes
  (``golden retriever<TAB>a photo of a {}, a type of dog.``); lines starting with ``#``
  are comments. A prompt replaces the template(s) of zero-shot CLIP (ZeroshotCLIP,
  ZeroshotCLIP2, and PromptKD's ZeroshotCLIP teacher) for that class (``class_prompts``);
  prompt-tuned trainers learn their own context and read the names only. Names must
  differ in more than case, spaces and underscores (CLIP's tokenizer would give them the
  same prompt).
- ``EVAL_DIR`` (optional): labeled images, one sub-folder per class named exactly as in
  the class file. Per class, a fixed 20% (at most all but one image) is val, the rest test.
  Without it nothing can be evaluated: set ``TEST.NO_TEST True`` to train (and export).
- ``BASE_CLASSES`` (optional): the base classes of base/new reporting, ceil(C/2) names;
  empty: the first ceil(C/2) classes of the file (CoOp's half split). Labels put the base
  classes first, each group in file order.

Training labels are placeholders: training image i (in sorted path order) has label
``i mod C``, because the dataset base derives the class list from the training labels
and needs every class there. PromptKD never reads a training label (it learns from the
teacher's outputs), and ZeroshotCLIP only evaluates; a method that learns from labels
(CoOp, PromptSRC, ...) would learn noise, so it is warned against. ``DATASET.NUM_SHOTS K``
therefore keeps K x C random training images.

The split is written as a CoOp split file, ``<DATASET.ROOT>/image_folder/
split_ImageFolder_<key>.json`` (paths relative to the folder holding both image folders),
and read again while the key is the same. The key is a digest of what the split is a
function of: the image paths relative to each folder, where the folders lie relative to
each other, the class names in label order and the split rule's version. File sizes,
times and bytes are not in it: they cannot change the split (images are read afresh by
every run), a copied folder keeps its split, and no image is read to compute it. Adding,
removing or renaming an image or a class writes a new split file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import unicodedata

from yacs.config import CfgNode as CN

from dassl_ext.config import Check, register_config_extension, register_config_rules
from dassl_ext.config.defaults import register_added_keys
from dassl_ext.data import DATASET_REGISTRY, DatasetBase, Datum
from dassl_ext.data.splits import IMAGE_EXTENSIONS, SPLIT_SEED, read_split
from dassl_ext.errors import UserError
from dassl_ext.utils.paths import walk_once

logger = logging.getLogger(__name__)

SECTION = "DATASET.IMAGE_FOLDER"
P_VAL = 0.2  # share of each class's labeled images held out as val
# Version of the split rule (placeholder labels, val/test draw); part of the key.
SPLIT_VERSION = 1
# Trainers that never read a training label: PromptKD distils, the zero-shot ones evaluate.
LABEL_FREE_TRAINERS = ("PromptKD", "ZeroshotCLIP", "ZeroshotCLIP2")


@register_config_extension
def add_image_folder_config(cfg: CN) -> None:
    """``cfg.DATASET.IMAGE_FOLDER``: where ImageFolder's images and class list are."""
    cfg.DATASET.IMAGE_FOLDER = f = CN()
    # new: folder of unlabeled training images (any nesting); relative: to DATASET.ROOT
    f.TRAIN_DIR = ""
    # new: text file, one class per line: "name" or "name<TAB>prompt with {}"; "#" comments
    f.CLASSNAMES_FILE = ""
    # new: labeled images, one sub-folder per class name; "" -> nothing to evaluate
    f.EVAL_DIR = ""
    # new: names of the ceil(C/2) base classes; () -> the first half of the class file
    f.BASE_CLASSES = ()


# Runs recorded before this section existed keep their config hash and can be resumed.
register_added_keys(
    {
        f"{SECTION}.{k}": v
        for k, v in (
            ("TRAIN_DIR", ""),
            ("CLASSNAMES_FILE", ""),
            ("EVAL_DIR", ""),
            ("BASE_CLASSES", ()),
        )
    }
)


def _names_ok(names) -> bool:
    return all(isinstance(n, str) and n.strip() for n in names) and len(set(names)) == len(names)


register_config_rules(
    Check(
        f"{SECTION}.BASE_CLASSES",
        _names_ok,
        "use a list of different class names from the class file, e.g. ['cat', 'dog']",
    )
)


# ---------------------------------------------------------------------------- reading


def _key(name: str) -> str:
    """What CLIP's prompt sees of a class name: case, runs of spaces and ``_`` ignored, and
    the Unicode form (CLIP's ftfy cleaning composes 'e' + accent into one character)."""
    return " ".join(_nfc(name).replace("_", " ").lower().split())


def _nfc(name: str) -> str:
    """``name`` in Unicode's composed form: a class file typed on one system and folders
    named on another (macOS writes decomposed names) spell 'café' with other code points."""
    return unicodedata.normalize("NFC", name)


def read_class_file(path: str) -> list[tuple[str, str | None]]:
    """``[(name, prompt or None), ...]`` from a class file (see the module docstring); an
    empty, repeated or malformed line is a UserError naming the file and the line."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError:
        raise UserError(f"Class file {path} is not UTF-8 text; save it as UTF-8.") from None
    except OSError as e:
        raise UserError(f"Class file {path} cannot be read ({e.strerror}); fix the path.") from None
    while lines and not lines[-1].strip():  # blank lines at the end are harmless
        lines.pop()
    entries: list[tuple[str, str | None]] = []
    seen: dict[str, tuple[int, str]] = {}
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("#"):
            continue
        where = f"Class file {path} line {number}"
        if not line.strip():
            raise UserError(
                f"{where} is empty; write one class name per line (or remove the line)."
            )
        name, _, prompt = line.partition("\t")
        name, prompt = name.strip(), prompt.strip()
        if not name:
            raise UserError(f"{where} has an empty class name before its tab; write the name.")
        if "\t" in prompt or (prompt and not _valid_prompt(prompt)):
            raise UserError(
                f"{where} has prompt {prompt!r}; write name<TAB>prompt with {{}} once where the "
                "name goes (e.g. 'a photo of a {}, a type of dog.')."
            )
        if _key(name) in seen:
            first, other = seen[_key(name)]
            raise UserError(
                f"{where} repeats class '{name}' of line {first} ('{other}'; names that differ "
                "only in case, spaces or underscores get the same CLIP prompt); keep one."
            )
        seen[_key(name)] = (number, name)
        entries.append((name, prompt or None))
    if len(entries) < 2:
        raise UserError(
            f"Class file {path} lists {len(entries)} class name(s); list at least 2, one per line."
        )
    return entries


def _valid_prompt(prompt: str) -> bool:
    try:
        return prompt.count("{}") == 1 and prompt.format("x") == prompt.replace("{}", "x")
    except (IndexError, KeyError, ValueError):
        return False


def scan_images(folder: str) -> tuple[list[str], list[str]]:
    """(image paths relative to ``folder``, other file paths), each sorted; sub-folders at
    any depth (symbolic links followed once), hidden files and folders skipped."""
    images, others = [], []
    for top, dirs, files in walk_once(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            rel = os.path.relpath(os.path.join(top, name), folder)
            (images if name.lower().endswith(IMAGE_EXTENSIONS) else others).append(rel)
    return sorted(images), sorted(others)


def _resolve(cfg, key: str) -> str:
    value = cfg.DATASET.IMAGE_FOLDER[key]
    root = os.path.expanduser(cfg.DATASET.ROOT)
    return os.path.abspath(os.path.join(root, os.path.expanduser(value))) if value else ""


def _require(path: str, key: str, what: str, folder: bool) -> None:
    ok = os.path.isdir(path) if folder else os.path.isfile(path)
    if not ok:
        state = "is not a folder" if folder and os.path.exists(path) else "does not exist"
        if not folder and os.path.isdir(path):
            state = "is a folder, not a file"
        raise UserError(f"{SECTION}.{key} {path} {state}; set it to {what}.")


def _images_in(folder: str, key: str) -> list[str]:
    images, others = scan_images(folder)
    if not images:
        held = f" (it holds {len(others)} other file(s), e.g. {others[0]})" if others else ""
        raise UserError(
            f"{SECTION}.{key}: no images found in {folder} or its sub-folders{held}; add images "
            f"with one of the extensions {' '.join(IMAGE_EXTENSIONS)} (any letter case)."
        )
    if others:
        logger.info("%s: ignored %d non-image file(s), e.g. %s", folder, len(others), others[0])
    return images


def _label_order(names: list[str], base: tuple[str, ...], path: str) -> list[str]:
    """Class names in label order: the base classes first (``base``, or the first half)."""
    m = math.ceil(len(names) / 2)
    if not base:
        return names
    base = tuple(_nfc(b) for b in base)  # typed in either Unicode form
    unknown = [b for b in base if b not in {_nfc(n) for n in names}]
    if unknown:
        raise UserError(
            f"{SECTION}.BASE_CLASSES names {', '.join(repr(u) for u in unknown)}, not in the "
            f"class file {path}; use names spelled as in that file."
        )
    different = len(set(base))  # 'café' twice, in two Unicode forms, is one class
    if different != len(base) or different != m:
        raise UserError(
            f"{SECTION}.BASE_CLASSES lists {different} class name(s), but base/new splits the "
            f"{len(names)} classes into {m} base and {len(names) - m} new; list {m} names "
            "(or leave it empty for the first half of the class file)."
        )
    return [n for n in names if _nfc(n) in base] + [n for n in names if _nfc(n) not in base]


def _eval_groups(
    eval_dir: str, names: list[str], class_file: str
) -> tuple[dict[str, list[str]], dict[str, str]]:
    """({class name: image paths relative to its sub-folder}, {class name: its sub-folder});
    the sub-folders must be the class names (in either Unicode form), each holding images."""
    entries = [e for e in os.listdir(eval_dir) if not e.startswith(".")]
    folders = {e for e in entries if os.path.isdir(os.path.join(eval_dir, e))}
    loose = sorted(e for e in entries if e.lower().endswith(IMAGE_EXTENSIONS) and e not in folders)
    if loose:
        raise UserError(
            f"{SECTION}.EVAL_DIR {eval_dir} holds image {loose[0]} outside a class sub-folder "
            f"({len(loose)} in all); move each image into the sub-folder of its class."
        )
    by_form = {_nfc(e): e for e in folders}  # the same name in either Unicode form
    missing = [n for n in names if _nfc(n) not in by_form]
    extra = sorted(e for e in folders if _nfc(e) not in {_nfc(n) for n in names})
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"no sub-folder for {', '.join(repr(n) for n in missing)}")
        if extra:
            parts.append(f"sub-folder(s) {', '.join(repr(e) for e in extra)} not in the class file")
        raise UserError(
            f"{SECTION}.EVAL_DIR {eval_dir} does not match the class file {class_file}: "
            f"{'; '.join(parts)}; name one sub-folder after each class, spelled as in the file."
        )
    groups = {}
    for name in names:
        folder = os.path.join(eval_dir, by_form[_nfc(name)])
        images, _ = scan_images(folder)
        if not images:
            raise UserError(
                f"{SECTION}.EVAL_DIR: class folder {folder} holds no images; add labeled "
                f"images of '{name}', or remove '{name}' from the class file {class_file}."
            )
        groups[name] = images
    return groups, {name: by_form[_nfc(name)] for name in names}


def _real_files(paths: list[str]) -> dict[str, str]:
    """{the file each path reaches (symbolic links followed): the path}; one realpath per
    folder, plus one per file that is itself a link."""
    real_dirs: dict[str, str] = {}
    out = {}
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder)
        real = os.path.join(real_dirs[folder], name)
        out[os.path.realpath(real) if os.path.islink(real) else real] = path
    return out


def _refuse_shared_images(train_dir, train, eval_dir, eval_folders, groups) -> None:
    """A UserError when a training image is also a labeled one (the folders are apart, but a
    symbolic link in one reaches into the other): it would be trained on and scored."""
    trained = _real_files([os.path.join(train_dir, r) for r in train])
    labeled = [os.path.join(eval_dir, eval_folders[n], r) for n, rels in groups.items()
               for r in rels]  # fmt: skip
    shared = [(trained[real], path) for real, path in _real_files(labeled).items()
              if real in trained]  # fmt: skip
    if shared:
        (a, b), n = shared[0], len(shared)
        raise UserError(
            f"{SECTION}.TRAIN_DIR and EVAL_DIR reach the same image file{'s' if n > 1 else ''} "
            f"through symbolic links ({n} in all, e.g. {a} is {b}), so labeled images would be "
            "trained on and scored; keep the labeled images out of the training folder."
        )


def split_val_test(name: str, images: list[str]) -> tuple[list[str], list[str]]:
    """A class's labeled images as (val, test): ``round(P_VAL * n)`` (at most n - 1) drawn
    with a generator seeded by the class name, so one class's images do not move another's."""
    order = list(images)
    random.Random(f"{SPLIT_SEED}:{name}").shuffle(order)
    n_val = min(round(P_VAL * len(order)), len(order) - 1)
    return sorted(order[:n_val]), sorted(order[n_val:])


# ---------------------------------------------------------------------------- dataset


@DATASET_REGISTRY.register()
class ImageFolder(DatasetBase):
    """Unlabeled training images, a class file and an optional labeled folder."""

    dataset_dir = "image_folder"  # under DATASET.ROOT: the split files
    split_file = "split_ImageFolder.json"  # named with the content key (split_path)
    remove_images_hint = "remove them from their folder"  # the split follows the folders

    def __init__(self, cfg) -> None:
        type(self).check_config(cfg)
        self.train_dir = _resolve(cfg, "TRAIN_DIR")
        self.class_file = _resolve(cfg, "CLASSNAMES_FILE")
        self.eval_dir = _resolve(cfg, "EVAL_DIR")
        if cfg.TRAINER.NAME and cfg.TRAINER.NAME not in LABEL_FREE_TRAINERS:
            # said whether or not this run trains (a dataset cannot know): true either way
            logger.warning(
                "ImageFolder's training images have no labels (their labels are placeholders): "
                "%s learns from labels, so train it on a labeled dataset; evaluating a trained "
                "one on ImageFolder (--eval-only) is fine.",
                cfg.TRAINER.NAME,
            )
        entries = read_class_file(self.class_file)
        names = _label_order([n for n, _ in entries], cfg.DATASET.IMAGE_FOLDER.BASE_CLASSES,
                             self.class_file)  # fmt: skip
        # the prompts of the file (zero-shot CLIP's class texts); others: the trainer's template
        self.class_prompts = {n: p for n, p in entries if p}
        train = _images_in(self.train_dir, "TRAIN_DIR")
        if len(train) < len(names):
            raise UserError(
                f"{SECTION}.TRAIN_DIR {self.train_dir} holds {len(train)} image(s) for "
                f"{len(names)} classes; add images (at least one per class name: each training "
                "image carries a placeholder label and every class needs one)."
            )
        groups, self._eval_folders = (
            _eval_groups(self.eval_dir, names, self.class_file) if self.eval_dir else ({}, {})
        )
        if groups:
            _refuse_shared_images(self.train_dir, train, self.eval_dir, self._eval_folders, groups)
        self.has_val_split = bool(groups)  # without labeled images, no val (and no test)
        if not groups:  # TEST.NO_TEST (check_config): val and test would be stand-ins
            self.nothing_to_evaluate = f"no labeled images ({SECTION}.EVAL_DIR is empty)"
        self._names, self._train, self._groups = names, train, groups
        self.image_prefix = os.path.commonpath([p for p in (self.train_dir, self.eval_dir) if p])
        self.content_key = self._content_key()
        dataset_dir = os.path.join(os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT)),
                                   type(self).dataset_dir)  # fmt: skip
        try:
            os.makedirs(dataset_dir, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"ImageFolder cannot create {dataset_dir} for its split files ({e.strerror}); "
                "set DATASET.ROOT to a folder you can write to."
            ) from None
        super().__init__(cfg)

    @classmethod
    def check_config(cls, cfg) -> None:
        """Before any work: the folders and the class file exist, and a run that evaluates
        has labeled images."""
        super().check_config(cfg)
        what = {
            "TRAIN_DIR": "the folder of your unlabeled training images",
            "CLASSNAMES_FILE": "your class-name file (one name per line)",
        }
        for key, text in what.items():
            path = _resolve(cfg, key)
            if not path:
                raise UserError(f"{SECTION}.{key} is empty; set it to {text}.")
            _require(path, key, text, folder=key.endswith("DIR"))
        eval_dir = _resolve(cfg, "EVAL_DIR")
        if eval_dir:
            _require(eval_dir, "EVAL_DIR", "a folder with one sub-folder of images per class", True)
            train_dir = _resolve(cfg, "TRAIN_DIR")
            real = [os.path.realpath(train_dir), os.path.realpath(eval_dir)]  # links followed
            if os.path.commonpath(real) in real:
                raise UserError(
                    f"{SECTION}.EVAL_DIR {eval_dir} and TRAIN_DIR {train_dir} overlap (one holds "
                    "the other), so labeled images would be trained on or unlabeled ones "
                    "evaluated; use two separate folders."
                )
        elif not cfg.TEST.NO_TEST:
            raise UserError(
                f"{SECTION}.EVAL_DIR is empty, so there are no labeled images to evaluate on; "
                "set it to a folder with one sub-folder of images per class name, or set "
                "TEST.NO_TEST True to train (and export) without evaluating."
            )

    def _content_key(self) -> str:
        at = {"train": os.path.relpath(self.train_dir, self.image_prefix)}
        if self.eval_dir:
            at["eval"] = os.path.relpath(self.eval_dir, self.image_prefix)
        content = {
            "version": SPLIT_VERSION,
            "classes": self._names,
            "at": at,
            "train": self._train,
            "eval": self._groups,
        }
        text = json.dumps(content, separators=(",", ":"), ensure_ascii=False)
        # a file name that is not UTF-8 (os gives it as surrogates) keeps its bytes
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]

    @property
    def split_path(self) -> str:
        return os.path.join(self.dataset_dir, f"split_ImageFolder_{self.content_key}.json")

    def fix_hint(self) -> str:
        return f"check {SECTION}.TRAIN_DIR and EVAL_DIR (see the README: Distil your own student)"

    def read_data(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """The split file of this content if present, else the split made (and saved)."""
        self.image_dir = self.image_prefix  # split-file paths are relative to it
        if os.path.isfile(self.split_path):
            logger.info("Reading split from %s", self.split_path)
            splits = read_split(self.split_path, self.image_dir)
            train, val, test = splits["train"], splits["val"], splits["test"]
        else:
            train, val, test = self.make_split()
            extra = {"image_folder": {"key": self.content_key, "classes": self._names}}
            self._save({"train": train, "val": val, "test": test}, self.split_path, "split", extra)
        if not test:  # TEST.NO_TEST (check_config): never evaluated, but the base needs one
            test = list(train)
        return train, val, test

    def make_split(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """Train with placeholder labels (i mod C); val and test from the labeled folder."""
        names = self._names
        train = [
            Datum(os.path.join(self.train_dir, rel), i % len(names), 0, names[i % len(names)])
            for i, rel in enumerate(self._train)
        ]
        val, test = [], []
        for label, name in enumerate(names):
            if name not in self._groups:
                continue
            folder = os.path.join(self.eval_dir, self._eval_folders[name])
            for out, rels in zip((val, test), split_val_test(name, self._groups[name])):
                out.extend(Datum(os.path.join(folder, r), label, 0, name) for r in rels)
        return train, val, test
