#!/bin/bash
# PromptSRC few-shot classification (all classes, K shots, 50 epochs, best_val).
# Usage: bash scripts/promptsrc/few_shot.sh DATASET SHOTS [KEY VALUE ...]
#   For StanfordCars, Flowers102, FGVCAircraft, DTD and EuroSAT the official config says
#   to append TRAINER.PROMPTSRC.GPA_MEAN 45 TRAINER.PROMPTSRC.GPA_STD 5.
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG, PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}
TRAINER=PromptSRC
CFG=${CFG:-vit_b16_c2_ep50_batch4_4+4ctx_few_shot}
DATASET=$1
SHOTS=$2
shift 2

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
