#!/bin/bash
# Cross-dataset / domain generalisation, step 2: evaluate the ImageNet-trained CoCoOp on a
# target dataset (all of its classes, --eval-only).
# Usage: bash scripts/cocoop/xd_test.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c4_ep10_batch1_ctxv1), SHOTS (16),
#   LOADEP (10), PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=CoCoOp
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=${SHOTS:-16}
LOADEP=${LOADEP:-10}

xd_test "$@"
