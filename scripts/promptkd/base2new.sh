#!/bin/bash
# PromptKD base-to-new, the whole pipeline for one dataset:
#   1. teacher: PromptSRC on ViT-L/14 (configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml,
#      16 shots, base classes, seed TEACHER_SEED), unless a teacher checkpoint exists:
#      $TEACHER_CKPT, else teacher_model/<DATASET.NAME>/VLPromptLearner/ (the official place:
#      model-best.pth.tar or model.pth.tar-<N>), else our own $OUTPUT/promptkd/teacher/<dataset>/;
#   2. student: PromptKD per seed on all training images, without labels
#      (configs/trainers/PromptKD/base2new/<dataset>.yaml: SHOTS 0, the dataset's KD_WEIGHT),
#      tested on base and new classes;
#   3. base / new / HM over the seeds (scripts/parse_results.py).
# Re-running skips finished stages (a results.json in the run folder).
# Usage: bash scripts/promptkd/base2new.sh DATASET [SEED ...] [KEY VALUE ...]
#   DATASET: a file stem under configs/datasets/ (oxford_pets, dtd, digits ...).
#   Environment variables: see scripts/promptkd/common.sh.
source "$(dirname "$0")/common.sh"
parse_args "$@"

NAME=$(dataset_name "$DATASET")
OUT=$OUTPUT/promptkd/base2new/$DATASET
if [ -n "${TEACHER_CKPT:-}" ]; then
  TEACHER=$TEACHER_CKPT
elif has_checkpoint "teacher_model/$NAME/VLPromptLearner"; then
  TEACHER=teacher_model/$NAME/VLPromptLearner
  echo "== Teacher: using $TEACHER"
else
  TEACHER_DIR=$OUTPUT/promptkd/teacher/$DATASET
  train_teacher "$DATASET" base "$TEACHER_DIR"
  TEACHER=$TEACHER_DIR/VLPromptLearner
fi

train_students "configs/trainers/PromptKD/base2new/$DATASET.yaml" "$OUT" "$TEACHER"
"$PYTHON" scripts/parse_results.py "$OUT"
