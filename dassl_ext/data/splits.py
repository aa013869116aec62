"""Split files, split generation, few-shot sampling and class subsampling: pure functions
over lists of :class:`Datum` that every CoOp-style dataset reader shares."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import write_json_atomic

# Seed of the random split made from raw annotations. The split file is written once
# and shared by all runs, so it must not depend on the seed of whichever run came
# first; 1 is the seed the official scripts start with.
SPLIT_SEED = 1

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, slots=True)
class Datum:
    """One labelled image: absolute path, label, domain and class name (Dassl's fields)."""

    impath: str = ""
    label: int = 0
    domain: int = 0
    classname: str = ""


def listdir_sorted(path: str, images_only: bool = False) -> list[str]:
    """Names in `path` without hidden files, sorted (unlike Dassl's unsorted listing)."""
    names = [n for n in os.listdir(path) if not n.startswith(".")]
    if images_only:
        names = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(names)


# ------------------------------------------------------------ raw annotation files


def read_lines(
    path: str, parse: Callable[[str], Any], expected: str, classes_from: str = ""
) -> list:
    """``parse(line)`` of every non-blank, non-``#`` line of ``path`` (UTF-8, BOM ignored); a
    line it cannot read is a UserError naming the file, the line and ``expected`` (a KeyError:
    a class that ``classes_from`` lacks)."""
    out = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            try:
                out.append(parse(text))
            except KeyError as e:
                raise UserError(
                    f"{path} line {number} ({_short(text)}) uses class {e}, which "
                    f"{classes_from or 'the class list'} does not define; fix the line, or use "
                    "the dataset's own files."
                ) from None
            except (ValueError, IndexError):
                raise UserError(
                    f"{path} line {number} is {_short(text)}; expected {expected} (fix the line, "
                    "or use the dataset's own files)."
                ) from None
    return out


def unique_keys(path: str, keys: list[str], what: str) -> dict[str, int]:
    """``{key: position}`` of a class list read from ``path``; a key listed twice is a
    UserError (a dict would keep one silently and shift every later label)."""
    index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key in index:
            raise UserError(
                f"{path} lists {what} '{key}' twice (entries {index[key] + 1} and {i + 1}); "
                "each class must appear once: use the dataset's own file."
            )
        index[key] = i
    return index


def read_mat(path: str, key: str):
    """``loadmat(path)[key]``; a file scipy cannot read, or without ``key``: UserError."""
    from scipy.io import loadmat  # scipy comes with scikit-learn
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
    except (MatReadError, OSError, ValueError, TypeError, NotImplementedError) as e:
        raise UserError(
            f"{path} is not a MATLAB file scipy can read ({type(e).__name__}: {e}); download "
            "it again (the dataset's own file)."
        ) from None
    if key not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise UserError(
            f"{path} holds no '{key}' (it holds {found}); it is not the dataset's own file: "
            "download it again."
        )
    return mat[key]


# ----------------------------------------------------------------- split-file IO


def read_json(path: str) -> dict:
    """The JSON object in ``path``; a malformed file is a UserError naming it."""
    try:
        with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is harmless
            obj = json.load(f, object_pairs_hook=_no_duplicate_keys(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is not valid JSON ({e}); delete it so that it is rebuilt."
        ) from None
    except RecursionError:  # e.g. [[[[...]]]] nested thousands deep
        raise UserError(
            f"{path} is not a split file: it is nested too deep to read; delete it so that it "
            "is rebuilt."
        ) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a split file: expected a JSON object with split lists.")
    return obj


def _no_duplicate_keys(path: str):
    """A json ``object_pairs_hook`` refusing a key given twice in one object (json keeps the
    last silently: a second "train" list would replace the first)."""

    def hook(pairs: list[tuple[str, object]]) -> dict:
        obj = dict(pairs)
        if len(obj) < len(pairs):
            seen: set[str] = set()
            twice = next(k for k, _ in pairs if k in seen or seen.add(k))
            raise UserError(
                f"{path} gives the key '{twice}' twice in one object (JSON keeps only the "
                "last); keep one of them."
            )
        return obj

    return hook


def _label(value: object) -> int:
    """A split row's label: an int, 3.0 or "3"; a bool, a fraction, nan or inf is a
    ValueError (int() would silently truncate)."""
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(value)


def _encode(items: Iterable[Datum], prefix: str) -> list[list]:
    return [[os.path.relpath(d.impath, prefix), d.label, d.classname] for d in items]


def _decode(rows: list, prefix: str, path: str, name: str) -> list[Datum]:
    if not isinstance(rows, list):
        raise UserError(f"{path} is not a split file: '{name}' is not a list of rows.")
    items = []
    for i, row in enumerate(rows):
        try:
            rel, label, cname = row
            label = _label(label)
            if not isinstance(rel, str) or not isinstance(cname, str):
                raise TypeError
        except (TypeError, ValueError):
            raise UserError(
                f"{path} is not a split file: row {i} of '{name}' is {_short(row)}, expected "
                "[relative_path, label, classname] with an integer label from 0."
            ) from None
        # Checked on the text, not the resolved path: a symlink inside the image folder
        # may point elsewhere (datasets are often linked in), a row may not.
        if os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
            raise UserError(
                f"{path}: row {i} of '{name}' names image '{rel}', which is outside the image "
                f"folder {prefix}; split files may only name images inside it (fix the row or "
                "regenerate the split file)."
            )
        if label < 0:
            raise UserError(
                f"{path}: row {i} of '{name}' has label {label}; labels run from 0 (fix the row "
                "or regenerate the split file)."
            )
        items.append(Datum(os.path.join(prefix, rel), label, 0, cname))
    return items


def _short(row: object) -> str:
    text = repr(row)
    return text if len(text) <= 200 else text[:200] + "..."


def save_split(
    splits: dict[str, list[Datum]], path: str, prefix: str, extra: dict | None = None
) -> None:
    """Write a CoOp split file `{"train"|"val"|"test": [[relpath, label, classname], ...]}`,
    paths relative to `prefix` (the image folder); `extra`: more top-level entries."""
    obj = {name: _encode(items, prefix) for name, items in splits.items()}
    obj.update(extra or {})
    write_json_atomic(path, obj, indent=4)


def read_split(path: str, prefix: str, names: Sequence[str] = ("train", "val", "test")) -> dict:
    """{name: list[Datum]} of a CoOp split file, paths joined to `prefix`; a row that leaves
    `prefix` is a UserError (a split file must not make the program read arbitrary files)."""
    obj = read_json(path)
    return {name: _decode(obj.get(name, []), prefix, path, name) for name in names}


def split_digest(splits: dict[str, list[Datum]], prefix: str) -> str:
    """sha256 of the rows of `splits` (paths relative to `prefix`, labels, class names, in
    order): what a few-shot draw from them depends on, wherever the dataset lives."""
    rows = {name: _encode(items, prefix) for name, items in sorted(splits.items())}
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()


# ------------------------------------------------------------- split generation


def split_trainval(trainval: list[Datum], p_val: float = 0.2) -> tuple[list[Datum], list[Datum]]:
    """Hold out `round(p_val * n)` images per class as val (Dassl's split_trainval)."""
    rng = random.Random(SPLIT_SEED)
    by_label: dict[int, list[int]] = defaultdict(list)
    for idx, item in enumerate(trainval):
        by_label[item.label].append(idx)
    train, val = [], []
    for idxs in by_label.values():
        n_val = round(len(idxs) * p_val)
        if n_val < 1:
            raise UserError(
                f"Class '{trainval[idxs[0]].classname}' has {len(idxs)} train+val image(s): "
                "too few to hold out a validation image; add images to that class."
            )
        rng.shuffle(idxs)
        for n, idx in enumerate(idxs):
            (val if n < n_val else train).append(trainval[idx])
    return train, val


def split_by_class(
    groups: Sequence[tuple[int, str, list[str]]],
) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Split each class's images 50/20/30 into train/val/test (Dassl's default); `groups`
    holds (label, classname, image paths) per class, in the order to process."""
    rng = random.Random(SPLIT_SEED)
    train, val, test = [], [], []
    for label, cname, impaths in groups:
        impaths = list(impaths)
        rng.shuffle(impaths)
        n_train, n_val = round(len(impaths) * 0.5), round(len(impaths) * 0.2)
        if n_train < 1 or n_val < 1 or len(impaths) - n_train - n_val < 1:
            raise UserError(
                f"Class '{cname}' has {len(impaths)} image(s): too few for a train/val/test "
                "split; add images to that class."
            )
        parts = (impaths[:n_train], impaths[n_train : n_train + n_val], impaths[n_train + n_val :])
        for out, paths in zip((train, val, test), parts):
            out.extend(Datum(p, label, 0, cname) for p in paths)
    return train, val, test


def read_and_split_data(
    image_dir: str, ignored: Sequence[str] = ()
) -> tuple[list[Datum], list[Datum], list[Datum]]:
    """Train/val/test of `image_dir/<class>/<image>` (DTD's reader), 50/20/30 per class; the
    label is the index of the class folder in sorted order."""
    groups = []
    categories = [c for c in listdir_sorted(image_dir) if c not in ignored]
    categories = [c for c in categories if os.path.isdir(os.path.join(image_dir, c))]
    for label, category in enumerate(categories):
        folder = os.path.join(image_dir, category)
        names = listdir_sorted(folder, images_only=True)
        if not names:
            raise UserError(f"Class folder {folder} holds no images; add images or remove it.")
        groups.append((label, category, [os.path.join(folder, n) for n in names]))
    if not groups:
        raise UserError(f"{image_dir} has no class folders; expected <class>/<image> inside.")
    return split_by_class(groups)


# ------------------------------------------------------ few-shot and subsampling


def generate_fewshot_dataset(items: list[Datum], num_shots: int, rng: random.Random) -> list[Datum]:
    """K images per class, grouped by label in first-appearance order (Dassl semantics); a
    class with fewer keeps all of them; `num_shots < 1` returns `items`."""
    if num_shots < 1:
        return items
    by_label: dict[int, list[Datum]] = defaultdict(list)
    for item in items:
        by_label[item.label].append(item)
    out = []
    for group in by_label.values():
        out.extend(rng.sample(group, num_shots) if len(group) >= num_shots else group)
    return out


def base_new_labels(labels: Iterable[int]) -> tuple[list[int], list[int]]:
    """Sorted labels split into base (first ceil(n/2)) and new (the rest)."""
    labels = sorted(set(labels))
    m = math.ceil(len(labels) / 2)
    return labels[:m], labels[m:]


def select_classes(items: list[Datum], selected: Sequence[int]) -> list[Datum]:
    """Keep items whose label is in `selected`, relabelled to its index there."""
    relabel = {y: i for i, y in enumerate(selected)}
    return [
        Datum(d.impath, relabel[d.label], d.domain, d.classname)
        for d in items
        if d.label in relabel
    ]


def subsample_classes(*args: list[Datum], subsample: str = "all") -> list[list[Datum]]:
    """Dassl/CoOp subsample_classes: "all", "base" or "new" classes of args[0], relabelled."""
    if subsample == "all":
        return list(args)
    if subsample not in ("base", "new"):
        raise UserError(f"DATASET.SUBSAMPLE_CLASSES is '{subsample}'; use one of: all, base, new.")
    base, new = base_new_labels(d.label for d in args[0])
    selected = base if subsample == "base" else new
    return [select_classes(items, selected) for items in args]
