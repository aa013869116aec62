#!/bin/bash
# Base-to-new, step 2: evaluate the base-trained CoCoOp prompts on the NEW classes
# (--eval-only, SUBSAMPLE_CLASSES new; the class-name token buffers are rebuilt).
# Usage: bash scripts/cocoop/base2new_test.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c4_ep10_batch1_ctxv1), SHOTS (16),
#   LOADEP (10: the epoch file model.pth.tar-LOADEP to load), SUB (new), PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=CoCoOp
CFG=${CFG:-vit_b16_c4_ep10_batch1_ctxv1}
SHOTS=${SHOTS:-16}
LOADEP=${LOADEP:-10}
SUB=${SUB:-new}

b2n_test "$@"
