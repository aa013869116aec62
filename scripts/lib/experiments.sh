#!/bin/bash
# Shared by the experiment scripts (sourced): environment defaults, the skip / resume
# logic and one function per protocol. The per-method scripts (scripts/<method>/*.sh) set
# TRAINER and the default CFG, SHOTS, LOADEP ... and call one of these functions.
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), PYTHON (python), LOOKUP_PYTHON
#   (python3: the checkpoint lookup), DRY_RUN (1: print the python commands instead of
#   running them), NPROC (1: processes per host) and NNODES (1: hosts): more than one and
#   every run goes through torchrun (`python -m torch.distributed.run`); several hosts also
#   need RDZV_ENDPOINT (host:port of one of them) and a shared OUTPUT folder.
# Every run goes into its own folder. Every run is started with train.py --skip-finished:
# a folder whose results.json was made with the same configuration is skipped ("Done,
# skipped: ..."), one made with another configuration stops the script with the
# differences; an unfinished training run with epoch checkpoints is resumed (--resume).
# Bad arguments (dataset, seeds, KEY VALUE pairs) stop the script with one "Error:" line
# and exit status 2 before anything runs.
set -euo pipefail

# shellcheck source=scripts/lib/abs_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/abs_env.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

DATA=${DATA:-./data}
OUTPUT=${OUTPUT:-./output}
SEEDS=${SEEDS:-"1 2 3"}
PYTHON=${PYTHON:-python}
NPROC=${NPROC:-1}
NNODES=${NNODES:-1}

# run_python ARGS...: $PYTHON ARGS, or with DRY_RUN=1 only print the command (quoted where
# an argument needs it, e.g. a path with spaces, so that it can be pasted into a shell)
run_python() {
  if [ "${DRY_RUN:-0}" = 1 ]; then
    local line
    line=$(printf '%q ' "$PYTHON" "$@")
    echo "DRY_RUN: ${line% }"
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

# fail MESSAGE: one "Error: MESSAGE" line on stderr, exit 2 (bad arguments)
fail() {
  echo "Error: $*" >&2
  exit 2
}

# dataset_yaml DATASET: print configs/datasets/DATASET.yaml, or stop when DATASET is not the
# stem of one (a path or a name with spaces would also put the output folders elsewhere)
dataset_yaml() {
  local f=configs/datasets/$1.yaml known
  known=$(cd configs/datasets && ls | sed 's/\.yaml$//' | paste -sd ' ')
  if [ -z "$1" ]; then
    fail "no dataset given; pass one of: $known"
  elif [[ ! $1 =~ ^[A-Za-z0-9_]+$ ]]; then
    fail "dataset '$1' is not a config stem (letters, digits, _; no folder, no .yaml); use one of: $known"
  elif [ ! -f "$f" ]; then
    fail "Unknown dataset '$1': no $f; use one of: $known"
  fi
  echo "$f"
}

# check_seeds SEED...: each a plain non-negative integer; it names the folder seed<N>
check_seeds() {
  local s seen=" "
  if [ $# = 0 ]; then fail "no seeds: SEEDS is empty; set e.g. SEEDS=\"1 2 3\"."; fi
  for s in "$@"; do
    if [[ ! $s =~ ^(0|[1-9][0-9]*)$ ]]; then
      fail "seed '$s' is not a non-negative integer without leading zeros (0, 1, 2, ...): each seed's run goes to the folder seed<N>."
    fi
    if [[ $seen == *" $s "* ]]; then
      fail "seed $s is given twice; each seed's run goes to the folder seed$s: give it once."
    fi
    seen="$seen$s "
  done
}

# check_count NAME: the environment variable NAME is a whole number from 1 (a count of
# processes, hosts or jobs); bash arithmetic would otherwise fail part-way, or skip a stage
check_count() {
  if [[ ! ${!1} =~ ^[1-9][0-9]*$ ]]; then
    fail "$1 is '${!1}'; use a whole number from 1 (unset: 1)."
  fi
}
check_count NPROC
check_count NNODES

# check_opts [KEY VALUE ...]: the trailing options are KEY VALUE pairs of config keys
# (checked here, before a teacher or several seeds run for hours before train.py sees them)
check_opts() {
  if [ $(($# % 2)) = 1 ]; then
    fail "the options after the dataset must be KEY VALUE pairs; got an odd number ($#): $*"
  fi
  while [ $# -gt 0 ]; do
    if [[ ! $1 =~ ^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$ ]]; then
      fail "'$1' is not a config KEY; the options after the dataset are KEY VALUE pairs (e.g. OPTIM.MAX_EPOCH 5)."
    fi
    shift 2
  done
}

# check_args DATASET [KEY VALUE ...]: the dataset, $SEEDS and the options of a method script
check_args() {
  dataset_yaml "${1:-}" > /dev/null
  # shellcheck disable=SC2086  # SEEDS is a list
  check_seeds $SEEDS
  check_opts "${@:2}"
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

# finished_note DIR: with DRY_RUN=1, say what train.py --skip-finished will do with DIR
finished_note() {
  if [ "${DRY_RUN:-0}" = 1 ] && [ -f "$1/results.json" ]; then
    echo "DRY_RUN: $1 holds results.json: train.py --skip-finished says \"done, skipped\" if it was made with this configuration, and stops with the differences if not"
  fi
}

# run_train DIR ARGS...: train.py --skip-finished into DIR: train.py skips DIR when its
# results.json was made with this configuration, and refuses (exit 1, listing the
# differences) when not; an interrupted run that saved epoch checkpoints is resumed.
run_train() {
  local dir=$1
  shift
  local resume=()
  if [ -f "$dir/results.json" ]; then
    finished_note "$dir"
  elif checkpoint_lookup resumable "$dir"; then
    resume=(--resume "$dir")
  fi
  run_launched train.py --root "$DATA" --output-dir "$dir" --skip-finished "${resume[@]}" "$@"
}

# run_eval DIR ARGS...: train.py --eval-only --skip-finished into DIR (skip / refuse as above)
run_eval() {
  local dir=$1
  shift
  finished_note "$dir"
  run_launched train.py --root "$DATA" --output-dir "$dir" --eval-only --skip-finished "$@"
}

# run_method train|eval DIR SEED DATASET ARGS...: one run of $TRAINER with config $CFG
run_method() {
  local mode=$1 dir=$2 seed=$3 dataset=$4
  shift 4
  "run_$mode" "$dir" --seed "$seed" --trainer "$TRAINER" \
    --dataset-config-file "$(dataset_yaml "$dataset")" \
    --config-file "configs/trainers/$TRAINER/$CFG.yaml" "$@"
}

# b2n_train DATASET [KEY VALUE ...]: base-to-new step 1, train on the base classes
b2n_train() {
  check_args "$@"
  local dataset=$1 seed
  shift
  for seed in $SEEDS; do
    run_method train "$OUTPUT/base2new/train_base/$dataset/shots_$SHOTS/$TRAINER/$CFG/seed$seed" \
      "$seed" "$dataset" DATASET.NUM_SHOTS "$SHOTS" DATASET.SUBSAMPLE_CLASSES base "$@"
  done
}

# b2n_test DATASET [KEY VALUE ...]: base-to-new step 2, evaluate epoch LOADEP on SUB classes
b2n_test() {
  check_args "$@"
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
  check_args "${1:-}" "${@:3}"
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
  check_args "$@"
  local dataset=$1 seed run
  shift
  for seed in $SEEDS; do
    run=$TRAINER/${CFG}_${SHOTS}shots
    run_method eval "$OUTPUT/evaluation/$run/$dataset/seed$seed" "$seed" "$dataset" \
      --model-dir "$OUTPUT/imagenet/$run/seed$seed" --load-epoch "$LOADEP" "$@"
  done
}
