#!/bin/bash
# Shared by base2new.sh and xd.sh (sourced): environment, helpers, teacher search / training.
#   Env: DATA (./data), OUTPUT (./output), SEEDS ("1 2 3"), CLIP_ROOT (CLIP weights folder,
#   see the README), TEACHER_BACKBONE (ViT-L/14), STUDENT_BACKBONE (ViT-B/16),
#   TEACHER_CKPT (a teacher model file or folder; skips the search), TEACHER_ROOT (search
#   only this folder of released teachers instead of teacher_model/ and teacher_models/),
#   TRAIN_TEACHER (1: train a teacher here when none is found; hours of GPU for ViT-L/14),
#   TEACHER_SEED (1), STUDENT_CFG (the students' config file instead of
#   configs/trainers/PromptKD/base2new/<dataset>.yaml or xd.yaml), PYTHON (python),
#   DRY_RUN (1: print the python commands, run none), SEED_JOBS (1: seeds trained at once).
#   Arguments after the dataset: seeds (numbers) then KEY VALUE pairs, which are passed to
#   every train.py run (teacher and student).
# run_train (skip a finished run, resume an interrupted one) and the DATA / OUTPUT / SEEDS /
# PYTHON defaults come from scripts/lib/experiments.sh.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/experiments.sh"

TEACHER_BACKBONE=${TEACHER_BACKBONE:-ViT-L/14}
STUDENT_BACKBONE=${STUDENT_BACKBONE:-ViT-B/16}
TEACHER_SEED=${TEACHER_SEED:-1}
TEACHER_CFG=configs/trainers/PromptSRC/vit_l14_c2_ep20_batch8_4+4ctx.yaml
if [ -n "${CLIP_ROOT:-}" ]; then export CLIP_ROOT; fi

# parse_args DATASET [SEED ...] [KEY VALUE ...] -> DATASET, SEED_LIST, OPTS (array). Every
# argument that looks like a number (1, 01, -1, +2) is taken as a seed and checked, so a bad
# seed is named instead of ending up among the options.
parse_args() {
  if [ $# -lt 1 ]; then
    echo "Usage: bash $0 DATASET [SEED ...] [KEY VALUE ...]  (DATASET: a configs/datasets/ file stem)" >&2
    exit 2
  fi
  DATASET=${1%.yaml}
  shift
  dataset_yaml "$DATASET" > /dev/null
  SEED_LIST=""
  while [ $# -gt 0 ] && [[ $1 =~ ^[-+]?[0-9]+$ ]]; do SEED_LIST="$SEED_LIST $1"; shift; done
  SEED_LIST=${SEED_LIST:-${SEEDS:-1 2 3}}
  # shellcheck disable=SC2086  # a list of seeds
  check_seeds $SEED_LIST
  check_opts "$@"
  OPTS=("$@")
  if [[ ! $TEACHER_SEED =~ ^(0|[1-9][0-9]*)$ ]]; then
    fail "TEACHER_SEED is '$TEACHER_SEED'; use a seed (0, 1, 2, ...; unset: 1)."
  fi
  SEED_JOBS=${SEED_JOBS:-1}
  check_count SEED_JOBS
}

# DATASET.NAME of a dataset config file (e.g. oxford_pets -> OxfordPets)
dataset_name() {
  "$PYTHON" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['DATASET']['NAME'])" "$(dataset_yaml "$1")"
}

# find_teacher MODAL DATASET_NAME OWN_RUN: sets TEACHER to $TEACHER_CKPT, else to what
# trainers/teacher_folders.py finds (the trainer's own search: the released teachers'
# places, then a teacher this script trained into OWN_RUN that finished). The latter sets
# TEACHER to "": train_teacher then runs train.py --skip-finished on OWN_RUN, which uses it
# only when it was trained with this configuration. With none, TEACHER is "" when a teacher
# may be trained here (TRAIN_TEACHER=1, or a built-in demo dataset); otherwise the search
# says where it looked and what to do, and the script stops.
find_teacher() {
  local own=$3 query=(trainers/teacher_folders.py "$1" "$2" "$3" --backbone "$TEACHER_BACKBONE")
  if [ -n "${TEACHER_CKPT:-}" ]; then
    TEACHER=$TEACHER_CKPT
    echo "== Teacher: using $TEACHER (TEACHER_CKPT)"
    return 0
  fi
  if [ -n "${TEACHER_ROOT:-}" ]; then query+=(--root "$TEACHER_ROOT"); fi
  if [ "${TRAIN_TEACHER:-0}" = 1 ]; then query+=(--may-train); fi
  TEACHER=$(PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$LOOKUP_PYTHON" "${query[@]}") || exit $?
  if [ "$TEACHER" = "$own/VLPromptLearner" ]; then
    TEACHER=""
    echo "== Teacher: trained here before in $own; train.py checks that it was trained with this configuration"
  elif [ -n "$TEACHER" ]; then
    echo "== Teacher: using $TEACHER"
  fi
}

# train_teacher SOURCE_DATASET SUBSAMPLE DIR: PromptSRC teacher (16 shots) into DIR (a
# finished one of this configuration is skipped; one of another stops the script)
train_teacher() {
  local rc=0 finished=0
  if [ -f "$3/results.json" ]; then finished=1; fi
  echo "== Teacher: PromptSRC on $TEACHER_BACKBONE, $1 ($2 classes, 16 shots) -> $3"
  run_train "$3" --seed "$TEACHER_SEED" --trainer PromptSRC \
    --dataset-config-file "$(dataset_yaml "$1")" --config-file "$TEACHER_CFG" \
    DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES "$2" MODEL.BACKBONE.NAME "$TEACHER_BACKBONE" \
    "${OPTS[@]}" || rc=$?
  if [ "$rc" != 0 ] && [ "$finished" = 1 ]; then
    echo "Error: the teacher in $3 was trained with another configuration (above); delete $3 to train one with this configuration, or set TEACHER_CKPT=$3/VLPromptLearner to use it as it is." >&2
  fi
  if [ "$rc" != 0 ]; then exit "$rc"; fi
}

# base2new_teacher: for DATASET, sets NAME, OUT (the students' root) and TEACHER (found, or
# trained on the base classes into TEACHER_DIR)
base2new_teacher() {
  NAME=$(dataset_name "$DATASET")
  OUT=$OUTPUT/promptkd/base2new/$DATASET
  TEACHER_DIR=$OUTPUT/promptkd/teacher/$DATASET
  find_teacher base2novel "$NAME" "$TEACHER_DIR"
  if [ -z "$TEACHER" ]; then
    train_teacher "$DATASET" base "$TEACHER_DIR"
    TEACHER=$TEACHER_DIR/VLPromptLearner
  fi
}

# train_students CONFIG OUT_ROOT TEACHER: one PromptKD run per seed. SEED_JOBS=N trains N
# seeds at once, each with OMP_NUM_THREADS = cores / N (unless set) and its output in
# <run folder>/stdout.txt: on a CPU, small models train faster side by side than threaded.
train_students() {
  local seed dir i jobs=${SEED_JOBS:-1} pids=() dirs=() failed=0 done_upto=0 status=0
  if [ ! -f "$1" ]; then
    echo "Error: no student config file $1 (STUDENT_CFG or configs/trainers/PromptKD/)." >&2
    exit 2
  fi
  local threads=${OMP_NUM_THREADS:-$(($(nproc) / jobs > 0 ? $(nproc) / jobs : 1))}
  # Background runs ignore the terminal's Ctrl-C: pass INT / TERM on to them as TERM (each
  # saves nothing half-written and exits), then stop with the usual 130 / 143.
  trap '_stop_runs "${pids[@]}"; exit 130' INT
  trap '_stop_runs "${pids[@]}"; exit 143' TERM
  for seed in $SEED_LIST; do
    dir=$2/seed$seed
    local run=(run_train "$dir" --seed "$seed" --trainer PromptKD
      --dataset-config-file "$(dataset_yaml "$DATASET")" --config-file "$1"
      MODEL.BACKBONE.NAME "$STUDENT_BACKBONE" TRAINER.PROMPTKD.TEACHER_NAME "$TEACHER_BACKBONE"
      TRAINER.PROMPTKD.TEACHER_CKPT "$3" "${OPTS[@]}")
    # A dry run prints in order; a folder with results.json runs in the foreground too:
    # train.py skips it or refuses at once, and its stdout.txt is left as it is.
    if [ "$jobs" -le 1 ] || [ "${DRY_RUN:-0}" = 1 ] || [ -f "$dir/results.json" ]; then
      echo "== Student: PromptKD on $STUDENT_BACKBONE, $DATASET, seed $seed -> $dir"
      "${run[@]}" || { status=$?; break; }  # no further seed starts; running ones finish
      continue
    fi
    if [ ${#pids[@]} -ge $((done_upto + jobs)) ]; then  # SEED_JOBS running: wait for the oldest
      wait "${pids[$done_upto]}" || { echo "Error: the run in ${dirs[$done_upto]} failed; see its stdout.txt" >&2; failed=1; }
      done_upto=$((done_upto + 1))
    fi
    echo "== Student: PromptKD on $STUDENT_BACKBONE, $DATASET, seed $seed -> $dir (in the background, $threads threads; output in $dir/stdout.txt)"
    mkdir -p "$dir"
    (export OMP_NUM_THREADS=$threads && "${run[@]}") > "$dir/stdout.txt" 2>&1 &
    pids+=($!)
    dirs+=("$dir")
  done
  for ((i = done_upto; i < ${#pids[@]}; i++)); do
    wait "${pids[$i]}" || { echo "Error: the run in ${dirs[$i]} failed; see its stdout.txt" >&2; failed=1; }
  done
  trap - INT TERM
  if [ "$status" != 0 ]; then exit "$status"; fi
  if [ "$failed" = 1 ]; then exit 1; fi
}

# _stop_runs PID...: TERM to each background run (the subshell and its python), then wait
_stop_runs() {
  local pid kid kids=()
  for pid in "$@"; do
    kids+=($(pgrep -P "$pid" || true))
    pkill -TERM -P "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  done
  wait || true
  # The subshells end at once; their runs (python, now orphans) still finish what they are
  # writing: wait for them too, so that the script ends after its runs.
  for kid in "${kids[@]}"; do
    while kill -0 "$kid" 2>/dev/null; do sleep 0.1; done
  done
}
