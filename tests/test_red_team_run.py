"""Red-team cases of the run folder: damaged records of the folder's own files, one
sentence or the honest behaviour each (train.main driven in-process on the tiny run)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from test_engine_tiny import tiny, tiny_argv  # noqa: F401  (fixture)
from test_run_folder import CKPT_EVERY_EPOCH, finished  # noqa: F401  (fixture)
from test_run_folder import refused as _refused

import train


@pytest.mark.parametrize(
    "damage, why",
    [
        ('{"splits": {"test": {"accur', "is truncated or not JSON"),
        ("", "is truncated or not JSON"),
        ("[1, 2]", "holds no results (no splits)"),
        ('{"splits": {}}', "holds no results (no splits)"),
    ],
)
def test_skip_finished_refuses_a_damaged_results_json(finished, capsys, damage, why):  # noqa: F811
    root, out = finished
    results = os.path.join(out, "results.json")
    with open(results, "w") as f:
        f.write(damage)
    capsys.readouterr()
    argv = tiny_argv(root, out, *CKPT_EVERY_EPOCH, flags=("--skip-finished",))
    assert train.main(argv) == 1  # was 0: "Done, skipped" on a record that shows nothing
    _refused(capsys, f"{results} {why}", "so it cannot show that the run", f"--resume {out}")
    with open(results) as f:
        assert f.read() == damage  # the refusal changed nothing


def test_results_json_of_another_shape_without_config_yaml_is_not_a_traceback(finished, capsys):  # noqa: F811
    root, out = finished
    os.remove(os.path.join(out, "config.yaml"))
    with open(os.path.join(out, "results.json"), "w") as f:
        f.write('"text"')  # valid JSON, not a mapping: was AttributeError
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH)) == 1
    _refused(capsys, "already holds checkpoints")


def test_a_finished_run_that_kept_only_its_best_model_is_not_overwritten(tiny, capsys):  # noqa: F811
    root, out = tiny
    assert train.main(tiny_argv(root, out, "TEST.FINAL_MODEL", "best_val")) == 0
    models = os.path.join(out, "TinyNet")
    for name in os.listdir(models):
        if name.startswith("model.pth.tar-"):
            os.remove(os.path.join(models, name))  # the usual way to save disk space
    best = os.path.join(models, "model-best.pth.tar")
    before = os.stat(best).st_mtime_ns
    capsys.readouterr()
    assert train.main(tiny_argv(root, out, "TEST.FINAL_MODEL", "best_val")) == 1
    _refused(capsys, "already holds a finished run (results.json) and its model TinyNet/")
    assert os.stat(best).st_mtime_ns == before


def _metrics(out: str) -> list[dict]:
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("tail", ["cut", "[1]\n", '{"x": 1}\n', '{"epoch": "a"}\n'])
def test_resume_drops_damaged_metrics_rows(tiny, tail):  # noqa: F811
    root, out = tiny
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, epochs=3)) == 0
    os.remove(os.path.join(out, "TinyNet", "model.pth.tar-3"))
    os.remove(os.path.join(out, "results.json"))
    path = os.path.join(out, "metrics.jsonl")
    with open(path) as f:
        text = f.read()
    text = text[:-20] if tail == "cut" else text + tail  # a line cut short, or a foreign row
    with open(path, "w") as f:
        f.write(text)
    flags = ("--resume", out)
    assert train.main(tiny_argv(root, out, *CKPT_EVERY_EPOCH, epochs=3, flags=flags)) == 0
    assert [row["epoch"] for row in _metrics(out)] == [1, 2, 3]  # was a traceback
    with open(os.path.join(out, "log.txt")) as f:
        assert "damaged row(s) of" in f.read()


def test_a_new_run_drops_metrics_rows_an_earlier_run_left(tiny):  # noqa: F811
    root, out = tiny
    assert train.main(tiny_argv(root, out, "TRAIN.CHECKPOINT_FREQ", "0")) == 0
    shutil.rmtree(os.path.join(out, "TinyNet"))
    os.remove(os.path.join(out, "results.json"))  # as a run killed before its checkpoint
    assert train.main(tiny_argv(root, out)) == 0
    assert [row["epoch"] for row in _metrics(out)] == [1, 2]  # was [1, 2, 1, 2]


def test_a_config_yaml_cut_short_is_named_as_such(finished, capsys):  # noqa: F811
    root, out = finished
    path = os.path.join(out, "config.yaml")
    with open(path) as f:
        lines = f.read().splitlines(True)
    with open(path, "w") as f:
        f.write("".join(lines[: len(lines) // 2]))  # cut at a line: still valid yaml
    capsys.readouterr()
    argv = tiny_argv(root, out, *CKPT_EVERY_EPOCH, flags=("--skip-finished",))
    assert train.main(argv) == 1
    # was only a list of "(absent) -> value", as if another experiment had run there
    _refused(capsys, "already holds the results of another configuration", "config.yaml cut short")
