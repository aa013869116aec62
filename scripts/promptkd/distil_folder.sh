#!/bin/bash
# Distil your own student from your own unlabeled images, in one command (README: "Distil
# your own student"; the folders and the class file: datasets/image_folder.py):
#   1. PromptKD per seed on all images of --images, without labels: the student learns from
#      the teacher's outputs (the teacher's class text features are computed once, cached in
#      OUT/teacher_text_features/), the last epoch kept -> OUT/student/seed<N>/;
#   2. with --labeled: the distilled student, the zero-shot student CLIP, the zero-shot
#      teacher CLIP and (with --teacher-ckpt) the prompt-tuned teacher, evaluated on the same
#      base and new classes of the labeled images -> OUT/eval/; one base / new / HM table
#      (OUT/table.md) and a bar chart of all models side by side (OUT/models.png);
#   3. the student exported: OUT/student/seed<N>/student.pt, and student.onnx beside it when
#      onnxruntime and onnxscript are installed (pip install -e ".[onnx]").
# Re-running skips finished runs (train.py --skip-finished; a run made with another
# configuration stops the script with the differences: pick another --out), resumes an
# interrupted one and keeps an export newer than its run. Paths are relative to the folder
# the command is run from.
# Usage: bash scripts/promptkd/distil_folder.sh --images DIR --classes FILE [OPTION ...] [KEY VALUE ...]
#   --images DIR         the unlabeled training images, in any sub-folders (env IMAGES)
#   --classes FILE       the class names, one per line, in label order (env CLASSES)
#   --labeled DIR        optional: labeled images, one sub-folder per class name (env LABELED)
#   --teacher NAME       the teacher's CLIP, a name or weights file (env TEACHER_BACKBONE;
#                        ViT-L/14): zero-shot (ZeroshotCLIP) unless --teacher-ckpt is given
#   --teacher-ckpt PATH  a prompt-tuned teacher on that CLIP: its model file, model folder or
#                        run folder (env TEACHER_CKPT)
#   --teacher-trainer T  the trainer that trained it (env TEACHER_TRAINER; PromptSRC, IVLP,
#                        MaPLe or CoOp; PromptSRC with --teacher-ckpt, else ZeroshotCLIP)
#   --student NAME       the student's CLIP (env STUDENT_BACKBONE; ViT-B/16)
#   --config FILE        the student's config (env STUDENT_CFG;
#                        configs/trainers/PromptKD/base2new/image_folder.yaml)
#   --seeds "N ..."      one student per seed (env SEEDS; 1)
#   --out DIR            the output folder (env OUT_DIR; $OUTPUT/distil_folder, OUTPUT ./output)
#   --no-onnx            export student.pt only (env ONNX=0)
#   KEY VALUE ...        config options for every run (e.g. OPTIM.MAX_EPOCH 5 or
#                        DATASET.IMAGE_FOLDER.BASE_CLASSES "['cat', 'dog']")
#   Env also: CLIP_ROOT (the CLIP weights folder), DATA (where the split files go; OUT),
#   PYTHON (python), DRY_RUN (1: print the python commands, run none).
# The training run sets TEST.NO_TEST True and TEST.FINAL_MODEL last_step (no labels); the
# evaluations add DATASET.IMAGE_FOLDER.EVAL_DIR and the same options, so they see the
# student and the teacher exactly as the training run built them.
CALLER_DIR=$PWD
SEED_LIST=${SEEDS:-1} DATA_GIVEN=${DATA:-}  # experiments.sh sets its own defaults for these
source "$(dirname "$0")/../lib/experiments.sh"
SCRIPT=scripts/promptkd/distil_folder.sh
USAGE="Usage: bash $SCRIPT --images DIR --classes FILE [--labeled DIR] [--teacher NAME] [--teacher-ckpt PATH] [--student NAME] [--out DIR] [KEY VALUE ...]; --help lists every option."

# bad SENTENCE: one "Error:" line and the usage line on stderr, exit 2 (nothing written)
bad() {
  echo "Error: $*" >&2
  echo "$USAGE" >&2
  exit 2
}

# from_caller PATH: PATH made absolute against the folder the command was run from
from_caller() {
  case $1 in
    "" | /*) echo "$1" ;;
    *) echo "$CALLER_DIR/$1" ;;
  esac
}

IMAGES=${IMAGES:-} CLASSES=${CLASSES:-} LABELED=${LABELED:-}
TEACHER=${TEACHER_BACKBONE:-ViT-L/14} TEACHER_CKPT=${TEACHER_CKPT:-}
TEACHER_TRAINER=${TEACHER_TRAINER:-} STUDENT=${STUDENT_BACKBONE:-ViT-B/16}
CFG=${STUDENT_CFG:-} OUT=${OUT_DIR:-} ONNX=${ONNX:-1}
while [ $# -gt 0 ]; do
  flag=$1 value=""
  case $flag in
    --*=*) value=${flag#*=} flag=${flag%%=*} ;;
    --images | --classes | --labeled | --teacher | --teacher-ckpt | --teacher-trainer | \
      --student | --config | --seeds | --out)
      if [ $# -lt 2 ] || [[ $2 == --* ]]; then bad "$flag needs a value."; fi
      value=$2
      shift ;;
  esac
  case $flag in
    --images) IMAGES=$value ;;
    --classes) CLASSES=$value ;;
    --labeled) LABELED=$value ;;
    --teacher) TEACHER=$value ;;
    --teacher-ckpt) TEACHER_CKPT=$value ;;
    --teacher-trainer) TEACHER_TRAINER=$value ;;
    --student) STUDENT=$value ;;
    --config) CFG=$value ;;
    --seeds) SEED_LIST=$value ;;
    --out) OUT=$value ;;
    --no-onnx) ONNX=0 ;;
    -h | --help)
      sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$SCRIPT"
      exit 0 ;;
    -*) bad "unknown option '$flag'." ;;
    *) break ;;
  esac
  shift
done
OPTS=("$@")

# ---------------------------------------------------------------- the arguments, checked
if [ -z "$IMAGES" ]; then
  bad "no images folder given; pass --images DIR, the folder of your unlabeled images."
elif [ ! -d "$(from_caller "$IMAGES")" ]; then
  bad "the images folder '$IMAGES' does not exist or is not a folder; pass --images the folder of your unlabeled images."
elif [ -z "$CLASSES" ]; then
  bad "no class file given; pass --classes FILE, a text file with one class name per line."
elif [ ! -f "$(from_caller "$CLASSES")" ]; then
  bad "the class file '$CLASSES' does not exist or is not a file; pass --classes a text file with one class name per line."
elif [ -n "$LABELED" ] && [ ! -d "$(from_caller "$LABELED")" ]; then
  bad "the labeled folder '$LABELED' does not exist or is not a folder; pass --labeled a folder with one sub-folder of images per class, or leave it out."
elif [ -n "$TEACHER_CKPT" ] && [ ! -e "$(from_caller "$TEACHER_CKPT")" ]; then
  bad "the teacher checkpoint '$TEACHER_CKPT' does not exist; pass --teacher-ckpt a teacher's model file, model folder or run folder."
elif [ "$TEACHER_TRAINER" = ZeroshotCLIP ] && [ -n "$TEACHER_CKPT" ]; then
  bad "a ZeroshotCLIP teacher has no checkpoint; leave out --teacher-ckpt, or name the trainer that trained it with --teacher-trainer."
elif [ -n "$TEACHER_TRAINER" ] && [ "$TEACHER_TRAINER" != ZeroshotCLIP ] && [ -z "$TEACHER_CKPT" ]; then
  bad "a $TEACHER_TRAINER teacher needs its checkpoint; pass --teacher-ckpt PATH, or leave out --teacher-trainer for a zero-shot teacher."
elif [ "$ONNX" != 0 ] && [ "$ONNX" != 1 ]; then
  bad "ONNX is '$ONNX'; set ONNX=1 (export student.onnx too, the default) or ONNX=0."
fi
# A CLIP named by a weights file relative to here: the runs start in the repository root.
for name in TEACHER STUDENT; do
  if [ -f "$(from_caller "${!name}")" ]; then printf -v "$name" '%s' "$(from_caller "${!name}")"; fi
done
IMAGES=$(from_caller "$IMAGES") CLASSES=$(from_caller "$CLASSES") LABELED=$(from_caller "$LABELED")
TEACHER_CKPT=$(from_caller "$TEACHER_CKPT")
TEACHER_TRAINER=${TEACHER_TRAINER:-$([ -n "$TEACHER_CKPT" ] && echo PromptSRC || echo ZeroshotCLIP)}
CFG=${CFG:-configs/trainers/PromptKD/base2new/image_folder.yaml}
if [ -f "$(from_caller "$CFG")" ]; then CFG=$(from_caller "$CFG"); fi  # else: repository-relative
if [ ! -f "$CFG" ]; then
  bad "the student config '$CFG' does not exist; pass --config a PromptKD config file (configs/trainers/PromptKD/)."
fi
OUT=$(from_caller "${OUT:-${OUTPUT:-./output}/distil_folder}")
if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then bad "the output folder '$OUT' is a file; pass --out a folder."; fi
# shellcheck disable=SC2086  # a list of seeds
check_seeds $SEED_LIST
if [ $((${#OPTS[@]} % 2)) = 1 ]; then
  bad "the arguments after the options must be KEY VALUE pairs; got an odd number (${#OPTS[@]}) of them (${OPTS[*]})."
fi
for ((i = 0; i < ${#OPTS[@]}; i += 2)); do
  if [[ ! ${OPTS[$i]} =~ ^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$ ]]; then
    bad "'${OPTS[$i]}' is not a config KEY; the arguments after the options are KEY VALUE pairs (e.g. OPTIM.MAX_EPOCH 5)."
  fi
done
DATA=$(from_caller "${DATA_GIVEN:-$OUT}")
if [ -n "${CLIP_ROOT:-}" ]; then export CLIP_ROOT; CLIP_ROOT=$(from_caller "$CLIP_ROOT"); fi

# ---------------------------------------------------------------- the runs
COMMON=(--dataset-config-file configs/datasets/image_folder.yaml --config-file "$CFG")
FOLDERS=(DATASET.IMAGE_FOLDER.TRAIN_DIR "$IMAGES" DATASET.IMAGE_FOLDER.CLASSNAMES_FILE "$CLASSES")
KD=(MODEL.BACKBONE.NAME "$STUDENT" TRAINER.PROMPTKD.TEACHER_NAME "$TEACHER"
  TRAINER.PROMPTKD.TEACHER_TRAINER "$TEACHER_TRAINER" TRAINER.PROMPTKD.TEACHER_CKPT "$TEACHER_CKPT"
  TRAINER.PROMPTKD.TEXT_CACHE_DIR "$OUT/teacher_text_features" TEST.FINAL_MODEL last_step)
EVAL=(DATASET.IMAGE_FOLDER.EVAL_DIR "$LABELED" TEST.NO_TEST False)
# The teacher's own evaluations run at its resolution (in training PromptKD resizes the
# student's batch for it); unknown here (a CLIP_ROOT given as a KEY VALUE pair): left to the
# evaluation run, which names what it needs.
TEACHER_SIZE=()
if [ -n "$LABELED" ]; then
  res=$(PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c '
import sys
from dassl_ext.modeling import clip_sizes
print(clip_sizes(sys.argv[1]).input_resolution)' "$TEACHER" 2> /dev/null) && TEACHER_SIZE=(INPUT.SIZE "($res, $res)")
fi

if [ -n "$TEACHER_CKPT" ]; then
  echo "== Teacher: $TEACHER_TRAINER on $TEACHER, $TEACHER_CKPT"
else
  echo "== Teacher: zero-shot CLIP $TEACHER"
fi
# The prompt-tuned teacher is evaluated from the very file PromptKD loads (its own lookup),
# linked into a folder the trainer's load_model reads: <folder>/<model name>/.
TEACHER_DIR=$OUT/eval/teacher_checkpoint
if [ -n "$TEACHER_CKPT" ] && [ -n "$LABELED" ]; then
  found=$(PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c '
import sys
import trainers  # noqa: F401  (registers the trainers)
from dassl_ext.errors import UserError
from trainers.promptkd_teacher import missing_teacher_error, teacher_checkpoint, teacher_trainer
trainer, setting = sys.argv[1:]
try:
    cls = teacher_trainer(trainer)
    path, where = teacher_checkpoint(setting, trainer, cls.frozen_teacher, "base2novel", "")
    if path is None:
        raise missing_teacher_error(where)
except (UserError, KeyError) as e:
    sys.exit(f"Error: {e}")
print(cls.model_name)
print(path)' "$TEACHER_TRAINER" "$TEACHER_CKPT") || exit 2
  model_name=${found%%$'\n'*} teacher_file=${found#*$'\n'}
  link=$TEACHER_DIR/$model_name/model-best.pth.tar
  if [ "${DRY_RUN:-0}" = 1 ]; then
    echo "DRY_RUN: ln -sfn $(printf '%q' "$teacher_file") $(printf '%q' "$link")"
  else
    mkdir -p "$(dirname "$link")"
    ln -sfn "$teacher_file" "$link"
  fi
fi

for seed in $SEED_LIST; do
  echo "== Student: PromptKD on $STUDENT, seed $seed, without labels -> $OUT/student/seed$seed"
  run_train "$OUT/student/seed$seed" --seed "$seed" --trainer PromptKD "${COMMON[@]}" \
    "${FOLDERS[@]}" "${KD[@]}" TEST.NO_TEST True "${OPTS[@]}"
done

if [ -n "$LABELED" ]; then
  for seed in $SEED_LIST; do
    echo "== Evaluation: the distilled student, seed $seed"
    run_eval "$OUT/eval/student/seed$seed" --seed "$seed" --trainer PromptKD "${COMMON[@]}" \
      --model-dir "$OUT/student/seed$seed" "${FOLDERS[@]}" "${KD[@]}" "${EVAL[@]}" "${OPTS[@]}"
  done
  ROWS=()
  for who in teacher student; do
    clip=$TEACHER
    if [ $who = student ]; then clip=$STUDENT; fi
    echo "== Evaluation: zero-shot CLIP $clip (the $who's CLIP)"
    size=()
    if [ $who = teacher ]; then size=("${TEACHER_SIZE[@]}"); fi
    run_eval "$OUT/eval/zeroshot_$who" --trainer ZeroshotCLIP "${COMMON[@]}" "${FOLDERS[@]}" \
      "${EVAL[@]}" "${OPTS[@]}" MODEL.BACKBONE.NAME "$clip" "${size[@]}"
    ROWS+=("zero-shot CLIP ($who)=$OUT/eval/zeroshot_$who")
    if [ $who = teacher ] && [ -n "$TEACHER_CKPT" ]; then
      echo "== Evaluation: the $TEACHER_TRAINER teacher"
      # TEACHER_CKPT is in its configuration: another teacher is not taken for this one
      run_eval "$OUT/eval/teacher" --trainer "$TEACHER_TRAINER" "${COMMON[@]}" \
        --model-dir "$TEACHER_DIR" "${FOLDERS[@]}" "${EVAL[@]}" "${OPTS[@]}" \
        MODEL.BACKBONE.NAME "$TEACHER" TRAINER.PROMPTKD.TEACHER_CKPT "$TEACHER_CKPT" \
        "${TEACHER_SIZE[@]}"
      ROWS+=("$TEACHER_TRAINER teacher=$OUT/eval/teacher")
    fi
  done
  ROWS+=("PromptKD student (no labels)=$OUT/eval/student")
  echo "== Base / new / HM on $LABELED"
  # shellcheck disable=SC2086  # a list of seeds
  run_python scripts/demo_table.py "${ROWS[@]}" --markdown "$OUT/table.md" \
    --plot "$OUT/models.png" --seeds $SEED_LIST
fi

ONNX_FLAG=()
if [ "$ONNX" = 1 ]; then
  if "$PYTHON" -c "import onnxruntime, onnxscript" > /dev/null 2>&1; then
    ONNX_FLAG=(--onnx)
  else
    echo "Note: onnxruntime or onnxscript is not installed, so only student.pt is exported;" \
      "pip install -e \".[onnx]\" and run python scripts/export_student.py RUN/student.pt --onnx" \
      "for student.onnx."
  fi
fi
for seed in $SEED_LIST; do
  run=$OUT/student/seed$seed
  model=$run/student.pt
  if [ ${#ONNX_FLAG[@]} = 1 ]; then model=$run/student.onnx; fi
  # kept when newer than the checkpoint it would be made from (the run's last epoch)
  checkpoint=$(checkpoint_lookup find "$run/VLPromptLearner" 2> /dev/null || true)
  if [ -n "$checkpoint" ] && [ -f "$run/student.pt" ] && [ "$model" -nt "$checkpoint" ]; then
    echo "== Export: $model is newer than $checkpoint; kept"
  else
    echo "== Export: the student of seed $seed -> $run/student.pt"
    run_python scripts/export_student.py "$run" "${ONNX_FLAG[@]}"
  fi
done
echo "Done. Classify images with: python scripts/predict.py -m $model IMAGE_OR_FOLDER ..."
if [ -n "$LABELED" ]; then echo "Table: $OUT/table.md; bar chart: $OUT/models.png"; fi
