#!/bin/bash
# PromptSRC few-shot classification (all classes, K shots, 50 epochs, best_val).
# Usage: bash scripts/promptsrc/few_shot.sh DATASET SHOTS [KEY VALUE ...]
#   For StanfordCars, Flowers102, FGVCAircraft, DTD and EuroSAT the official config says
#   to append TRAINER.PROMPTSRC.GPA_MEAN 45 TRAINER.PROMPTSRC.GPA_STD 5.
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG, PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=PromptSRC
CFG=${CFG:-vit_b16_c2_ep50_batch4_4+4ctx_few_shot}

dataset_yaml "${1:-}" > /dev/null
SHOTS=${2:-}
if [[ ! $SHOTS =~ ^[1-9][0-9]*$ ]]; then
  fail "SHOTS '$SHOTS' (the argument after the dataset) is not a number of shots per class (1, 2, 4, 8, 16)."
fi
few_shot "$1" "" "${@:3}"
