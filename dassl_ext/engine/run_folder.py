"""Who may use an output folder, decided before ``train.py`` writes anything in it.

:func:`claim_run_folder` refuses (one UserError, nothing written) a request that cannot give
an honest record: ``--eval-only`` of untrained weights (no ``--model-dir``, or one without
checkpoints); a folder locked by another live run; a folder whose ``results.json`` came from
a configuration that changes results (with ``--skip-finished`` the same configuration is
reported done, a training run that finished under TEST.NO_TEST too: its record has no
splits); training over checkpoints without ``--resume``; ``--resume`` of nothing, or with a
configuration that changes results. Under torchrun rank 0 locks and reads the folder
and the others receive its decision, so all stop (or go on) together. The folder's record,
``config.yaml``, is written by :func:`write_config`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from dassl_ext.config.compare import config_differences, format_differences, read_saved_config
from dassl_ext.errors import UserError
from dassl_ext.evaluation.results import config_hash, read_results
from dassl_ext.registry import TRAINER_REGISTRY
from dassl_ext.utils.atomic import write_text_atomic
from dassl_ext.utils.checkpoint import (
    NothingToResumeError,
    checkpoint_epochs,
    find_checkpoint,
    loadable_models,
    resumable_models,
)
from dassl_ext.utils.distributed import broadcast_object, is_main_process
from dassl_ext.utils.run_lock import (
    RunLock,
    acquire_run_lock,
    describe_holder,
    remove_stale_temporaries,
)

logger = logging.getLogger(__name__)

SKIPPED = "Done, skipped: {out} already holds the results of this configuration (results.json)."
SKIPPED_UNTESTED = (
    "Done, skipped: {out} already holds a run of this configuration trained to the end, "
    "without evaluation (TEST.NO_TEST; results.json)."
)


@dataclass
class RunFolder:
    """The claimed output folder: ``skipped`` is the line to print when ``--skip-finished``
    found this configuration done; ``notes`` are warnings to log once ``log.txt`` is open."""

    path: str
    lock: RunLock | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    def log_notes(self) -> None:
        for note in self.notes:
            logger.warning(note)

    def release(self) -> None:
        """Give the folder back (rank 0: its lock); idempotent."""
        if self.lock is not None:
            self.lock.release()


def claim_run_folder(cfg: Any, args: Any) -> RunFolder:
    """Check the request and the folder ``cfg.OUTPUT_DIR``, and lock it (rank 0), before
    anything is written; raises a UserError saying what to do instead."""
    check_request(cfg, args)
    if not is_main_process():
        kind, message = broadcast_object(None)
        if kind == "error":
            raise UserError(message)
        return RunFolder(cfg.OUTPUT_DIR, skipped=message if kind == "skip" else None)
    try:
        folder = _claim(cfg, args)
    except BaseException as e:  # the other ranks must not wait for a decision that never comes
        broadcast_object(("error", str(e)))
        raise
    broadcast_object(("skip", folder.skipped) if folder.skipped else ("ok", None))
    return folder


def write_config(cfg: Any, output_dir: str) -> str:
    """Write ``cfg`` as ``<output_dir>/config.yaml`` (atomically) and return the path."""
    return write_text_atomic(os.path.join(output_dir, "config.yaml"), cfg.dump())


def check_request(cfg: Any, args: Any) -> None:
    """Refuse ``--eval-only`` that would evaluate untrained weights (see the module doc), and
    ``--model-dir`` / ``--load-epoch`` without it (they would be ignored: a new training)."""
    if not args.eval_only:
        for flag in ("--model-dir", "--load-epoch"):
            if getattr(args, flag[2:].replace("-", "_"), None) not in (None, ""):
                raise UserError(
                    f"{flag} is only read with --eval-only (which evaluates a saved run); "
                    "add --eval-only to evaluate it, or leave it out to train (--resume RUN "
                    "continues a run)."
                )
        return
    name = cfg.TRAINER.NAME
    if getattr(TRAINER_REGISTRY.get(name), "evaluation_only", False):
        return  # nothing to train (zero-shot): its results are those of its fixed weights
    if not args.model_dir:
        raise UserError(
            f"--eval-only needs --model-dir RUN (the output folder of a trained {name} run); "
            "without it the untrained model would be evaluated and written to results.json "
            "as if it were a result."
        )
    epoch = args.load_epoch
    if not loadable_models(args.model_dir, epoch):
        what = "model-best.pth.tar or model.pth.tar-<epoch>"
        what = f"model.pth.tar-{epoch}" if epoch is not None else what
        raise UserError(
            f"--model-dir {args.model_dir} holds no checkpoint to evaluate (no <model>/{what}); "
            "pass the output folder of a trained run"
            + (" and an epoch it saved (--load-epoch)." if epoch is not None else ".")
        )


def model_files(paths: list[str], output_dir: str) -> list[str]:
    """The checkpoint files an evaluation loaded, as results.json records them: relative to
    the run's folder (a tree moved as a whole still matches), sorted."""
    return sorted(os.path.relpath(os.path.abspath(p), os.path.abspath(output_dir)) for p in paths)


def _model_to_evaluate(args: Any, out: str) -> list[str]:
    """What ``--eval-only --model-dir`` would load now, as :func:`model_files` records it."""
    folders = loadable_models(args.model_dir, args.load_epoch)
    found = [find_checkpoint(os.path.join(args.model_dir, m), args.load_epoch) for m in folders]
    return model_files(found, out)


def _claim(cfg: Any, args: Any) -> RunFolder:
    out = cfg.OUTPUT_DIR
    existed = os.path.isdir(out)
    if not existed:  # only the request and the --resume folder can refuse: create nothing yet
        skipped, notes = _check_folder(cfg, args, out)
    lock = acquire_run_lock(out)
    try:
        if existed:  # under the lock: no other run changes the folder while we look
            skipped, notes = _check_folder(cfg, args, out)
    except BaseException:
        lock.release()
        raise
    if lock.stale is not None:
        notes.append(
            f"Took over the lock of {out}: it was left by {describe_holder(lock.stale)}, "
            "which stopped without releasing it (killed?)."
        )
    if not skipped:
        removed = remove_stale_temporaries(out)
        if removed:
            notes.append(
                f"Removed {len(removed)} temporary file(s) of writes that a killed run left "
                f"unfinished: {', '.join(removed)}."
            )
    return RunFolder(out, lock, skipped, notes)


def _check_folder(cfg: Any, args: Any, out: str) -> tuple[str | None, list[str]]:
    """The refusals that depend on what ``out`` (and the ``--resume`` folder) hold;
    returns (the skip line or None, notes)."""
    notes: list[str] = []
    results = os.path.join(out, "results.json")
    if os.path.lexists(results):
        damage = _results_damage(results)
        if damage and getattr(args, "skip_finished", False):
            # a damaged record cannot show that the run finished: never "Done, skipped"
            again = (
                f"delete it and run again with --resume {out} (the run is evaluated again)"
                if resumable_models(out)
                else f"delete {out} to run again there"
            )
            raise UserError(
                f"{results} {damage}, so it cannot show that the run in {out} finished; "
                f"{again}, or choose another --output-dir."
            )
    if os.path.isfile(results):
        diffs = _differences_from_run(out, cfg, notes)
        if diffs:
            raise UserError(
                f"{out} already holds the results of another configuration (results.json; "
                f"differences from {_record(out)}: {format_differences(diffs)}); choose "
                f"another --output-dir, or delete {out} to run this configuration there."
            )
        evaluated = _read_record(results)
        evaluated = evaluated.get("model_files") if isinstance(evaluated, dict) else None
        if args.eval_only and args.model_dir and isinstance(evaluated, list):
            now = _model_to_evaluate(args, out)
            if sorted(evaluated) != now:
                raise UserError(
                    f"{out} already holds the results of another model (results.json: "
                    f"{', '.join(map(str, evaluated))}; this evaluation would load "
                    f"{', '.join(now)}, relative to {out}); choose another --output-dir, or "
                    f"delete {out} to evaluate this model there."
                )
        if getattr(args, "skip_finished", False):
            untested = trained_without_evaluation(_read_record(results))
            if not untested:
                return SKIPPED.format(out=out), notes
            if not args.eval_only:  # an evaluation asked for is not done by such a record
                return SKIPPED_UNTESTED.format(out=out), notes
    if args.eval_only or args.no_train:
        held = [] if os.path.isfile(results) else resumable_models(out)  # (else compared above)
        diffs = _differences_from_run(out, cfg, notes) if held else []
        if diffs:  # its config.yaml would be replaced: a later --resume would then accept this
            raise UserError(
                f"{out} holds checkpoints of {held[0]} from another configuration "
                f"(differences from {_record(out)}: {format_differences(diffs)}); this run would "
                "replace its config.yaml, and --resume would then continue those checkpoints "
                "under this configuration; choose another --output-dir."
            )
        done = min((max(checkpoint_epochs(os.path.join(out, m))) for m in held), default=0)
        if args.eval_only and held and done < cfg.OPTIM.MAX_EPOCH:
            raise UserError(
                f"{out} holds an unfinished run (epoch {done} of OPTIM.MAX_EPOCH "
                f"{cfg.OPTIM.MAX_EPOCH}); its results.json would mark it finished (--skip-finished "
                f"would then skip it); evaluate it into another --output-dir, or continue it "
                f"with --resume {out}."
            )
        return None, notes
    if not cfg.RESUME:
        held = resumable_models(out)
        if held:
            raise UserError(
                f"{out} already holds checkpoints of {held[0]}; pass --resume {out} to "
                "continue, or choose another --output-dir."
            )
        held = loadable_models(out) if os.path.isfile(results) else []
        if held:  # a finished run kept only its best model: training again would replace it
            raise UserError(
                f"{out} already holds a finished run (results.json) and its model "
                f"{held[0]}/model-best.pth.tar, without epoch checkpoints to resume from; "
                f"evaluate it with --eval-only --model-dir {out}, or choose another "
                "--output-dir (or delete the folder to train again there)."
            )
        return None, notes
    run = cfg.RESUME
    held = [] if _same_folder(run, out) else resumable_models(out)
    if held:  # another run's checkpoints: continuing run here would write over them
        raise UserError(
            f"{out} already holds checkpoints of {held[0]}, and --resume {run} would continue "
            f"that run there, over them; pass --resume {out} to continue the run in {out}, "
            f"leave out --output-dir to continue in {run}, or choose another --output-dir."
        )
    if not resumable_models(run):
        raise NothingToResumeError(
            f"Nothing to resume in {run}: no <model>/model.pth.tar-<epoch>; set "
            "TRAIN.CHECKPOINT_FREQ to save every few epochs."
        )
    diffs = _differences_from_run(run, cfg, notes)
    if diffs:
        raise UserError(
            f"--resume {run}: this configuration differs from the run's ({_record(run)}) in "
            f"keys that change results: {format_differences(diffs)}{_hint(diffs, cfg)}; "
            "resume with the run's original options, or start this configuration in a new "
            "--output-dir."
        )
    return None, notes


def _same_folder(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.abspath(a) == os.path.abspath(b)


def _record(run: str) -> str:
    return os.path.join(run, "config.yaml")


def _differences_from_run(run: str, cfg: Any, notes: list[str]) -> list[tuple[str, Any, Any]]:
    """Result-changing differences of ``cfg`` from the run in ``run`` (its config.yaml; else
    the config hash and seed in its results.json; else none, with a note)."""
    saved = read_saved_config(_record(run))
    if saved is not None:
        return config_differences(saved, cfg)
    old = _read_record(os.path.join(run, "results.json"))
    if not isinstance(old, dict):
        notes.append(f"{run} has no config.yaml; its configuration could not be compared.")
        return []
    diffs = []
    if old.get("config_hash") not in (None, config_hash(cfg)):
        diffs.append(("config hash in results.json", old["config_hash"], config_hash(cfg)))
    if "seed" in old and old["seed"] != cfg.SEED:
        diffs.append(("SEED", old["seed"], cfg.SEED))
    return diffs


def _read_record(path: str) -> Any:
    try:
        return read_results(path)
    except (OSError, ValueError):
        return None


def _results_damage(path: str) -> str | None:
    """Why the ``results.json`` at ``path`` is not a run's record (a phrase), or None."""
    if not os.path.isfile(path):
        return "is not a file"
    try:
        record = read_results(path)
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError included
        return f"is truncated or not JSON ({type(e).__name__})"
    splits = record.get("splits") if isinstance(record, dict) else None
    if not (isinstance(splits, dict) and (splits or trained_without_evaluation(record))):
        return "holds no results (no splits)"
    return None


def trained_without_evaluation(record: Any) -> bool:
    """Whether a results.json record is that of a run that trained to the end under
    TEST.NO_TEST: ``"no_test": true`` and no splits."""
    return isinstance(record, dict) and record.get("no_test") is True and not record.get("splits")


def _hint(diffs: list[tuple[str, Any, Any]], cfg: Any) -> str:
    keys = {k for k, _, _ in diffs}
    hints = []
    if "OPTIM.MAX_EPOCH" in keys:
        hints.append("another OPTIM.MAX_EPOCH is another LR schedule, not a continuation")
    if "OPTIM.LR" in keys and cfg.DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK:
        hints.append(
            "with DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK, OPTIM.LR and the global batch grow "
            "with the number of processes: resume with as many as the run had"
        )
    return f" ({'; '.join(hints)})" if hints else ""
