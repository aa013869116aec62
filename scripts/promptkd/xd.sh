#!/bin/bash
# PromptKD cross-dataset: distil the ImageNet teacher into a student on a target dataset:
#   1. teacher: $TEACHER_CKPT, else the released teacher in
#      teacher_model/ImageNet-xd/VLPromptLearner_large/ (the official place), else one trained
#      here before into $OUTPUT/promptkd/teacher_xd/<source>/. With none it stops and says
#      what to do, unless TRAIN_TEACHER=1: then it trains a PromptSRC ViT-L/14 teacher on
#      SOURCE (imagenet; all classes, 16 shots) into that folder;
#   2. student: PromptKD per seed on all training images of DATASET, without labels
#      (configs/trainers/PromptKD/xd.yaml: prompt depth 3, KD_WEIGHT 1000), tested on all
#      of its classes;
#   3. accuracy over the seeds (scripts/parse_results.py).
# Re-running skips finished stages (a results.json made with the same configuration; one
# made with another stops the script with the differences: train.py --skip-finished).
# Usage: bash scripts/promptkd/xd.sh DATASET [SEED ...] [KEY VALUE ...]
#   Environment variables: see scripts/promptkd/common.sh, plus SOURCE (imagenet).
source "$(dirname "$0")/common.sh"
parse_args "$@"
SOURCE=${SOURCE:-imagenet}
dataset_yaml "$SOURCE" > /dev/null

OUT=$OUTPUT/promptkd/xd/$DATASET
TEACHER_DIR=$OUTPUT/promptkd/teacher_xd/$SOURCE
find_teacher cross "$(dataset_name "$SOURCE")" "$TEACHER_DIR"
if [ -z "$TEACHER" ]; then
  train_teacher "$SOURCE" all "$TEACHER_DIR"
  TEACHER=$TEACHER_DIR/VLPromptLearner
fi

train_students "${STUDENT_CFG:-configs/trainers/PromptKD/xd.yaml}" "$OUT" "$TEACHER"
# shellcheck disable=SC2086  # a list of seeds: the table takes only these
run_python scripts/parse_results.py "$OUT" --seeds $SEED_LIST
