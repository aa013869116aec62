#!/bin/bash
# The offline demo: the whole PromptKD base-to-new pipeline on the built-in Digits dataset
# (scikit-learn's handwritten digits, written into $DATA on first use) with the tiny CLIP
# stand-ins (random CLIP-shaped models built on the fly): a PromptSRC teacher on
# "tiny-teacher", then PromptKD students on "tiny-student" for each seed, then the
# base / new / HM table and the plots. No download, a few minutes on 2 CPU cores.
# Usage: bash scripts/demo.sh [SEED ...] [KEY VALUE ...]   (default seeds: 1 2)
# Env: DATA (./data), OUTPUT (./output/demo), CLIP_ROOT ($DATA/clip), EPOCHS (teacher 5,
#      student 5), PYTHON (python).
set -euo pipefail
cd "$(dirname "$0")/.."

export DATA=${DATA:-./data}
export OUTPUT=${OUTPUT:-./output/demo}
export CLIP_ROOT=${CLIP_ROOT:-$DATA/clip}
export TEACHER_BACKBONE=tiny-teacher STUDENT_BACKBONE=tiny-student
export TRAIN_TEACHER=1  # no released teacher for Digits: train one (a minute on a CPU)
export SEEDS=${SEEDS:-1 2}
PYTHON=${PYTHON:-python}
EPOCHS=${EPOCHS:-5}

# Tiny models see 32 x 32 images; a short schedule keeps the demo in minutes.
bash scripts/promptkd/base2new.sh digits "$@" \
  INPUT.SIZE "(32, 32)" OPTIM.MAX_EPOCH "$EPOCHS" DATALOADER.NUM_WORKERS 0 \
  DATALOADER.TEST.BATCH_SIZE 256 TRAIN.PRINT_FREQ 50

"$PYTHON" scripts/plot_results.py "$OUTPUT/promptkd/base2new/digits" --paper
echo "Plots and tables: $OUTPUT/promptkd/base2new/digits"
