"""Export a trained PromptKD student to ONE deployable file (see scripts/predict.py).

    python scripts/export_student.py RUN_DIR [-o student.pt] [--onnx] [--load-epoch N] [KEY VAL..]
    python scripts/export_student.py student.pt --onnx     # an existing export -> student.onnx

RUN_DIR is a PromptKD output folder (config.yaml + VLPromptLearner/). The student is
loaded by the trainer itself (model-best.pth.tar, else the newest epoch), so the class
text features come from the checkpoint, or else from the teacher cache / the teacher.
Trailing KEY VALUE pairs override the saved config (e.g. DATASET.ROOT /new/data).
``-o`` may name a folder (the file is then FOLDER/student.pt). Exporting a run that has
not finished (no best file, newest epoch below OPTIM.MAX_EPOCH) prints a note naming the
epoch exported.
The file holds the student encoder, prompts, projector, class text features, class
names and preprocessing, and loads with ``torch.load(..., weights_only=True)``.
``--onnx`` also writes the same student as an ONNX model beside it (student.onnx: image
batch in, class probabilities and logits out, the preprocessing in its metadata; see
trainers/promptkd_onnx.py), checked against PyTorch; it needs ``pip install -e ".[onnx]"``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dassl_ext.config.setup import (  # noqa: E402
    apply_config_extensions,
    get_cfg_default,
    merge_from_file,
    merge_from_list,
)
from dassl_ext.engine import build_trainer  # noqa: E402
from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.utils.checkpoint import (  # noqa: E402
    BEST_FILE,
    checkpoint_epochs,
    find_checkpoint,
)

MODEL_NAME = "VLPromptLearner"  # PromptKD's registered model (its checkpoint folder)


def student_checkpoint(run_dir: str, epoch: int | None) -> str:
    """The checkpoint the trainer will load (best, else newest epoch, or ``epoch``); a run
    folder without one is a UserError saying what is there."""
    folder = os.path.join(run_dir, MODEL_NAME)
    path = find_checkpoint(folder, epoch)
    if os.path.isfile(path):
        return path
    epochs = checkpoint_epochs(folder)
    if epoch is not None and epochs:
        raise UserError(
            f"{run_dir} has no epoch {epoch} checkpoint ({path}); its epochs are "
            f"{', '.join(map(str, epochs))}: pass one of them to --load-epoch, or leave it out."
        )
    raise UserError(
        f"{run_dir} holds no student checkpoint (no {BEST_FILE} or model.pth.tar-<N> in "
        f"{folder}/): the run has not saved one yet; wait until it has (TRAIN.CHECKPOINT_FREQ "
        "saves every few epochs) or train it to the end."
    )


def write_export(trainer, path: str) -> None:
    """``export_student`` to ``path``; a path that cannot be written is a UserError."""
    from trainers.promptkd_export import export_student

    try:
        export_student(trainer, path)
    except UserError:
        raise
    except OSError as e:  # -o in a folder that does not exist, or under a file
        raise UserError(f"Cannot write {path} ({e.strerror or e}); choose another -o.") from None


def output_path(run_dir: str, output: str) -> str:
    """Where the export goes: ``-o`` (a folder: FOLDER/student.pt), else RUN_DIR/student.pt."""
    if not output:
        return os.path.join(run_dir, "student.pt")
    return os.path.join(output, "student.pt") if os.path.isdir(output) else output


def check_output(path: str) -> None:
    """A UserError for an output that is not a student.pt: a ``.onnx`` name (the ONNX model
    goes beside the export, with --onnx), or a file there that is not an export (a checkpoint,
    the run's config: it would be lost)."""
    from trainers.promptkd_export import load_export

    if path.lower().endswith(".onnx"):
        raise UserError(
            f"-o {path} names an ONNX file, but -o is the PyTorch export (student.pt); pass -o "
            "with a .pt name and add --onnx: the ONNX model is written beside it (.onnx)."
        )
    if os.path.exists(path):
        try:
            load_export(path)
        except UserError:
            raise UserError(
                f"-o {path} already holds a file that is not a student export (a checkpoint, "
                "a config or another file would be overwritten and lost); choose another -o."
            ) from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", help="PromptKD output folder (holds config.yaml)")
    p.add_argument("-o", "--output", default="", help="file to write (RUN_DIR/student.pt)")
    p.add_argument("--load-epoch", type=int, help="model.pth.tar-<N> instead of the best file")
    p.add_argument("--onnx", action="store_true", help="also write student.onnx beside it")
    args, opts = p.parse_known_args(argv)  # the rest: KEY VALUE config overrides
    if os.path.isfile(args.run_dir) and args.run_dir.lower().endswith(".onnx"):
        print(
            f"Error: {args.run_dir} is already an ONNX model; pass the student.pt it was "
            "exported from (or the run folder) to write its ONNX model.",
            file=sys.stderr,
        )
        return 1
    if args.onnx and os.path.isfile(args.run_dir) and not opts:  # an export: convert it
        return write_onnx_beside(args.run_dir)
    import datasets  # noqa: F401  (registers the datasets)
    import trainers  # noqa: F401  (registers the trainers and their config sections)

    run_dir = args.run_dir
    path = output_path(run_dir, args.output)
    try:
        check_output(path)
        if args.onnx:  # before the long part: the packages are there
            from trainers.promptkd_onnx import require_onnx_packages

            require_onnx_packages()
        config = os.path.join(run_dir, "config.yaml")
        if not os.path.isfile(config):
            what = "does not exist" if not os.path.exists(run_dir) else "holds no config.yaml"
            if os.path.isfile(run_dir):  # e.g. student.pt without --onnx
                what = "is a file (add --onnx to convert a student export to ONNX)"
            raise UserError(
                f"{run_dir} {what}, so it is not a run folder; pass the --output-dir of a "
                "PromptKD training run."
            )
        cfg = apply_config_extensions(get_cfg_default())
        merge_from_file(cfg, config)
        merge_from_list(cfg, opts)
        if cfg.TRAINER.NAME != "PromptKD":
            raise UserError(
                f"{run_dir} is a {cfg.TRAINER.NAME} run, not a PromptKD one; only a PromptKD "
                "student can be exported."
            )
        checkpoint = student_checkpoint(run_dir, args.load_epoch)
        cfg.freeze()
        trainer = build_trainer(cfg)
        epoch = trainer.load_model(run_dir, epoch=args.load_epoch)
        write_export(trainer, path)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    print(f"Wrote {path} ({len(trainer.classnames)} classes) from {checkpoint}")
    max_epoch = cfg.OPTIM.MAX_EPOCH
    unfinished = isinstance(epoch, int) and epoch < max_epoch and args.load_epoch is None
    if unfinished and not checkpoint.endswith(BEST_FILE):
        print(
            f"Note: that is epoch {epoch} of OPTIM.MAX_EPOCH {max_epoch}: the run has not "
            "finished (or stopped early); export it again when it has.",
            file=sys.stderr,
        )
    return write_onnx_beside(path) if args.onnx else 0


def write_onnx_beside(pt_path: str) -> int:
    """Write the ONNX model of export ``pt_path`` beside it (student.onnx); exit status."""
    from trainers.promptkd_onnx import export_onnx, onnx_path_for

    path = onnx_path_for(pt_path)
    try:
        diff = export_onnx(pt_path, path)
    except UserError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(
            f"Error: Cannot write {path} ({e.strerror or e}); choose another -o.", file=sys.stderr
        )
        return 1
    print(f"Wrote {path} (agrees with {pt_path}: largest probability difference {diff:.1g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
