#!/bin/bash
# The offline demo: the whole PromptKD base-to-new pipeline on the built-in Digits dataset
# (scikit-learn's handwritten digits, written into $DATA on first use) with the pretrained
# CLIP stand-ins shipped in the repository (digits-teacher, digits-student: small CLIPs
# pretrained by scripts/pretrain_clip.py on the Digits train split; see their manifests in
# dassl_ext/modeling/weights/). Steps:
#   1. the PromptSRC teacher on digits-teacher (5 base classes, 16 shots, labels);
#   2. PromptKD students on digits-student, one per seed, on all training images WITHOUT
#      labels (scripts/promptkd/base2new.sh; recipe configs/trainers/PromptKD/base2new/
#      digits_standins.yaml);
#   3. zero-shot CLIP with each stand-in, and the teacher evaluated on base and new;
#   4. one base / new / HM table of the four, a bar chart of the four side by side
#      (demo_models.png, scripts/demo_table.py --plot), and the student's plots.
# No download; about 1.5 minutes on 2 CPU cores (a re-run skips every finished run).
# Usage: bash scripts/demo.sh [SEED ...] [KEY VALUE ...]   (default seeds: $SEEDS, else 1 2)
# Env: DATA (./data), OUTPUT (./output/demo), PYTHON (python), DRY_RUN (1: print the python
# commands, run none). The table and plots take only the seeds of this call, not those of
# earlier calls in the same OUTPUT; finished runs of the same configuration are skipped.
set -euo pipefail
# shellcheck source=scripts/lib/abs_env.sh
source "$(dirname "$0")/lib/abs_env.sh"
cd "$(dirname "$0")/.."

export DATA=${DATA:-./data}
export OUTPUT=${OUTPUT:-./output/demo}
export TEACHER_BACKBONE=digits-teacher STUDENT_BACKBONE=digits-student
export TRAIN_TEACHER=1  # no released teacher for Digits: train one (a minute on a CPU)
# The students' recipe for the stand-ins, chosen on a val-only copy of Digits by
# scripts/choose_standin_recipe.py (see the file); the two
# seeds train side by side (on a CPU, small models run faster in processes than threads).
export STUDENT_CFG=${STUDENT_CFG:-configs/trainers/PromptKD/base2new/digits_standins.yaml}
export SEED_JOBS=${SEED_JOBS:-2}
export SEEDS=${SEEDS:-1 2}
PYTHON=${PYTHON:-python}
# The seeds of this call (leading numbers; base2new.sh checks them): the table's rows.
SEED_LIST=()
for arg in "$@"; do
  if [[ ! $arg =~ ^[-+]?[0-9]+$ ]]; then break; fi
  SEED_LIST+=("$arg")
done
if [ ${#SEED_LIST[@]} = 0 ]; then read -ra SEED_LIST <<< "$SEEDS"; fi

# The stand-ins see 32 x 32 images through 4 layers (prompt depth 4, not 9). Digits are
# not mirror-symmetric: shifts by up to 2 pixels replace the flips and crops of photos.
STANDIN_OPTS=(
  INPUT.SIZE "(32, 32)" INPUT.TRANSFORMS "['random_crop', 'normalize']" INPUT.CROP_PADDING 2
  TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION 4 TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT 4
  TRAINER.PROMPTKD.PROMPT_DEPTH_VISION 4 TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT 4
  DATALOADER.NUM_WORKERS 0 DATALOADER.TEST.BATCH_SIZE 256 TRAIN.PRINT_FREQ 100
)
bash scripts/promptkd/base2new.sh digits "$@" "${STANDIN_OPTS[@]}"

# The reference rows: zero-shot CLIP with each stand-in, and the teacher on new classes.
source scripts/lib/experiments.sh
OUT=$OUTPUT/promptkd
DIGITS=(--dataset-config-file configs/datasets/digits.yaml)
for model in digits-teacher digits-student; do
  run_eval "$OUT/zeroshot/digits/$model" --trainer ZeroshotCLIP "${DIGITS[@]}" \
    --config-file configs/trainers/CoOp/vit_b16.yaml MODEL.BACKBONE.NAME "$model" \
    "${STANDIN_OPTS[@]}" DATASET.EVAL_SPLITS base_new
done
run_eval "$OUT/teacher/digits_base_new" --trainer PromptSRC "${DIGITS[@]}" \
  --config-file "configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml" \
  --model-dir "$OUT/teacher/digits" MODEL.BACKBONE.NAME digits-teacher "${STANDIN_OPTS[@]}" DATASET.EVAL_SPLITS base_new

echo "== Digits, base-to-new (5 + 5 classes), pretrained stand-ins, seeds ${SEED_LIST[*]}"
run_python scripts/demo_table.py \
  "zero-shot CLIP (teacher)=$OUT/zeroshot/digits/digits-teacher" \
  "PromptSRC teacher (labels, base)=$OUT/teacher/digits_base_new" \
  "zero-shot CLIP (student)=$OUT/zeroshot/digits/digits-student" \
  "PromptKD student (no labels)=$OUT/base2new/digits" \
  --markdown "$OUT/base2new/digits/demo_table.md" --plot "$OUT/base2new/digits/demo_models.png" \
  --title "Digits, base-to-new, seeds ${SEED_LIST[*]}" --seeds "${SEED_LIST[@]}"
run_python scripts/plot_results.py "$OUT/base2new/digits" --paper --seeds "${SEED_LIST[@]}"
echo "The four models side by side: $OUT/base2new/digits/demo_models.png"
echo "Plots and tables: $OUT/base2new/digits"
