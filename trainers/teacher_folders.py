"""Where PromptKD teachers are looked for: the one list the scripts and the trainer share.

The released ViT-L/14 teachers unpack into ``teacher_model/<folder>/VLPromptLearner/``
(base-to-new) and ``teacher_model/ImageNet-xd/VLPromptLearner_large/`` (cross-dataset).
Their folder is the dataset's ``DATASET.NAME`` except for two, whose released folders are
spelled ``FGVCaircraft`` and ``StandfordCars``; the official README calls the root
``teacher_models``, its code ``teacher_model``. Every spelling is accepted.

Stdlib only, so that the shell scripts can run it by path without importing the package::

    eval "$(python trainers/teacher_folders.py base2novel FGVCAircraft)"

prints ``TEACHER_DIRS`` (a bash array of the folders, in search order),
``TEACHER_RELEASED`` (where the released teachers are) and ``TEACHER_SELF_TRAINED``
(1 for a built-in demo dataset, which has no released teacher and trains its own).
PromptKD (``trainers/promptkd_teacher.py``) searches the same folders.
"""

from __future__ import annotations

import argparse
import os
import shlex

TEACHER_ROOTS = ("teacher_model", "teacher_models")  # the official code's, its README's
# DATASET.NAME -> the folder names of its released teacher other than DATASET.NAME itself
RELEASED_FOLDER_NAMES = {"FGVCAircraft": ("FGVCaircraft",), "StanfordCars": ("StandfordCars",)}
MODEL_DIR = "VLPromptLearner"  # the model folder of PromptSRC / IVLP teachers
CROSS_DATASET = "ImageNet-xd"  # cross mode: <root>/ImageNet-xd/<model folder>_large/
RELEASED_TEACHERS = "links in https://github.com/zhengli97/PromptKD#preliminary"
# Built-in datasets without a released teacher: a script may train theirs unasked.
SELF_TRAINED_DATASETS = ("Digits",)


def teacher_dirs(
    modal: str,
    dataset_name: str,
    roots: tuple[str, ...] = TEACHER_ROOTS,
    model_dir: str = MODEL_DIR,
) -> list[str]:
    """The folders that may hold the teacher checkpoint, in search order: per root,
    ``DATASET.NAME`` first, then the released spellings (``modal``: base2novel or cross;
    ``model_dir``: the teacher trainer's model folder)."""
    if modal == "cross":
        return [os.path.join(root, CROSS_DATASET, f"{model_dir}_large") for root in roots]
    names = (dataset_name, *RELEASED_FOLDER_NAMES.get(dataset_name, ()))
    return [os.path.join(root, name, model_dir) for root in roots for name in names]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Print the teacher search folders as bash code.")
    p.add_argument("modal", choices=("base2novel", "cross"))
    p.add_argument("dataset_name", help="DATASET.NAME (base2novel) or the source dataset's")
    p.add_argument("--root", help="search only this folder of teachers")
    args = p.parse_args(argv)
    roots = (args.root,) if args.root else TEACHER_ROOTS
    dirs = " ".join(shlex.quote(d) for d in teacher_dirs(args.modal, args.dataset_name, roots))
    print(f"TEACHER_DIRS=({dirs})")
    print(f"TEACHER_RELEASED={shlex.quote(RELEASED_TEACHERS)}")
    print(f"TEACHER_SELF_TRAINED={int(args.dataset_name in SELF_TRAINED_DATASETS)}")


if __name__ == "__main__":
    main()
