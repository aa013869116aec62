#!/bin/bash
# Cross-dataset / domain generalisation, step 2: evaluate the ImageNet-trained MaPLe on a
# target dataset (all of its classes, --eval-only).
# Usage: bash scripts/maple/xd_test.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c2_ep5_batch4_2ctx_cross_datasets), SHOTS (16),
#   LOADEP (2), PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=MaPLe
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx_cross_datasets}
SHOTS=${SHOTS:-16}
LOADEP=${LOADEP:-2}

xd_test "$@"
