#!/bin/bash
# Base-to-new, step 2: evaluate the base-trained MaPLe prompts on the NEW classes
# (--eval-only, SUBSAMPLE_CLASSES new; the class-name token buffers are rebuilt).
# Usage: bash scripts/maple/base2new_test.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CFG (vit_b16_c2_ep5_batch4_2ctx), SHOTS (16),
#   LOADEP (5: the epoch file model.pth.tar-LOADEP to load), SUB (new), PYTHON.
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=MaPLe
CFG=${CFG:-vit_b16_c2_ep5_batch4_2ctx}
SHOTS=${SHOTS:-16}
LOADEP=${LOADEP:-5}
SUB=${SUB:-new}

b2n_test "$@"
