"""Second red-team pass on the environment train.py runs in: signals at start-up, SIGHUP, a
second Ctrl-C while a stopped run cleans up, a locale that cannot hold the arguments, and
log.txt written as UTF-8 whatever the locale. Real subprocesses where the fault needs one."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

from test_engine_tiny import tiny, tiny_argv  # noqa: F401
from test_faults import MODEL, ckpt, coop

import train
from dassl_ext.engine.faults import environment_error
from dassl_ext.engine.run_folder import RunFolder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_LOCALE = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}


def _train(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "train.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_a_signal_while_train_py_starts_is_one_line_not_a_traceback(tmp_path):
    """Ctrl-C during the imports (seconds, before the run's handlers) was a KeyboardInterrupt
    traceback; SIGHUP killed silently."""
    out = tmp_path / "run"
    for sig in (signal.SIGINT, signal.SIGHUP):
        proc = _train(["--output-dir", str(out), "--trainer", "CoOp"])
        time.sleep(0.3)  # inside the imports of torch and the trainers
        proc.send_signal(sig)
        err = proc.communicate(timeout=60)[1].decode()
        assert proc.returncode == 128 + sig, err
        assert "Traceback" not in err and not out.exists()
        name = signal.Signals(sig).name
        said = f"Interrupted by {name} while starting; nothing was written. Run again."
        assert err.strip() == said


def test_sighup_stops_like_sigterm_and_log_txt_says_how_to_resume(
    tiny_clip_root, digits_root, tmp_path
):
    """A closed terminal (SIGHUP) killed the run without the resume line and left the
    folder's note; now it stops as SIGTERM does (exit 129), the line also in log.txt."""
    out = tmp_path / "run"
    args = coop(out, digits_root, tiny_clip_root, "DATASET.NUM_SHOTS", "8")  # 20 steps/epoch
    proc = _train(args)
    deadline = time.time() + 300
    while not os.path.exists(ckpt(out, 1)) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGHUP)
    err = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 129, err
    assert "Traceback" not in err and not (out / ".run.json").exists()
    line = (out / "log.txt").read_text().strip().splitlines()[-1]
    assert "Interrupted by SIGHUP at epoch " in line and "Resume from " in line
    resume = shlex.split(line.split(" with: ", 1)[1])
    assert resume[2:4] == ["--resume", str(out)]
    assert train.main(resume[2:]) == 0  # the folder's lock does not block it
    assert (out / "results.json").is_file()
    assert f"Resume {MODEL} from " in (out / "log.txt").read_text()


def test_a_second_ctrl_c_while_the_run_cleans_up_is_ignored(tiny, monkeypatch, capsys):  # noqa: F811
    """A Ctrl-C arriving while a run releases its folder was a KeyboardInterrupt traceback
    (the run's handlers were gone) and left the folder's note behind."""
    root, out = tiny
    release = RunFolder.release

    def impatient(self):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once, in this main thread
        release(self)

    monkeypatch.setattr(RunFolder, "release", impatient)
    assert train.main(tiny_argv(root, out, epochs=1)) == 0
    assert os.path.isfile(os.path.join(out, "results.json"))
    assert not os.path.exists(os.path.join(out, ".run.json"))


def test_arguments_the_locale_cannot_decode_are_refused_before_anything(tmp_path):
    """Under LC_ALL=C with PYTHONUTF8=0 a UTF-8 --output-dir arrives with lone surrogates:
    it ended in a tensorboard traceback after training, with log lines lost."""
    out = os.path.join(os.fsencode(str(tmp_path)), "ünï-出力".encode())
    args = [b"--output-dir", out, b"--trainer", b"CoOp", b"--root", b"nowhere"]
    proc = subprocess.run(
        [sys.executable.encode(), b"train.py", *args], cwd=REPO, capture_output=True,
        env={**os.environ, **C_LOCALE},
    )  # fmt: skip
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "is not text in this process's encoding" in err
    assert "LC_ALL=C.UTF-8" in err and not os.path.exists(out)


def test_a_character_the_locale_cannot_write_is_one_sentence():
    try:
        "ünï/0001.png".encode("ascii")
    except UnicodeEncodeError as e:
        message = str(environment_error(e))
    assert "('\\xfc')" in message and "ascii encoding cannot write" in message
    assert "PYTHONUTF8=1" in message


def test_log_txt_is_utf8_under_a_c_locale(tmp_path):
    """log.txt took the locale's encoding: under LC_ALL=C (PYTHONUTF8=0) a unicode class
    name or path was a '--- Logging error ---' traceback and a lost line."""
    code = (
        "import logging, sys; from dassl_ext.utils.logger import setup_logger; "
        "setup_logger(sys.argv[1]); logging.getLogger('x').info('class \\xfcn\\xef \\udcc3')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True,
        env={**os.environ, **C_LOCALE},
    )  # fmt: skip
    assert proc.returncode == 0 and b"Logging error" not in proc.stderr, proc.stderr
    text = (tmp_path / "log.txt").read_bytes().decode("utf-8")
    assert "class ünï \\udcc3" in text
