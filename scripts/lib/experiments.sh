#!/bin/bash
# Shared by the experiment scripts (sourced): environment defaults, the skip / resume
# logic and one function per protocol. The per-method scripts (scripts/<method>/*.sh) set
# TRAINER and the default CFG, SHOTS, LOADEP ... and call one of these functions.
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), PYTHON (python), LOOKUP_PYTHON
#   (python3: the checkpoint lookup), DRY_RUN (1: print the python commands instead of
#   running them), NPROC (1: processes per host) and NNODES (1: hosts): more than one and
#   every run goes through torchrun (`python -m torch.distributed.run`); several hosts also
#   need RDZV_ENDPOINT (host:port of one of them) and a shared OUTPUT folder.
# Every run goes into its own folder; a folder with results.json is skipped, and an
# unfinished training run with epoch checkpoints is resumed (--resume).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}

# run_python ARGS...: $PYTHON ARGS, or with DRY_RUN=1 only print the command
run_python() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "DRY_RUN: $PYTHON $*"
    return 0
  fi
  "$PYTHON" "$@"
}

# run_launched SCRIPT ARGS...: one run of SCRIPT in one process, or under torchrun with
# NPROC processes on each of NNODES hosts (one host: --standalone; several: c10d rendezvous
# at RDZV_ENDPOINT, with an id made from the arguments, the same on every host)
run_launched() {
  if [ "$NPROC" = 1 ] && [ "$NNODES" = 1 ]; then
    run_python "$@"
    return
  fi
  local rdzv=(--standalone)
  if [ "$NNODES" != 1 ]; then
    : "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port (one of the $NNODES hosts) to run on several hosts}"
    local id
    id=$(printf '%s\n' "$@" | cksum | cut -d' ' -f1)
    rdzv=(--rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "${RDZV_ID:-run$id}")
  fi
  run_python -m torch.distributed.run --nnodes "$NNODES" --nproc-per-node "$NPROC" \
    "${rdzv[@]}" "$@"
}

# is_finished DIR: true (and says so) when DIR/results.json exists
is_finished() {
  if [ -f "$1/results.json" ]; then
    echo "Results are available in $1. Skip this job"
    return 0
  fi
  return 1
}

# checkpoint_lookup find FOLDER | resumable RUN_DIR: the engine's own checkpoint lookup
# (dassl_ext/utils/checkpoint.py, which loads no torch for it). find prints the file to use
# (model-best.pth.tar, else the newest model.pth.tar-<N>); both fail when there is none.
# It needs only the standard library, so it runs on LOOKUP_PYTHON (python3), also when
# PYTHON is replaced (PYTHON=echo prints the train.py commands instead of running them).
LOOKUP_PYTHON=${LOOKUP_PYTHON:-python3}
checkpoint_lookup() {
  "$LOOKUP_PYTHON" -m dassl_ext.utils.checkpoint "$@"
}

# run_train DIR ARGS...: train.py into DIR unless DIR/results.json exists; resumes an
# interrupted run that saved epoch checkpoints.
run_train() {
  local dir=$1
  shift
  if is_finished "$dir"; then return 0; fi
  local resume=()
  if checkpoint_lookup resumable "$dir"; then resume=(--resume "$dir"); fi
  run_launched train.py --root "$DATA" --output-dir "$dir" "${resume[@]}" "$@"
}

# run_eval DIR ARGS...: train.py --eval-only into DIR unless DIR/results.json exists
run_eval() {
  local dir=$1
  shift
  if is_finished "$dir"; then return 0; fi
  run_launched train.py --root "$DATA" --output-dir "$dir" --eval-only "$@"
}

# run_method train|eval DIR SEED DATASET ARGS...: one run of $TRAINER with config $CFG
run_method() {
  local mode=$1 dir=$2 seed=$3 dataset=$4
  shift 4
  "run_$mode" "$dir" --seed "$seed" --trainer "$TRAINER" \
    --dataset-config-file "configs/datasets/$dataset.yaml" \
    --config-file "configs/trainers/$TRAINER/$CFG.yaml" "$@"
}

# b2n_train DATASET [KEY VALUE ...]: base-to-new step 1, train on the base classes
b2n_train() {
  local dataset=$1 seed
  shift
  for seed in $SEEDS; do
    run_method train "$OUTPUT/base2new/train_base/$dataset/shots_$SHOTS/$TRAINER/$CFG/seed$seed" \
      "$seed" "$dataset" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "$@"
  done
}

# b2n_test DATASET [KEY VALUE ...]: base-to-new step 2, evaluate epoch LOADEP on SUB classes
b2n_test() {
  local dataset=$1 seed common
  shift
  for seed in $SEEDS; do
    common=$dataset/shots_$SHOTS/$TRAINER/$CFG/seed$seed
    run_method eval "$OUTPUT/base2new/test_$SUB/$common" "$seed" "$dataset" \
      --model-dir "$OUTPUT/base2new/train_base/$common" --load-epoch "$LOADEP" \
      DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES "$SUB" "$@"
  done
}

# few_shot DATASET OUT_SUFFIX [KEY VALUE ...]: all classes, SHOTS shots, into
# $OUTPUT/DATASET/TRAINER/CFG_SHOTSshots[/OUT_SUFFIX]/seedN
few_shot() {
  local dataset=$1 suffix=${2:+/$2} seed
  shift 2
  for seed in $SEEDS; do
    run_method train "$OUTPUT/$dataset/$TRAINER/${CFG}_${SHOTS}shots$suffix/seed$seed" \
      "$seed" "$dataset" DATASET.NUM_SHOTS "$SHOTS" "$@"
  done
}

# xd_train [KEY VALUE ...]: cross-dataset step 1, train on ImageNet (all classes)
xd_train() {
  few_shot imagenet "" "$@"
}

# xd_test DATASET [KEY VALUE ...]: cross-dataset step 2, evaluate the ImageNet model (epoch
# LOADEP) on DATASET
xd_test() {
  local dataset=$1 seed run
  shift
  for seed in $SEEDS; do
    run=$TRAINER/${CFG}_${SHOTS}shots
    run_method eval "$OUTPUT/evaluation/$run/$dataset/seed$seed" "$seed" "$dataset" \
      --model-dir "$OUTPUT/imagenet/$run/seed$seed" --load-epoch "$LOADEP" "$@"
  done
}
