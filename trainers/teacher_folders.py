"""Where PromptKD teachers are looked for: the one list and search of the trainer and scripts.

The released teachers unpack into ``teacher_model/<DATASET.NAME>/VLPromptLearner/`` (two are
spelled ``FGVCaircraft`` and ``StandfordCars``; the official README says ``teacher_models``)
and ``teacher_model/ImageNet-xd/VLPromptLearner_large/`` (cross-dataset). No torch, so that
scripts/promptkd/common.sh runs the whole search (``main``) by path with python3.
"""

from __future__ import annotations

import argparse
import os
import sys

from dassl_ext.utils.checkpoint import BEST_FILE, find_checkpoint

TEACHER_ROOTS = ("teacher_model", "teacher_models")  # the official code's, its README's
# DATASET.NAME -> the folder names of its released teacher other than DATASET.NAME itself
RELEASED_FOLDER_NAMES = {"FGVCAircraft": ("FGVCaircraft",), "StanfordCars": ("StandfordCars",)}
MODEL_DIR = "VLPromptLearner"  # the model folder of PromptSRC / IVLP teachers
CROSS_DATASET = "ImageNet-xd"  # cross mode: <root>/ImageNet-xd/<model folder>_large/
RELEASED_TEACHERS = "links in https://github.com/zhengli97/PromptKD#preliminary"
SELF_TRAINED_DATASETS = ("Digits",)  # built in, no released teacher: a script trains one


def teacher_dirs(
    modal: str, dataset_name: str, roots: tuple = TEACHER_ROOTS, model_dir: str = MODEL_DIR
) -> list[str]:
    """The folders that may hold the teacher checkpoint, in search order: per root,
    ``DATASET.NAME`` first, then the released spellings."""
    if modal == "cross":
        return [os.path.join(root, CROSS_DATASET, f"{model_dir}_large") for root in roots]
    names = (dataset_name, *RELEASED_FOLDER_NAMES.get(dataset_name, ()))
    return [os.path.join(root, name, model_dir) for root in roots for name in names]


def first_checkpoint(folders: list[str]) -> tuple[str | None, str]:
    """``(checkpoint, folder)`` of the first folder holding one (its best file, else its newest
    epoch), or ``(None, where it was looked for)``."""
    for folder in folders:
        path = find_checkpoint(folder)
        if os.path.isfile(path):
            return path, folder
    listed = ", ".join(f"{folder}/" for folder in folders)
    return None, f"no {BEST_FILE} or model.pth.tar-<N> in {listed} (relative to {os.getcwd()})"


def main(argv: list[str] | None = None) -> int:
    """Print the folder holding a teacher checkpoint, else ``OWN_RUN/VLPromptLearner`` for a
    finished teacher the script trained there, else nothing when it may train one; otherwise
    say where it looked and what to do, and return 1."""
    p = argparse.ArgumentParser(description="Print the folder of the teacher to distil from.")
    p.add_argument("modal", choices=("base2novel", "cross"))
    p.add_argument("dataset_name", help="DATASET.NAME (base2novel) or the source dataset's")
    p.add_argument("own_run", help="where the script trains a teacher of its own")
    p.add_argument("--root", help="search only this folder of teachers")
    p.add_argument("--may-train", action="store_true", help="TRAIN_TEACHER=1")
    p.add_argument("--backbone", default="ViT-L/14", help="the backbone a teacher trains on")
    args = p.parse_args(argv)
    dirs = teacher_dirs(args.modal, args.dataset_name, (args.root,) if args.root else TEACHER_ROOTS)
    own = os.path.join(args.own_run, MODEL_DIR)
    path, folder = first_checkpoint(dirs)
    if path is None and os.path.isfile(os.path.join(args.own_run, "results.json")):
        path, folder = first_checkpoint([own])
    if path is not None:
        print(folder)
        return 0
    if args.may_train or args.dataset_name in SELF_TRAINED_DATASETS:
        return 0
    what = f"for {args.dataset_name}"
    if args.modal == "cross":
        what = f"for cross-dataset runs (trained on {args.dataset_name})"
    listed = "".join(f"  {d}/\n" for d in dirs)
    print(
        f"Error: no teacher checkpoint ({BEST_FILE} or model.pth.tar-<N>) {what} in\n{listed}"
        f"  {own}/ (a finished teacher trained by this script)\n(relative to {os.getcwd()}). "
        f"Unpack the released ViT-L/14 teacher ({RELEASED_TEACHERS})\ninto one of the first "
        f"{len(dirs)} folders, or set TEACHER_CKPT to a teacher file or folder,\nor run again "
        f"with TRAIN_TEACHER=1 to train one here (PromptSRC on {args.backbone},\n16 shots: hours "
        "on a GPU).",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
