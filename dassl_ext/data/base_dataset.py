"""DatasetBase: reads a dataset folder once and assigns the split roles from the config.

A benchmark subclass declares its folder, image folder, CoOp split file, class-name fixes
and, where the split file may be missing, ``read_raw()`` building the splits from the raw
annotations. Split files, few-shot caching, base/new classes, protocols and the checks of
the files on disk live here, once.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, replace

from dassl_ext.config.rules import OneOf, check_rules, register_config_rules
from dassl_ext.data.images import CHECK_IMAGES_MODES, check_images
from dassl_ext.data.splits import (
    Datum,
    base_new_labels,
    generate_fewshot_dataset,
    read_and_split_data,
    read_json,
    read_split,
    save_split,
    select_classes,
    split_digest,
    split_trainval,
    subsample_classes,
)
from dassl_ext.errors import UserError
from dassl_ext.utils.distributed import broadcast_object

logger = logging.getLogger(__name__)

# Version of the few-shot draw (generate_fewshot_dataset and the order of its calls); a
# cache made by another version is drawn again. Change it whenever the draw changes.
FEWSHOT_VERSION = 1

_RULES = (
    OneOf("DATASET.SUBSAMPLE_CLASSES", ("all", "base", "new")),
    OneOf("DATASET.PROTOCOL", ("paper", "clean")),
    OneOf("DATASET.EVAL_SPLITS", ("standard", "base_new")),
    OneOf("DATASET.CHECK_IMAGES", CHECK_IMAGES_MODES),
)
register_config_rules(*_RULES)


@dataclass
class EvalSplit:
    """Images of one evaluated split, relabelled 0..len(class_ids)-1; `class_ids[k]` is the
    index into the dataset's `classnames` of local label k."""

    items: list[Datum]
    class_ids: list[int]


class DatasetBase:
    """Base class of all datasets; ``DATASET_REGISTRY.get(name)(cfg)`` gives `train_x`, `val`,
    `test` (lists of Datum), `classnames`, `lab2cname`, `num_classes`, `protocol`,
    `eval_splits` ({name: EvalSplit}) and `val_split` (EvalSplit or None)."""

    dataset_dir: str = ""  # folder under DATASET.ROOT
    image_dir: str = ""  # folder under dataset_dir; split-file paths are relative to it
    split_file: str | None = None  # CoOp split file in dataset_dir; None: always read_raw()
    classname_fixes: dict[str, str] = {}  # applied to every class name that was read
    download_name: str = ""  # argument of scripts/download_data.py ("" if not downloadable)
    has_val_split: bool = True  # False: its files hold no validation images (ImageNet)
    class_prompts: dict[str, str] | None = None  # {class name: its own prompt, "{}" for the name}
    # Why there is nothing to evaluate ("": there is): the summary then shows no val/test sizes
    nothing_to_evaluate: str = ""
    # How to drop unusable images, completing "replace or re-download them, or ..."
    remove_images_hint: str = "remove them from the split file"

    # Dassl's static helpers, under their usual names for read_raw().
    split_trainval = staticmethod(split_trainval)
    read_and_split_data = staticmethod(read_and_split_data)

    def __init__(self, cfg) -> None:
        self.name = type(self).__name__
        self.root = os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT))
        self.dataset_dir = os.path.join(self.root, type(self).dataset_dir)
        self.image_dir = os.path.join(self.dataset_dir, type(self).image_dir).rstrip(os.sep)
        check_rules(cfg, _RULES)  # also for a config that validate_config did not see
        self.protocol, self.eval_split_mode = cfg.DATASET.PROTOCOL, cfg.DATASET.EVAL_SPLITS
        self.require(self.dataset_dir)

        # Everything that can be known about the data is checked here, before training.
        fix = self.classname_fixes
        train, val, test = (
            [replace(d, classname=fix.get(d.classname, d.classname)) for d in items]
            for items in self.read_data()
        )
        self._check_labels(train, val, test)
        self._assign_roles(cfg, train, val, test)
        self._check_not_empty(cfg)
        self._check_images(cfg.DATASET.CHECK_IMAGES)
        if self.protocol == "clean" and not self.val:  # e.g. a split file with no val images
            self._require_val_for_selection(cfg)

    @classmethod
    def check_config(cls, cfg) -> None:
        """What the config asks of the dataset's files that they do not have (called by
        ``validate_config``, before any work)."""
        if cfg.DATASET.PROTOCOL == "clean" and not cls.has_val_split:
            cls._require_val_for_selection(cfg)
        if cfg.TEST.SPLIT in ("base", "new") and cfg.DATASET.EVAL_SPLITS != "base_new":
            raise UserError(
                f"TEST.SPLIT is '{cfg.TEST.SPLIT}', which only DATASET.EVAL_SPLITS base_new "
                "reports; set DATASET.EVAL_SPLITS base_new or TEST.SPLIT test."
            )

    @classmethod
    def _require_val_for_selection(cls, cfg) -> None:
        if cfg.TEST.FINAL_MODEL == "best_val":
            raise UserError(
                f"{cls.__name__} has no validation split to select a checkpoint on under "
                "DATASET.PROTOCOL clean; set TEST.FINAL_MODEL last_step or DATASET.PROTOCOL paper."
            )

    # ------------------------------------------------------------ reading hooks

    @property
    def split_path(self) -> str:
        return os.path.join(self.dataset_dir, self.split_file or "")

    @property
    def _source(self) -> str:  # where the splits were read from, for messages
        return self.split_path if self.split_file else self.dataset_dir

    def read_data(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """Train, val and test lists: the split file if present, else read_raw() (then saved)."""
        if self.split_file and os.path.isfile(self.split_path):
            splits = read_split(self.split_path, self.image_dir)
            return splits["train"], splits["val"], splits["test"]
        try:
            train, val, test = self.read_raw()
        except KeyError as e:  # an annotation names a class its class list lacks
            raise UserError(
                f"{self.name}: the annotation files in {self.dataset_dir} use class {e}, which "
                f"their class list does not define; {self.fix_hint()}."
            ) from None
        # Text check, as for split-file rows (splits.read_split): symlinks may point out.
        for d in train + val + test:
            if not os.path.normpath(d.impath).startswith(self.dataset_dir + os.sep):
                raise UserError(
                    f"{self.name}: the annotation files in {self.dataset_dir} name image "
                    f"{d.impath}, which is outside that folder; fix the annotation files."
                )
        if self.split_file:
            self._save({"train": train, "val": val, "test": test}, self.split_path, "split file")
        return train, val, test

    def _save(self, splits: dict, path: str, what: str, extra: dict | None = None) -> None:
        try:
            save_split(splits, path, self.image_dir, extra)
            logger.info("Saved %s to %s", what, path)
        except OSError as e:  # a read-only dataset folder still trains
            logger.warning("Could not save %s %s: %s", what, path, e)

    def read_raw(self) -> tuple[list[Datum], list[Datum], list[Datum]]:
        """Build train/val/test from the raw annotation files; override where they exist."""
        raise UserError(
            f"{self.name}: split file {self.split_path} does not exist; {self.fix_hint()}."
        )

    def require(self, path: str) -> str:
        """`path` if it exists, else a UserError naming it and how to get it."""
        if not os.path.exists(path):
            why = ""
            if self.split_file and not os.path.isfile(self.split_path):
                why = f" (needed because split file {self.split_path} is missing)"
            raise UserError(f"{self.name}: {path} does not exist{why}; {self.fix_hint()}.")
        return path

    def fix_hint(self) -> str:
        """How to get the dataset, for error messages."""
        get = "see DATASETS.md"
        if self.download_name:
            get = f"run `python scripts/download_data.py {self.download_name}`"
        folder = os.path.basename(self.dataset_dir)
        return f"{get}, or set DATASET.ROOT to the folder that contains {folder}/ (see DATASETS.md)"

    # ------------------------------------------------------------- split roles

    def generate_fewshot(
        self, train: list[Datum], val: list[Datum], num_shots: int, seed: int
    ) -> tuple[list[Datum], list[Datum]]:
        """K-shot train and min(K, 4)-shot val (Dassl's draws after random.seed(SEED): train
        first, then val), cached in ``split_fewshot/shot_K-seed_S.json`` under a key of the
        rows it was drawn from, K, the seed and FEWSHOT_VERSION; a cache with another key,
        or unreadable, is drawn again. Without a fixed seed (SEED < 0) nothing is cached."""
        self._warn_short_classes(train, num_shots)
        if seed < 0:  # one draw for all processes (rank 0's), logged so it can be repeated
            draw_seed = broadcast_object(random.randrange(2**31))
            logger.info(
                f"SEED {seed} (no fixed seed): few-shot split drawn with seed {draw_seed}, "
                "not cached"
            )
            return _draw(train, val, num_shots, draw_seed)
        path = os.path.join(self.dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.json")
        digest = split_digest({"train": train, "val": val}, self.image_dir)
        key = dict(split_sha256=digest, num_shots=num_shots, seed=seed, version=FEWSHOT_VERSION)
        cached = self._read_fewshot_cache(path, key, train, val)
        if cached is not None:
            return cached
        train, val = _draw(train, val, num_shots, seed)
        self._save({"train": train, "val": val}, path, "few-shot split", {"derived_from": key})
        return train, val

    def _read_fewshot_cache(
        self, path: str, key: dict, train: list[Datum], val: list[Datum]
    ) -> tuple[list[Datum], list[Datum]] | None:
        """The cached draw if it was made from exactly these lists, else None (logged)."""
        if not os.path.isfile(path):
            return None
        try:
            stored = read_json(path).get("derived_from")
            cached = read_split(path, self.image_dir, ("train", "val"))
        except (UserError, OSError) as e:
            why = str(e).split("; ")[0].replace(f"{path}: ", "").replace(f"{path} ", "")
            logger.warning("Few-shot split %s cannot be used (%s); drawing it again", path, why)
            return None
        if stored != key:
            old = stored if isinstance(stored, dict) else {}
            changed = ", ".join(
                f"{k} {old.get(k)} -> {v}" for k, v in key.items() if old.get(k) != v
            )
            logger.info(
                f"Few-shot split {path} was drawn from other data or by another version "
                f"({changed}); drawing it again"
            )
            return None
        if not set(cached["train"]) <= set(train) or not set(cached["val"]) <= set(val):
            logger.warning(
                f"Few-shot split {path} names images that are not in the train/val lists it "
                "was drawn from; drawing it again"
            )
            return None
        logger.info("Loading few-shot split from %s", path)
        return cached["train"], cached["val"]

    def _warn_short_classes(self, train: list[Datum], num_shots: int) -> None:
        """Classes with fewer than K training images keep all they have (Dassl): say which."""
        counts = Counter(d.label for d in train)
        names = {d.label: d.classname for d in train}
        short = sorted((n, names[y]) for y, n in counts.items() if n < num_shots)
        if short:
            logger.warning(
                f"{self.name}: DATASET.NUM_SHOTS is {num_shots}, but {len(short)} of "
                f"{len(counts)} classes have fewer training images and use all they have: "
                + _listed([f"'{name}' ({n})" for n, name in short], ", ", 10, " and {} more")
                + "."
            )

    def _assign_roles(self, cfg, train: list[Datum], val: list[Datum], test: list[Datum]) -> None:
        if cfg.DATASET.NUM_SHOTS >= 1:
            train, val = self.generate_fewshot(train, val, cfg.DATASET.NUM_SHOTS, cfg.SEED)
        paper = self.protocol == "paper"
        if self.eval_split_mode == "base_new":
            # PromptKD base-to-new: train on every class, report base and new test apart.
            if cfg.DATASET.SUBSAMPLE_CLASSES != "all":
                logger.info("base_new trains on all classes; SUBSAMPLE_CLASSES is not used.")
            base, new = base_new_labels(d.label for d in train)
            self.eval_splits = {
                "base": EvalSplit(select_classes(test, base), base),
                "new": EvalSplit(select_classes(test, new), new),
            }
            val_items = self.eval_splits["base"].items if paper else select_classes(val, base)
            self.val_split = EvalSplit(val_items, base)
        else:
            train, val, test = subsample_classes(
                train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES
            )
            all_ids = sorted({d.label for d in train})
            self.eval_splits = {"test": EvalSplit(test, all_ids)}
            # The official code selects on the test split for every trainer.
            self.val_split = EvalSplit(test if paper else val, all_ids)
        self.train_x = train
        self.lab2cname = {d.label: d.classname for d in sorted(train, key=lambda d: d.label)}
        self.num_classes = len(self.lab2cname)
        self.classnames = [self.lab2cname[k] for k in range(self.num_classes)]
        self.val = self.val_split.items
        self.test = next(iter(self.eval_splits.values())).items
        if not self.val:
            self.val_split = None

    # --------------------------------------------------------------- validation

    def _check_labels(self, train: list[Datum], val: list[Datum], test: list[Datum]) -> None:
        source = self._source
        if not train:
            raise UserError(
                f"{self.name}: no training images were found in {source}; {self.fix_hint()}."
            )
        labels = {d.label for d in train}
        # The first gap, without building range(max + 1): a label of 10**9 is a typo.
        missing = next((i for i, y in enumerate(sorted(labels)) if y != i), None)
        if missing is not None or min(labels) < 0:
            bad = min(labels) if min(labels) < 0 else missing
            raise UserError(
                f"{self.name}: class label {bad} has no training images in {source}; "
                f"labels must run 0..{_number(max(labels))} with images in every class."
            )
        splits = {"train": train, "val": val, "test": test}
        for name, items in splits.items():
            extra = sorted({d.label for d in items} - labels)
            if extra:
                raise UserError(
                    f"{self.name}: the {name} split of {source} uses label {extra[0]}, which has "
                    "no training images; fix or regenerate the split file."
                )
        names = {d.label: d.classname for d in train}
        label_of: dict[str, Datum] = {}  # an image has one class, whichever split lists it
        spelled = {n: [os.path.normpath(d.impath) for d in items] for n, items in splits.items()}
        for name, items in splits.items():
            for path, d in zip(spelled[name], items):
                first = label_of.setdefault(path, d)
                if first.label != d.label:
                    raise UserError(
                        f"{self.name}: image {d.impath} is listed in {source} as class "
                        f"{first.label} '{first.classname}' and as class {d.label} "
                        f"'{d.classname}' ({name} split), so one of them is wrong; fix or "
                        "regenerate the split file."
                    )
        for name, items in splits.items():
            for d in items:
                if names[d.label] != d.classname:
                    raise UserError(
                        f"{self.name}: label {d.label} is class '{names[d.label]}' in the train "
                        f"split of {source} but '{d.classname}' in its {name} split "
                        f"({d.impath}); fix or regenerate the split file."
                    )
            # An image listed twice counts twice, in training and in the accuracy.
            counts = Counter(spelled[name])  # ./a and a: one image
            twice = sorted(p for p, n in counts.items() if n > 1)
            if twice:
                logger.warning(
                    f"{self.name}: {len(twice)} image(s) are listed more than once in the "
                    f"{name} split of {source} (e.g. {twice[0]}); each copy counts (in "
                    "training and in the accuracy)."
                )
        self._warn_indistinct_names(names)
        if self.has_val_split:  # test-only datasets train on their test images on purpose
            leaked = {d.impath for d in train} & {d.impath for d in test}
            if leaked:
                logger.warning(
                    f"{self.name}: {len(leaked)} image(s) of {source} are in both the train "
                    f"and the test split (e.g. {min(leaked)}); test accuracy on them is not a "
                    "test."
                )

    def _warn_indistinct_names(self, names: dict[int, str]) -> None:
        """CLIP's tokenizer lowercases: 'Cat' and 'cat' get the same text features (ImageNet's
        own list has two 'crane's)."""
        by_text: dict[str, list[int]] = {}
        for label in sorted(names):
            by_text.setdefault(" ".join(names[label].lower().split()), []).append(label)
        same = [
            " and ".join(f"{y} '{names[y]}'" for y in ys) for ys in by_text.values() if len(ys) > 1
        ]
        if same:
            logger.warning(
                f"{self.name}: {len(same)} group(s) of classes in {self._source} have names CLIP "
                "cannot tell apart (its tokenizer ignores case): labels "
                + _listed(same, "; ", 3, " (and {} more)")
                + "; their text prompts are the same, so text-based classifiers confuse them: "
                "rename one of each."
            )

    def _check_not_empty(self, cfg) -> None:
        """Every split and class subset the run will use holds images (else training would
        run to its end and fail at the first evaluation)."""
        source, subsample = self._source, cfg.DATASET.SUBSAMPLE_CLASSES
        if not self.train_x:
            raise UserError(
                f"{self.name}: DATASET.SUBSAMPLE_CLASSES {subsample} selects no classes of "
                f"{source}, which has too few classes to split into base and new; use "
                "DATASET.SUBSAMPLE_CLASSES all or a dataset with at least 2 classes."
            )
        for name, split in self.eval_splits.items():
            if split.items:
                continue
            if not split.class_ids:
                raise UserError(
                    f"{self.name}: the '{name}' split has no classes ({source} has "
                    f"{self.num_classes} class, and base_new needs at least 2); use "
                    "DATASET.EVAL_SPLITS standard or a dataset with at least 2 classes."
                )
            of = f" of the {subsample} classes" if subsample != "all" and name == "test" else ""
            raise UserError(
                f"{self.name}: the '{name}' split has no images: {source} lists no test "
                f"images{of}; add test images to the split file (or regenerate it)."
            )

    def _check_images(self, mode: str) -> None:
        """Find unusable images now, not after training (``DATASET.CHECK_IMAGES``)."""
        paths = {d.impath for d in self.train_x} | {d.impath for d in self.val}
        for split in self.eval_splits.values():
            paths.update(d.impath for d in split.items)
        bad = check_images(paths, mode)
        missing = [p for p, why in bad if why == "does not exist"]
        if bad and len(missing) == len(bad):  # a dataset only partly present: how to get it
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UserError(
                f"{self.name}: image {missing[0]} does not exist{more}; {self.fix_hint()}."
            )
        if bad:
            raise UserError(
                f"{self.name}: {len(bad)} of {len(paths)} images cannot be used: "
                + _listed([f"{p} {why}" for p, why in bad], "; ", 3, " (and {} more)")
                + f"; replace or re-download them, or {self.remove_images_hint} "
                "(DATASET.CHECK_IMAGES off skips this check)."
            )


def _draw(train: list[Datum], val: list[Datum], num_shots: int, seed: int):
    rng = random.Random(seed)
    train = generate_fewshot_dataset(train, num_shots, rng)
    return train, generate_fewshot_dataset(val, min(num_shots, 4), rng)


def _listed(items: list[str], sep: str, limit: int, more: str) -> str:
    """The first `limit` of `items` joined by `sep`, then `more` with the count left out."""
    rest = f"{more.format(len(items) - limit)}" if len(items) > limit else ""
    return sep.join(items[:limit]) + rest


def _number(n: int) -> str:
    text = str(n)
    return text if len(text) <= 12 else f"{text[:6]}... ({len(text)} digits)"
