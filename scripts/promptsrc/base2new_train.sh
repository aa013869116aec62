#!/bin/bash
# Base-to-new, step 1: train PromptSRC on the base classes (SUBSAMPLE_CLASSES base, 16 shots).
# Usage: bash scripts/promptsrc/base2new_train.sh DATASET [KEY VALUE ...]
#   DATASET: a file name under configs/datasets/ without .yaml (e.g. oxford_pets).
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c2_ep20_batch4_4+4ctx), SHOTS (16), PYTHON.
#   Trailing KEY VALUE pairs go to train.py. Runs with results.json are skipped; an
#   unfinished run with checkpoints is resumed (--resume).
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}
TRAINER=PromptSRC
CFG=${CFG:-vit_b16_c2_ep20_batch4_4+4ctx}
SHOTS=${SHOTS:-16}
DATASET=$1
shift

for SEED in $SEEDS; do
  DIR=$OUTPUT/base2new/train_base/$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED
  if [ -f "$DIR/results.json" ]; then
    echo "Results are available in $DIR. Skip this job"
    continue
  fi
  RESUME=()  # an unfinished run with checkpoints continues where it stopped
  if compgen -G "$DIR/*/model.pth.tar-*" >/dev/null; then RESUME=(--resume "$DIR"); fi
  "$PYTHON" train.py --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "configs/datasets/$DATASET.yaml" \
    --config-file "configs/trainers/$TRAINER/$CFG.yaml" \
    --output-dir "$DIR" "${RESUME[@]}" \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "$@"
done
