#!/bin/bash
# Zero-shot CLIP (no training) with CoOp's per-dataset prompt template.
# Usage: bash scripts/zsclip/zeroshot.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), CFG (vit_b16: a CoOp config, it only picks the
#   backbone and input pipeline), SUB (all; base or new for base-to-new tables),
#   TRAINER (ZeroshotCLIP; ZeroshotCLIP2 = template ensemble), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
PYTHON=${PYTHON:-python}
TRAINER=${TRAINER:-ZeroshotCLIP}
CFG=${CFG:-vit_b16}
SUB=${SUB:-all}
DATASET=$1
shift

DIR=$OUTPUT/$TRAINER/$CFG/$DATASET/$SUB
if [ -f "$DIR/results.json" ]; then
  echo "Results are available in $DIR. Skip this job"
  exit 0
fi
"$PYTHON" train.py --root "$DATA" --trainer "$TRAINER" \
  --dataset-config-file "configs/datasets/$DATASET.yaml" \
  --config-file "configs/trainers/CoOp/$CFG.yaml" \
  --output-dir "$DIR" --eval-only \
  DATASET.SUBSAMPLE_CLASSES "$SUB" "$@"
