#!/bin/bash
# CoOp few-shot classification (the official scripts/coop/main.sh).
# Usage: bash scripts/coop/few_shot.sh DATASET [KEY VALUE ...]
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), PYTHON, and the official
#   arguments CFG (rn50), CTP (end: class token position), NCTX (16), SHOTS (16),
#   CSC (False: class-specific context).
source "$(dirname "$0")/../lib/experiments.sh"

TRAINER=CoOp
CFG=${CFG:-rn50}
CTP=${CTP:-end}
NCTX=${NCTX:-16}
SHOTS=${SHOTS:-16}
CSC=${CSC:-False}

few_shot "${1:-}" "nctx${NCTX}_csc${CSC}_ctp${CTP}" \
  TRAINER.COOP.N_CTX "$NCTX" TRAINER.COOP.CSC "$CSC" \
  TRAINER.COOP.CLASS_TOKEN_POSITION "$CTP" "${@:2}"
