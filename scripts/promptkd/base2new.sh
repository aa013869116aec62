#!/bin/bash
# PromptKD base-to-new, the whole pipeline for one dataset:
#   1. teacher: $TEACHER_CKPT, else the released teacher in teacher_model/<folder>/VLPromptLearner/
#      (model-best.pth.tar or model.pth.tar-<N>; <folder> is DATASET.NAME or the released
#      spelling, e.g. FGVCaircraft; trainers/teacher_folders.py searches every place), else one
#      trained here before into $OUTPUT/promptkd/teacher/<dataset>/. With none it stops and
#      says what to do, unless TRAIN_TEACHER=1 (or the dataset is the built-in demo): then it
#      trains PromptSRC on ViT-L/14 (configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml,
#      16 shots, base classes, seed TEACHER_SEED) into that folder;
#   2. student: PromptKD per seed on all training images, without labels
#      (configs/trainers/PromptKD/base2new/<dataset>.yaml: SHOTS 0, the dataset's KD_WEIGHT),
#      tested on base and new classes;
#   3. base / new / HM over the seeds (scripts/parse_results.py).
# Re-running skips finished stages (a results.json made with the same configuration; one
# made with another stops the script with the differences: train.py --skip-finished).
# Usage: bash scripts/promptkd/base2new.sh DATASET [SEED ...] [KEY VALUE ...]
#   DATASET: a file stem under configs/datasets/ (oxford_pets, dtd, digits ...).
#   Environment variables: see scripts/promptkd/common.sh.
source "$(dirname "$0")/common.sh"
parse_args "$@"

base2new_teacher

train_students "${STUDENT_CFG:-configs/trainers/PromptKD/base2new/$DATASET.yaml}" "$OUT" "$TEACHER"
# shellcheck disable=SC2086  # a list of seeds: the table takes only these
run_python scripts/parse_results.py "$OUT" --seeds $SEED_LIST
