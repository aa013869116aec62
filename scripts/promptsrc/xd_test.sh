#!/bin/bash
# Cross-dataset / domain generalisation, step 2: evaluate the ImageNet-trained PromptSRC on a
# target dataset (all of its classes, --eval-only).
# Usage: bash scripts/promptsrc/xd_test.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets), SHOTS (16),
#   LOADEP (20), PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=PromptSRC
CFG=${CFG:-vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets}
SHOTS=${SHOTS:-16}
LOADEP=${LOADEP:-20}

xd_test "$@"
