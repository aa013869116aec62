#!/bin/bash
# Cross-dataset / domain generalisation, step 1: train CoCoOp on ImageNet (all classes, 16 shots).
# Usage: bash scripts/cocoop/xd_train.sh [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c4_ep10_batch1_ctxv1), SHOTS (16), PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=CoCoOp
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=${SHOTS:-16}

xd_train "$@"
