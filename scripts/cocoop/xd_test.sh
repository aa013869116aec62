#!/bin/bash
# Cross-dataset / domain generalisation, step 2: evaluate the ImageNet-trained CoCoOp on a
# target dataset (all of its classes, --eval-only).
# Usage: bash scripts/cocoop/xd_test.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c4_ep10_batch1_ctxv1), SHOTS (16),
#   LOADEP (10), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}
TRAINER=CoCoOp
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=${SHOTS:-16}
LOADEP=${LOADEP:-10}
DATASET=$1
shift

for SEED in $SEEDS; do
  MODEL_DIR=$OUTPUT/imagenet/$TRAINER/${CFG}_${SHOTS}shots/seed$SEED
  DIR=$OUTPUT/evaluation/$TRAINER/${CFG}_${SHOTS}shots/$DATASET/seed$SEED
  if [ -f "$DIR/results.json" ]; then
    echo "Results are available in $DIR. Skip this job"
    continue
  fi
  "$PYTHON" train.py --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "configs/datasets/$DATASET.yaml" \
    --config-file "configs/trainers/$TRAINER/$CFG.yaml" \
    --output-dir "$DIR" --model-dir "$MODEL_DIR" --load-epoch "$LOADEP" --eval-only "$@"
done
