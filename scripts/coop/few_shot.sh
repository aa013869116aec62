#!/bin/bash
# CoOp few-shot classification (the official scripts/coop/main.sh).
# Usage: bash scripts/coop/few_shot.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), PYTHON, and the official
#   arguments CFG (rn50), CTP (end: class token position), NCTX (16), SHOTS (16),
#   CSC (False: class-specific context).
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}
TRAINER=CoOp
CFG=${CFG:-rn50}
CTP=${CTP:-end}
NCTX=${NCTX:-16}
SHOTS=${SHOTS:-16}
CSC=${CSC:-False}
DATASET=$1
shift

for SEED in $SEEDS; do
  DIR=$OUTPUT/$DATASET/$TRAINER/${CFG}_${SHOTS}shots/nctx${NCTX}_csc${CSC}_ctp${CTP}/seed$SEED
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
    TRAINER.COOP.N_CTX "$NCTX" TRAINER.COOP.CSC "$CSC" \
    TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" DATASET.NUM_SHOTS "$SHOTS" "$@"
done
