"""Faults during a run: what stops it, and the one line that says how to continue.

A NaN / inf loss stops training before its step changes the weights; SIGINT / SIGTERM /
SIGHUP raise :class:`Interrupted` (files are written atomically, so nothing partial is
left; the exit status is 128 + the signal number); a lost torchrun peer and the user's
environment (files, encodings, memory) become one sentence, while programming errors keep
their tracebacks; :func:`resume_command` is the command that continues a stopped run.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shlex
import signal
import sys
import threading
from collections.abc import Iterator

import torch

from dassl_ext.errors import UserError, first_line
from dassl_ext.utils.checkpoint import last_epoch_checkpoint

# SIGHUP: the terminal closed (an ssh session dropped); stop as for SIGTERM rather than die
# without the resume line and with the folder's note left behind
_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss became NaN or infinite; the step was not applied (a FloatingPointError too,
    as Dassl raised)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; ``exit_code`` is 128 + the signal number (130, 143,
    129)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


def training_position(trainer) -> str:
    """``epoch E/N, batch B/M`` of the step the trainer is in (1-based)."""
    epoch, batch = getattr(trainer, "epoch", 0) + 1, getattr(trainer, "batch_idx", 0) + 1
    total = getattr(trainer, "max_epoch", "?")
    return f"epoch {epoch}/{total}, batch {batch}/{getattr(trainer, 'num_batches', '?')}"


def _at(trainer) -> str:
    """`` at epoch E/N, batch B/M`` once the trainer has started an epoch, else empty."""
    return f" at {training_position(trainer)}" if getattr(trainer, "num_batches", None) else ""


# What gloo says (as a plain RuntimeError) when a peer is gone or a collective waited past
# its timeout; NCCL raises torch.distributed.DistError subclasses, recognised by type
_LOST_PEER_SIGNS = ("connection closed by peer", "connection reset by peer", "broken pipe",
                    "timed out", "/gloo/")  # fmt: skip


def lost_process_error(e: BaseException, trainer=None) -> UserError | None:
    """For an error raised in a torchrun run by a collective whose peers are gone or hang:
    a UserError saying so (where, and what to look at); None for any other error."""
    import torch.distributed as dist

    from dassl_ext.utils.distributed import get_rank

    if not (dist.is_available() and dist.is_initialized()):
        return None
    text = str(e)
    lost_peer = isinstance(e, RuntimeError) and any(s in text.lower() for s in _LOST_PEER_SIGNS)
    if not (lost_peer or isinstance(e, getattr(dist, "DistError", ()))):
        return None
    first = first_line(e) or type(e).__name__
    return UserError(
        f"Process {get_rank()} of {dist.get_world_size()} lost the others{_at(trainer)}: another "
        f"process stopped, or did not answer within DIST.TIMEOUT seconds ({first}); this one "
        "stops too. The first error is in the log of the process that stopped."
    )


def as_user_error(e: Exception, trainer=None) -> Exception | None:
    """The error to print as one ``Error:`` line: ``e`` itself when it is a message for the
    user, one sentence for a lost torchrun process or the user's environment; None for a
    programming error (it keeps its traceback)."""
    from dassl_ext.registry import RegistryKeyError

    if isinstance(e, (UserError, RegistryKeyError)):
        return e
    return lost_process_error(e, trainer) or environment_error(e, trainer)


# What to do about an OSError, by errno; any other errno: check the path
_OS_ADVICE = {
    errno.EACCES: "check its permissions (or run as a user who may use it)",
    errno.EPERM: "check its permissions (or run as a user who may use it)",
    errno.EROFS: "write elsewhere: that file system is read-only",
    errno.EISDIR: "it is a folder where a file is expected: pass the file",
    errno.ENOTDIR: "a part of that path is a file where a folder is expected: fix the path",
    errno.ENOENT: "it does not exist: check the path",
    errno.EEXIST: "a file is in the way (a folder was expected?): choose another path",
    errno.ENOSPC: "free space on that disk, then run again",
    errno.EDQUOT: "free space within your disk quota, then run again",
    errno.ENAMETOOLONG: "the name is too long for the file system: use a shorter path",
    errno.EMFILE: "too many open files: lower DATALOADER.NUM_WORKERS or raise `ulimit -n`",
}
_MEMORY_ADVICE = (
    "lower DATALOADER.TRAIN_X.BATCH_SIZE (training) or DATALOADER.TEST.BATCH_SIZE "
    "(evaluation), or set MODEL.GRAD_CHECKPOINTING True or a lower precision "
    "(TRAINER.<METHOD>.PREC bf16 / fp16)"
)


def environment_error(e: BaseException, trainer=None) -> UserError | None:
    """For an error of the user's environment rather than of the program (a file that cannot
    be used, text in another encoding, memory exhausted), a UserError with one sentence
    naming the file or what to lower; None for any other error."""
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        where = "GPU" if isinstance(e, torch.OutOfMemoryError) else "CPU"
        return UserError(f"Out of {where} memory{_at(trainer)}: {_MEMORY_ADVICE}.")
    if isinstance(e, UnicodeEncodeError):
        text = e.object[e.start : e.end] if isinstance(e.object, str) else ""
        return UserError(
            f"A path or text this run uses holds characters ({text!a}) that this process's "
            f"{e.encoding} encoding cannot write (locale {_locale_name()}, file names as "
            f"{sys.getfilesystemencoding()}); run with a UTF-8 locale (e.g. LC_ALL=C.UTF-8) "
            "or PYTHONUTF8=1."
        )
    if isinstance(e, UnicodeDecodeError):
        name = _file_being_read(e)
        what = f"{name} is" if name else "a text file this run reads (config, split, names) is"
        return UserError(
            f"{what} not {e.encoding} text ({e.reason} at byte {e.start}); save it as UTF-8."
        )
    if isinstance(e, OSError) and (e.filename or e.errno in (errno.ENOSPC, errno.EDQUOT)):
        advice = _OS_ADVICE.get(e.errno, "check the path and that it may be used")
        name = f" {e.filename}" if e.filename else ""
        also = f" -> {e.filename2}" if e.filename2 else ""
        return UserError(f"Cannot use{name}{also} ({e.strerror}): {advice}.")
    return None


def _locale_name() -> str:
    names = [n for n in ("LC_ALL", "LC_CTYPE", "LANG") if os.environ.get(n)]
    return f"{names[0]}={os.environ[names[0]]}" if names else "unset"


def _file_being_read(e: BaseException) -> str | None:
    """The name of the innermost open text file in the traceback's frames (the one being
    decoded, as ``with open(path) as f: f.read()`` leaves it in ``f``)."""
    tb, names = e.__traceback__, []
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, io.TextIOWrapper) and isinstance(value.name, str):
                names.append(value.name)
        tb = tb.tb_next
    return names[-1] if names else None


def non_finite_loss_error(trainer, loss: torch.Tensor) -> NonFiniteLossError:
    """The sentence for a NaN / inf loss: where, that nothing was changed, the last good
    checkpoint and what to try."""
    value = "NaN" if torch.isnan(loss).any() else "infinite"
    last = last_epoch_checkpoint(getattr(trainer, "output_dir", "") or "")
    saved = f"the last good checkpoint is {last}" if last else "no checkpoint was saved yet"
    return NonFiniteLossError(
        f"The loss is {value} at {training_position(trainer)}; training stopped before this "
        f"step changed the weights and nothing was saved after it ({saved}): lower OPTIM.LR, "
        "train in fp32 or check the data, then resume."
    )


@contextlib.contextmanager
def _signals_handled_by(handler) -> Iterator[None]:
    """While active (main thread only), SIGINT, SIGTERM and SIGHUP go to ``handler``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _raise_interrupted(signum: int, frame) -> None:
    raise Interrupted(signum)


def signals_raise_interrupted() -> contextlib.AbstractContextManager[None]:
    """While active (main thread only), the three signals raise :class:`Interrupted`."""
    return _signals_handled_by(_raise_interrupted)


def signals_ignored() -> contextlib.AbstractContextManager[None]:
    """While active (main thread only), the three signals are ignored: a second Ctrl-C while
    a stopped run reports and releases its folder would end it half reported."""
    return _signals_handled_by(signal.SIG_IGN)


def resume_command(argv: list[str], run_dir: str) -> str:
    """``python train.py --resume RUN_DIR <argv without its own --resume>``, shell-quoted."""
    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--resume":
            skip = True
        elif not a.startswith("--resume="):
            args.append(a)
    return shlex.join([*launcher(), _script(), "--resume", run_dir, *args])


def launcher() -> list[str]:
    """How this process was started: ``python``, or torchrun with as many processes (a run
    also resumes under another number of processes)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return ["python"]
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    nodes = max(world // max(local, 1), 1)
    where = ["--standalone"] if nodes == 1 else [f"--nnodes={nodes}", "--rdzv-endpoint=HOST:PORT"]
    return ["torchrun", f"--nproc-per-node={local}", *where]


def _script() -> str:
    given = sys.argv[0] if sys.argv else ""
    return given if os.path.basename(given) == "train.py" else "train.py"


def how_to_continue(argv: list[str], run_dir: str, training: bool) -> str | None:
    """The line after a run stopped: the command that resumes it from its last epoch
    checkpoint (training), else None when there is nothing to resume."""
    last = last_epoch_checkpoint(run_dir) if training and run_dir else None
    if last is None:
        return None
    return f"Resume from {last} with: {resume_command(argv, run_dir)}"


def interrupted_message(
    e: Interrupted, trainer, argv: list[str], run_dir: str, training: bool
) -> str:
    """One line: which signal, where, that nothing partial was left, how to continue."""
    where = f" at {training_position(trainer)}" if training and trainer is not None else ""
    head = f"Interrupted by {signal.Signals(e.signum).name}{where}; no partial file was left."
    resume = how_to_continue(argv, run_dir, training)
    if resume:
        return f"{head} {resume}"
    again = shlex.join([*launcher(), _script(), *argv])
    saved = " No epoch checkpoint was saved yet." if training else ""
    return f"{head}{saved} Run again with: {again}"
