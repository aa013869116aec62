#!/usr/bin/env bash
# The GPU check, prepared in advance: at most ~9 minutes on one CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [OUT]      (OUT: results folder, default $OUT or a temp dir)
#
# 1. fails at once, with one sentence, when no CUDA GPU is visible (exit 2);
# 2. the CUDA / precision tests: pytest -q -k "cuda or precision or fp16 or amp";
# 3. benchmarks/promptkd_step.py at real sizes in fp16, bf16 and amp: training at batch 8
#    and evaluation at batch 8 and at a large batch (EVAL_BATCH, default 256); the
#    official behaviour (fp16 teacher, as the official code) at fp16 only; the student
#    step from stored teacher views (train-views: no teacher; images/s with and without
#    the views' replay in the step) at every precision;
# 4. the bf16 training step with MODEL.GRAD_CHECKPOINTING off and on (--checkpointing);
# 5. benchmarks/data_loading.py against the bf16 step's images/s;
# then prints one table (benchmarks/gpu_check.py report OUT). Each stage has a time limit,
# so one stuck stage cannot eat the budget; a stage that fails or times out is reported
# and the others still run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-${OUT:-$(mktemp -d)}}
EVAL_BATCH=${EVAL_BATCH:-256}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
start=$SECONDS

"$PY" benchmarks/gpu_check.py require-gpu || exit 2

stage() {  # stage <seconds> <name> <command...>: run with a time limit, log to OUT/<name>.log
  local limit=$1 name=$2
  shift 2
  echo "[$((SECONDS - start))s] $name" >&2
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || echo "gpu_check: stage $name failed (exit $rc; 124 = time limit); see $OUT/$name.log" >&2
  return 0
}

stage 150 pytest "$PY" -m pytest -q -p no:cacheprovider -k "cuda or precision or fp16 or amp"
cp "$OUT/pytest.log" "$OUT/pytest.txt"

step() {  # step <prec> <variants> <eval batch>
  stage 130 "step_$1_b$3" "$PY" benchmarks/promptkd_step.py --device cuda --prec "$1" \
    --batch 8 --eval-batch "$3" --steps "$STEPS" --variants "$2" --json "$OUT/step_$1_b$3.json"
}
stage 120 files "$PY" -c "import sys; sys.path.insert(0, '.');
from benchmarks.promptkd_models import PAIRS, make_files; import tempfile, os
make_files(os.path.join(tempfile.gettempdir(), 'promptkd_bench'), PAIRS['real'])"
step fp16 train-ours,train-official,train-views,eval-ours,eval-official 8
step fp16 eval-ours,eval-official "$EVAL_BATCH"
for prec in bf16 amp; do
  step "$prec" train-ours,train-views,eval-ours 8
  step "$prec" eval-ours "$EVAL_BATCH"
done
stage 100 ckpt_bf16_b8 "$PY" benchmarks/promptkd_step.py --device cuda --prec bf16 --batch 8 \
  --steps "$STEPS" --variants train-ours --checkpointing off,on --json "$OUT/ckpt_bf16_b8.json"
stage 60 data_loading "$PY" benchmarks/data_loading.py --images 64 --step-json "$OUT/step_bf16_b8.json"
cp "$OUT/data_loading.log" "$OUT/data_loading.txt"

echo "[$((SECONDS - start))s] done; results in $OUT" >&2
"$PY" benchmarks/gpu_check.py report "$OUT"
