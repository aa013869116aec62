#!/bin/bash
# PromptKD stored teacher views for base2new.sh's students of one dataset, built ahead of
# time (a student run builds them too when they are missing):
#   1. teacher: found (or trained, TRAIN_TEACHER=1) exactly as base2new.sh does;
#   2. its text features and K views per training image with the teacher's features of each
#      (TRAINER.PROMPTKD.STORED_VIEWS K: STORED_VIEWS env, default 20 = the recipe's epochs,
#      unless given as an option), into $OUTPUT/promptkd/base2new/<dataset>/teacher_views/<key>/
#      where the students of base2new.sh look; the estimated size is printed before it starts.
#      NPROC=N (and NNODES): N torchrun processes build the shards; a killed build resumes.
# Then train the students from it with the same K:
#   bash scripts/promptkd/base2new.sh DATASET [SEED ...] TRAINER.PROMPTKD.STORED_VIEWS K
# Usage: bash scripts/promptkd/teacher_views.sh DATASET [KEY VALUE ...]
#   DATASET: a file stem under configs/datasets/. KEY VALUE pairs: as for base2new.sh (they
#   must match the students' for the bank to be theirs). Environment: see common.sh.
source "$(dirname "$0")/common.sh"
parse_args "$@"

base2new_teacher

VIEWS=(TRAINER.PROMPTKD.STORED_VIEWS "${STORED_VIEWS:-20}")
for ((i = 0; i < ${#OPTS[@]}; i += 2)); do
  if [ "${OPTS[$i]}" = TRAINER.PROMPTKD.STORED_VIEWS ]; then VIEWS=(); fi
done
echo "== Stored teacher views: $DATASET -> $OUT/teacher_views"
# --output-dir only places the caches (beside it, as for the students' seed folders)
run_launched scripts/promptkd/build_teacher_views.py --root "$DATA" --output-dir "$OUT/teacher_views" \
  --seed 1 --trainer PromptKD --dataset-config-file "$(dataset_yaml "$DATASET")" \
  --config-file "${STUDENT_CFG:-configs/trainers/PromptKD/base2new/$DATASET.yaml}" \
  MODEL.BACKBONE.NAME "$STUDENT_BACKBONE" TRAINER.PROMPTKD.TEACHER_NAME "$TEACHER_BACKBONE" \
  TRAINER.PROMPTKD.TEACHER_CKPT "$TEACHER" "${VIEWS[@]}" "${OPTS[@]}"
