#!/bin/bash
# Cross-dataset / domain generalisation, step 1: train CoCoOp on ImageNet (all classes, 16 shots).
# Usage: bash scripts/cocoop/xd_train.sh [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c4_ep10_batch1_ctxv1), SHOTS (16), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}
TRAINER=CoCoOp
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=${SHOTS:-16}
DATASET=imagenet

for SEED in $SEEDS; do
  DIR=$OUTPUT/$DATASET/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED
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
    DATASET.NUM_SHOTS "$SHOTS" "$@"
done
