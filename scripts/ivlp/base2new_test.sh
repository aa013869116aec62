#!/bin/bash
# Base-to-new, step 2: evaluate the base-trained IVLP prompts on the NEW classes
# (--eval-only, SUBSAMPLE_CLASSES new; the class-name token buffers are rebuilt).
# Usage: bash scripts/ivlp/base2new_test.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c2_ep20_batch8_4+4ctx), SHOTS (16),
#   LOADEP (20: the epoch file model.pth.tar-LOADEP to load), SUB (new), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}
TRAINER=IVLP
CFG=${CFG:-vit_b16_c2_ep20_batch8_4+4ctx}
SHOTS=${SHOTS:-16}
LOADEP=${LOADEP:-20}
SUB=${SUB:-new}
DATASET=$1
shift

for SEED in $SEEDS; do
  COMMON_DIR=$DATASET/shots_$SHOTS/$TRAINER/$CFG/seed$SEED
  MODEL_DIR=$OUTPUT/base2new/train_base/$COMMON_DIR
  DIR=$OUTPUT/base2new/test_$SUB/$COMMON_DIR
  if [ -f "$DIR/results.json" ]; then
    echo "Results are available in $DIR. Skip this job"
    continue
  fi
  "$PYTHON" train.py --root "$DATA" --seed "$SEED" --trainer "$TRAINER" \
    --dataset-config-file "configs/datasets/$DATASET.yaml" \
    --config-file "configs/trainers/$TRAINER/$CFG.yaml" \
    --output-dir "$DIR" --model-dir "$MODEL_DIR" --load-epoch "$LOADEP" --eval-only \
    DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$SUB" "$@"
done
