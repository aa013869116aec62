#!/bin/bash
# Base-to-new, step 1: train MaPLe on the base classes (SUBSAMPLE_CLASSES base, 16 shots).
# Usage: bash scripts/maple/base2new_train.sh DATASET [KEY VALUE ...]
#   DATASET: a file name under configs/datasets/ without .yaml (e.g. oxford_pets).
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c2_ep5_batch4_2ctx), SHOTS (16), PYTHON.
#   Trailing KEY VALUE pairs go to train.py. Runs with results.json are skipped; an
#   unfinished run with checkpoints is resumed (--resume).
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=MaPLe
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx}
SHOTS=${SHOTS:-16}

b2n_train "$@"
