#!/bin/bash
# Zero-shot CLIP (no training) with CoOp's per-dataset prompt template.
# Usage: bash scripts/zsclip/zeroshot.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), CFG (vit_b16: a CoOp config, it only picks the
#   backbone and input pipeline), SUB (all; base or new for base-to-new tables),
#   TRAINER (ZeroshotCLIP; ZeroshotCLIP2 = template ensemble), PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=${TRAINER:-ZeroshotCLIP}
CFG=${CFG:-vit_b16}
SUB=${SUB:-all}
DATASET=${1:-}
dataset_yaml "$DATASET" > /dev/null
shift
check_opts "$@"

run_eval "$OUTPUT/$TRAINER/$CFG/$DATASET/$SUB" --trainer "$TRAINER" \
  --dataset-config-file "configs/datasets/$DATASET.yaml" \
  --config-file "configs/trainers/CoOp/$CFG.yaml" \
  DATASET.SUBSAMPLE_CLASSES "$SUB" "$@"
