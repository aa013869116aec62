#!/bin/bash
# Cross-dataset / domain generalisation, step 1: train PromptSRC on ImageNet (all classes, 16 shots).
# Usage: bash scripts/promptsrc/xd_train.sh [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets), SHOTS (16), PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=PromptSRC
CFG=${CFG:-vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets}
SHOTS=${SHOTS:-16}

xd_train "$@"
