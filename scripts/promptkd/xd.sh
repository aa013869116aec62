#!/bin/bash
# PromptKD cross-dataset: distil the ImageNet teacher into a student on a target dataset:
#   1. teacher: $TEACHER_CKPT, else teacher_model/ImageNet-xd/VLPromptLearner_large/ (the
#      official place), else a PromptSRC ViT-L/14 teacher trained here on SOURCE (imagenet;
#      all classes, 16 shots) into $OUTPUT/promptkd/teacher_xd/<source>/;
#   2. student: PromptKD per seed on all training images of DATASET, without labels
#      (configs/trainers/PromptKD/xd.yaml: prompt depth 3, KD_WEIGHT 1000), tested on all
#      of its classes;
#   3. accuracy over the seeds (scripts/parse_results.py).
# Re-running skips finished stages.
# Usage: bash scripts/promptkd/xd.sh DATASET [SEED ...] [KEY VALUE ...]
#   Environment variables: see scripts/promptkd/common.sh, plus SOURCE (imagenet).
source "$(dirname "$0")/common.sh"
parse_args "$@"
SOURCE=${SOURCE:-imagenet}

OUT=$OUTPUT/promptkd/xd/$DATASET
if [ -n "${TEACHER_CKPT:-}" ]; then
  TEACHER=$TEACHER_CKPT
elif has_checkpoint teacher_model/ImageNet-xd/VLPromptLearner_large; then
  TEACHER=teacher_model/ImageNet-xd/VLPromptLearner_large
  echo "== Teacher: using $TEACHER"
else
  TEACHER_DIR=$OUTPUT/promptkd/teacher_xd/$SOURCE
  train_teacher "$SOURCE" all "$TEACHER_DIR"
  TEACHER=$TEACHER_DIR/VLPromptLearner
fi

train_students configs/trainers/PromptKD/xd.yaml "$OUT" "$TEACHER"
"$PYTHON" scripts/parse_results.py "$OUT"
