"""Train or evaluate a registered trainer (Dassl's command line).

    python train.py --root DATA --trainer PromptKD --dataset-config-file configs/datasets/x.yaml \
        --config-file configs/trainers/PromptKD/y.yaml --output-dir out --seed 1 KEY VALUE ...

Multi-GPU: ``torchrun --nproc_per_node N train.py ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys


def _stopped_while_starting(signum: int, frame) -> None:
    """Until the run's own handlers are in place (the imports take seconds), a signal ends
    the process with one line instead of a KeyboardInterrupt traceback: nothing is written
    before then."""
    name = signal.Signals(signum).name
    line = f"Interrupted by {name} while starting; nothing was written. Run again.\n"
    with contextlib.suppress(OSError):  # stderr gone (SIGHUP: the terminal closed)
        os.write(2, line.encode("ascii", "backslashreplace"))
    os._exit(128 + signum)


if __name__ == "__main__":
    for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, _name):
            signal.signal(getattr(signal, _name), _stopped_while_starting)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # our `datasets` wins

from dassl_ext.config import setup_cfg, validate_config  # noqa: E402
from dassl_ext.engine import build_trainer, scale_for_world_size  # noqa: E402
from dassl_ext.engine.faults import (  # noqa: E402
    Interrupted,
    as_user_error,
    how_to_continue,
    interrupted_message,
    signals_ignored,
    signals_raise_interrupted,
)
from dassl_ext.engine.run_folder import claim_run_folder, write_config  # noqa: E402
from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.utils import set_random_seed, setup_logger  # noqa: E402
from dassl_ext.utils.checkpoint import NothingToResumeError  # noqa: E402
from dassl_ext.utils.distributed import (  # noqa: E402
    destroy_distributed,
    get_world_size,
    init_distributed_from_env,
    is_main_process,
)
from dassl_ext.utils.logger import tolerant_console  # noqa: E402

logger = logging.getLogger(__name__)


def import_plugins() -> None:
    """Import the repository's ``trainers`` and ``datasets`` packages (they register)."""
    for name in ("trainers", "datasets"):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", type=str, default="", help="path to dataset")
    p.add_argument("--output-dir", type=str, default="", help="output directory")
    p.add_argument("--resume", type=str, default="", help="output dir of a run to continue")
    p.add_argument("--seed", type=int, default=-1, help="only positive value enables a fixed seed")
    p.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    p.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    p.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    p.add_argument("--config-file", type=str, default="", help="path to config file")
    p.add_argument("--dataset-config-file", type=str, default="", help="dataset config file")
    p.add_argument("--trainer", type=str, default="", help="name of trainer")
    p.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    p.add_argument("--eval-only", action="store_true", help="evaluation only")
    p.add_argument("--model-dir", type=str, default="", help="load model from this directory")
    p.add_argument("--load-epoch", type=int, help="load model weights at this epoch")
    p.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    p.add_argument(
        "--skip-finished",
        action="store_true",
        help="exit 0 if the output dir holds results.json of this configuration",
    )
    p.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="KEY VALUE pairs")
    return p.parse_args(argv)


def check_argv_text(argv: list[str]) -> None:
    """Refuse arguments that are not text in this process's encoding: under LC_ALL=C with
    PYTHONUTF8=0, a UTF-8 path arrives with undecodable bytes as lone surrogates, which
    log.txt, config.yaml, results.json and tensorboard would each record differently or
    not at all."""
    for arg in argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(
                f"The argument {arg!a} is not text in this process's encoding "
                f"({sys.getfilesystemencoding()}: the locale is C or POSIX and PYTHONUTF8 is "
                "0); run with a UTF-8 locale (e.g. LC_ALL=C.UTF-8) or PYTHONUTF8=1."
            ) from None


def check_names(cfg) -> None:
    """A run needs a trainer and a dataset; say which flag names each (the registries'
    own error would name an empty string, and the dataset's only once the folder is written)."""
    from dassl_ext.registry import DATASET_REGISTRY, TRAINER_REGISTRY

    for key, name, flag, registry in (
        ("TRAINER.NAME", cfg.TRAINER.NAME, "--trainer NAME", TRAINER_REGISTRY),
        ("DATASET.NAME", cfg.DATASET.NAME, "--dataset-config-file FILE", DATASET_REGISTRY),
    ):
        if not name:
            raise UserError(
                f"No {key.split('.')[0].lower()} given ({key} is empty); pass {flag} (or set "
                f"{key}): one of {', '.join(registry.registered_names())}."
            )


def foreign_sections(cfg, args) -> list[str]:
    """Warnings for config files that set another trainer's section (``TRAINER.PROMPTSRC``
    for ``--trainer CoOp``): nothing reads it, so the run is not what the file says."""
    from dassl_ext.config.setup import load_yaml_with_base
    from dassl_ext.registry import TRAINER_REGISTRY

    name = cfg.TRAINER.NAME
    trainer = TRAINER_REGISTRY.get(name)
    if getattr(trainer, "evaluation_only", False):
        return []  # zero-shot CLIP runs with other trainers' config files
    own = {name.upper(), getattr(trainer, "prec_section", name.upper())}
    if name == "PromptKD":  # its teacher reads the teacher trainer's section
        own.add(str(cfg.TRAINER.PROMPTKD.TEACHER_TRAINER).upper())
    elif name == cfg.TRAINER.PROMPTKD.TEACHER_TRAINER:  # a teacher evaluated by the PromptKD
        own.add("PROMPTKD")  # scripts with the student's config file (distil_folder.sh)
    notes = []
    for path in filter(None, (args.dataset_config_file, args.config_file)):
        section = load_yaml_with_base(path).get("TRAINER") or {}
        other = sorted(k for k, v in section.items() if isinstance(v, dict) and k not in own)
        if other:
            notes.append(
                f"Config file {path} sets TRAINER.{other[0]}, which trainer {name} does not read "
                f"(it reads TRAINER.{name.upper()}); those keys have no effect. Pass a config "
                f"file of {name} (configs/trainers/{name}/), or the file's own --trainer."
            )
    return notes


def _say(text: str, log_file: bool) -> None:
    """Print ``text`` on stderr and, when this run opened its log.txt (it holds the
    folder), append it there too: after SIGHUP (terminal closed) or with stderr
    redirected away, log.txt is where the user looks for the error or the resume line."""
    with contextlib.suppress(OSError, ValueError):  # stderr closed or gone with the terminal
        print(text, file=sys.stderr, flush=True)
    if not log_file:
        return
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and getattr(h, "_dassl_ext", False):
            h.emit(logging.LogRecord("train", logging.ERROR, __file__, 0, text, None, None))


def main(argv: list[str] | None = None) -> int:
    """Run one experiment; returns the exit status: 1 with a message for bad input or a
    fault, 130 / 143 with a line saying how to resume after SIGINT / SIGTERM."""
    argv = sys.argv[1:] if argv is None else list(argv)
    tolerant_console()
    args = parse_args(argv)
    cfg = trainer = folder = None
    training = False  # trainer.train() has started: a stop may leave checkpoints to resume
    logged = False  # this run opened its log.txt (it holds the folder)
    try:
        with signals_raise_interrupted():
            check_argv_text(argv)
            import_plugins()
            cfg = setup_cfg(args)
            check_names(cfg)
            # every value in range before anything is written or loaded
            validate_config(cfg, will_train=not (args.eval_only or args.no_train))
            init_distributed_from_env(use_cuda=cfg.USE_CUDA, timeout_s=cfg.DIST.TIMEOUT)
            scale_for_world_size(cfg, get_world_size())
            # the folder is this run's, and every refusal is made, before anything is written
            folder = claim_run_folder(cfg, args)
            if folder.skipped:
                if is_main_process():
                    print(folder.skipped)
                return 0
            setup_logger(cfg.OUTPUT_DIR)
            logged = True
            folder.log_notes()
            for note in foreign_sections(cfg, args):
                logger.warning(note)
            if cfg.SEED >= 0:
                set_random_seed(cfg.SEED)
            if is_main_process():
                write_config(cfg, cfg.OUTPUT_DIR)
                logger.info(f"Config:\n{cfg.dump()}")
            trainer = build_trainer(cfg)
            if args.eval_only:
                trainer.load_model(args.model_dir, epoch=args.load_epoch)
                trainer.test()
                return 0
            if not args.no_train:
                training = True
                trainer.train()
    except Exception as e:  # bad input or a fault: a message; a programming error: raised
        with signals_ignored():
            error = as_user_error(e, trainer)
            if error is None:
                raise
            _say(f"Error: {error}", logged)
            resumable = training and not isinstance(e, NothingToResumeError)
            resume = how_to_continue(argv, cfg.OUTPUT_DIR, resumable) if cfg else None
            if resume and is_main_process():
                _say(resume, logged)
        return 1
    except Interrupted as e:
        with signals_ignored():
            run_dir = cfg.OUTPUT_DIR if cfg else ""
            if is_main_process():
                _say(interrupted_message(e, trainer, argv, run_dir, training), logged)
        return e.exit_code
    finally:
        with signals_ignored():  # a second Ctrl-C must not leave the folder's note behind
            if trainer is not None:
                trainer.close_writer()
            if folder is not None:
                folder.release()
            destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
