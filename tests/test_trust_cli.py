"""The command line and the life of a run, tried as a new user would: each case one
sentence or the honest behaviour (train.main driven in-process on the tiny run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_engine_tiny import tiny, tiny_argv  # noqa: F401  (fixture)
from test_run_folder import CKPT_EVERY_EPOCH, finished, refused, snapshot  # noqa: F401

import train
from dassl_ext.config import setup_cfg
from dassl_ext.errors import UserError


def _results(out: str) -> dict:
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _eval_argv(root: str, out: str, model_dir: str, *flags: str) -> list[str]:
    return tiny_argv(root, out, flags=("--eval-only", "--model-dir", model_dir, *flags))


def test_an_evaluation_of_another_model_is_not_skipped_as_done(finished, tmp_path, capsys):  # noqa: F811
    root, run = finished
    other = str(tmp_path / "other")  # the same configuration, another model
    assert train.main(tiny_argv(root, other, *CKPT_EVERY_EPOCH, "OPTIM.LR", "0.5")) == 0
    ev = str(tmp_path / "ev")
    assert train.main(_eval_argv(root, ev, run, "--load-epoch", "1", "--skip-finished")) == 0
    before = snapshot(ev)
    capsys.readouterr()
    # was "Done, skipped": epoch 1's numbers kept as those of epoch 2 (LOADEP changed)
    assert train.main(_eval_argv(root, ev, run, "--load-epoch", "2", "--skip-finished")) == 1
    refused(capsys, f"{ev} already holds the results of another model", "model.pth.tar-1")
    # ... and as those of another run's model
    assert train.main(_eval_argv(root, ev, other, "--load-epoch", "1", "--skip-finished")) == 1
    refused(capsys, "another model", "other/TinyNet/model.pth.tar-1")
    assert train.main(_eval_argv(root, ev, other, "--load-epoch", "1")) == 1  # not overwritten
    assert snapshot(ev) == before
    # the same model again: done
    assert train.main(_eval_argv(root, ev, run, "--load-epoch", "1", "--skip-finished")) == 0
    assert "Done, skipped" in capsys.readouterr().out


def test_an_evaluation_records_the_model_it_evaluated(finished, tmp_path):  # noqa: F811
    root, run = finished
    ev = str(tmp_path / "ev")
    assert train.main(_eval_argv(root, ev, run)) == 0  # no --load-epoch: the newest epoch
    model = os.path.join(os.path.abspath(run), "TinyNet", "model.pth.tar-2")
    assert _results(ev)["model_files"] == [os.path.relpath(model, ev)]  # the tree may move
    assert _results(ev)["splits"]["test"]["epoch"] == 2


def test_a_training_run_may_still_be_evaluated_into_its_own_folder(finished, capsys):  # noqa: F811
    root, run = finished  # its results.json names no model: evaluating it again is allowed
    assert train.main(_eval_argv(root, run, run, "--load-epoch", "1")) == 0
    assert _results(run)["splits"]["test"]["epoch"] == 1


def test_resume_into_another_folder_holding_checkpoints_is_refused(finished, tmp_path, capsys):  # noqa: F811
    root, run = finished
    os.remove(os.path.join(run, "results.json"))  # an unfinished run to continue
    os.remove(os.path.join(run, "TinyNet", "model.pth.tar-2"))
    other = str(tmp_path / "other")
    assert train.main(tiny_argv(root, other, *CKPT_EVERY_EPOCH, "OPTIM.LR", "0.1", epochs=1)) == 0
    os.remove(os.path.join(other, "results.json"))
    before = snapshot(other)
    capsys.readouterr()
    argv = tiny_argv(root, other, *CKPT_EVERY_EPOCH, flags=("--resume", run))
    assert train.main(argv) == 1  # was: other's checkpoints (LR 0.1) overwritten by run's
    refused(capsys, f"{other} already holds checkpoints of TinyNet", f"--resume {run}")
    assert snapshot(other) == before


def test_resume_into_a_new_folder_still_continues_there(finished, tmp_path):  # noqa: F811
    root, run = finished
    os.remove(os.path.join(run, "results.json"))
    os.remove(os.path.join(run, "TinyNet", "model.pth.tar-2"))
    new = str(tmp_path / "new")
    argv = tiny_argv(root, new, *CKPT_EVERY_EPOCH, flags=("--resume", run))
    assert train.main(argv) == 0
    assert os.path.isfile(os.path.join(new, "TinyNet", "model.pth.tar-2"))


@pytest.mark.parametrize("flag", ["--seed", "--eval-only", "--output-dir"])
def test_a_flag_after_the_key_value_pairs_names_the_order(flag):
    args = train.parse_args(["--trainer", "CoOp", "OPTIM.MAX_EPOCH", "1", flag, "2"])
    with pytest.raises(UserError) as e:
        setup_cfg(args)
    assert f"{flag} comes after the KEY VALUE pairs" in str(e.value)
    assert "put the flags (--seed, --eval-only, ...) before the first KEY" in str(e.value)


@pytest.mark.parametrize("flags", [("--model-dir", "x"), ("--load-epoch", "3")])
def test_model_dir_or_load_epoch_without_eval_only_is_refused(tiny, capsys, flags):  # noqa: F811
    root, out = tiny
    assert train.main(tiny_argv(root, out, flags=flags)) == 1  # was: ignored, a new training
    refused(capsys, f"{flags[0]} is only read with --eval-only")
    assert not os.path.exists(out)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script(path: str, tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``DRY_RUN=1 bash scripts/<path> ARGS`` (prints the commands, runs none)."""
    full = {**os.environ, "DRY_RUN": "1", "OUTPUT": str(tmp_path / "out"), **env}
    for name in ("SEED_JOBS", "NPROC", "NNODES", "TEACHER_SEED", "SEEDS", "TEACHER_CKPT"):
        if name not in env:
            full.pop(name, None)
    cmd = ["bash", os.path.join(REPO, "scripts", path), *args]
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "name, value",
    [("SEED_JOBS", "0"), ("SEED_JOBS", "2x"), ("NPROC", "0"), ("NNODES", "two")],
)
def test_scripts_refuse_a_count_that_is_not_a_whole_number(tmp_path, name, value):
    # SEED_JOBS 0 / 2x was a bash arithmetic error that skipped every student, exit 0
    p = _script("promptkd/base2new.sh", tmp_path, "digits", "1", **{name: value})
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"Error: {name} is '{value}'; use a whole number from 1 (unset: 1).\n"
    assert "train.py" not in p.stdout  # nothing ran


def test_scripts_refuse_a_teacher_seed_that_is_not_a_seed(tmp_path):
    p = _script("promptkd/base2new.sh", tmp_path, "digits", "1", TEACHER_SEED="abc")
    assert p.returncode == 2 and "TEACHER_SEED is 'abc'" in p.stderr
    assert "train.py" not in p.stdout  # was: the teacher's train.py started with --seed abc


@pytest.mark.parametrize(
    "path, args, env",
    [
        ("promptkd/base2new.sh", ("digits", "1", "2", "1"), {}),
        ("coop/base2new_train.sh", ("digits",), {"SEEDS": "1 1"}),
    ],
)
def test_scripts_refuse_a_seed_given_twice(tmp_path, path, args, env):
    # was: two runs of seed 1 into one folder (under SEED_JOBS at once: one refused)
    p = _script(path, tmp_path, *args, **env)
    assert p.returncode == 2
    assert (
        p.stderr
        == "Error: seed 1 is given twice; each seed's run goes to the folder seed1: give it once.\n"
    )


def test_scripts_still_accept_good_counts(tmp_path):
    p = _script("promptkd/base2new.sh", tmp_path, "digits", "1", "2", SEED_JOBS="2", NPROC="1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("--seed 2 --trainer PromptKD") == 1


@pytest.mark.parametrize("flags", [("--no-train",), ("--eval-only", "--model-dir", "RUN")])
def test_a_run_that_does_not_train_keeps_an_unfinished_runs_config(finished, capsys, flags):  # noqa: F811
    root, run = finished
    os.remove(os.path.join(run, "results.json"))  # unfinished: epoch 1 and 2 checkpoints
    flags = tuple(run if f == "RUN" else f for f in flags)
    before = snapshot(run)
    capsys.readouterr()
    assert train.main(tiny_argv(root, run, "OPTIM.LR", "0.1", flags=flags)) == 1
    refused(capsys, f"{run} holds checkpoints of TinyNet from another configuration", "0.5 -> 0.1")
    assert snapshot(run) == before  # was: config.yaml said LR 0.1, and --resume then took it
    assert train.main(tiny_argv(root, run, flags=flags)) == 0  # its own configuration: allowed


@pytest.mark.parametrize(
    "drop, says",
    [
        ("--trainer", "No trainer given (TRAINER.NAME is empty); pass --trainer NAME"),
        (
            "DATASET.NAME",
            "No dataset given (DATASET.NAME is empty); pass --dataset-config-file FILE",
        ),
    ],
)
def test_a_run_without_trainer_or_dataset_says_which_flag(tiny, capsys, drop, says):  # noqa: F811
    root, out = tiny
    argv = tiny_argv(root, out)
    i = argv.index(drop)
    argv = argv[:i] + argv[i + 2 :]
    assert train.main(argv) == 1
    refused(capsys, says, "TinyEngine")  # the registered names
    assert not os.path.exists(out)  # was: config.yaml and log.txt written, then the error


def test_a_text_for_a_list_of_numbers_gets_an_example_of_numbers():
    args = train.parse_args(["--trainer", "CoOp", "INPUT.SIZE", "32x32"])
    with pytest.raises(UserError) as e:
        setup_cfg(args)
    assert "use a list, e.g. [224, 224] (the default" in str(e.value)  # was ['32x32', '32x32']


def test_an_evaluation_into_an_unfinished_runs_folder_is_refused(finished, tmp_path, capsys):  # noqa: F811
    root, run = finished
    os.remove(os.path.join(run, "results.json"))
    os.remove(os.path.join(run, "TinyNet", "model.pth.tar-2"))  # stopped after epoch 1 of 2
    before = snapshot(run)
    capsys.readouterr()
    assert train.main(_eval_argv(root, run, run)) == 1
    refused(capsys, f"{run} holds an unfinished run (epoch 1 of OPTIM.MAX_EPOCH 2)", "--resume")
    assert snapshot(run) == before  # was: results.json of epoch 1, and then --skip-finished
    assert train.main(tiny_argv(root, run, flags=("--skip-finished",))) == 1  # not "Done"
    refused(capsys, "already holds checkpoints")
    assert train.main(_eval_argv(root, str(tmp_path / "ev"), run)) == 0  # elsewhere: fine


def test_scripts_read_relative_paths_from_the_callers_folder(tmp_path):
    # was: DATA=mydata OUTPUT=out run from elsewhere meant the repository's mydata/ and out/
    full = {**os.environ, "DRY_RUN": "1", "DATA": "mydata", "OUTPUT": "out", "SEEDS": "1"}
    cmd = ["bash", os.path.join(REPO, "scripts", "coop", "base2new_train.sh"), "digits"]
    p = subprocess.run(cmd, env=full, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert f"--root {tmp_path}/mydata --output-dir {tmp_path}/out/base2new/" in p.stdout
    p = subprocess.run(cmd, env=full, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "--root mydata --output-dir out/base2new/" in p.stdout  # in the repository: as before
    # from a folder reached through a link, ".." is the physical parent (what ls shows there)
    (tmp_path / "real" / "sub").mkdir(parents=True)
    os.symlink(tmp_path / "real" / "sub", tmp_path / "link")
    up = {**full, "DATA": "../mydata"}
    p = subprocess.run(
        cmd, env={**up, "PWD": str(tmp_path / "link")}, cwd=tmp_path / "link",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert f"--root {tmp_path}/real/sub/../mydata " in p.stdout, p.stdout[-2000:]


def _parse_results(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, os.path.join(REPO, "scripts", "parse_results.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_parse_results_never_writes_its_table_over_a_runs_record(finished):  # noqa: F811
    _, run = finished
    tree = os.path.dirname(run)
    record = os.path.join(run, "results.json")
    with open(record, "rb") as f:
        before = f.read()
    p = _parse_results(tree, "--markdown", record)  # was: the run's results.json replaced
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert f"error: --markdown {record} is a run's own record" in p.stdout
    with open(record, "rb") as f:
        assert f.read() == before


@pytest.mark.parametrize("flag", ["--markdown", "--csv"])
def test_parse_results_output_that_cannot_be_a_file_is_one_sentence(finished, tmp_path, flag):  # noqa: F811
    _, run = finished
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for target, says in ((str(tmp_path), "is a folder"), (f"{blocker}/t.md", "Cannot write")):
        p = _parse_results(os.path.dirname(run), flag, target)
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr  # was a traceback
        assert says in p.stdout
    p = _parse_results(os.path.dirname(run), flag, str(tmp_path / "t.out"))
    assert p.returncode == 0 and (tmp_path / "t.out").is_file()


def test_a_config_file_of_another_trainer_is_named_in_the_log(tmp_path):
    train.import_plugins()
    cfg_file = "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
    args = train.parse_args(["--trainer", "CoOp", "--config-file", os.path.join(REPO, cfg_file)])
    (note,) = train.foreign_sections(setup_cfg(args), args)  # was: silently ignored
    assert "sets TRAINER.PROMPTSRC, which trainer CoOp does not read" in note
    for trainer in ("PromptSRC", "ZeroshotCLIP"):  # its own file; zero-shot: any file
        args = train.parse_args(
            ["--trainer", trainer, "--config-file", os.path.join(REPO, cfg_file)]
        )
        assert train.foreign_sections(setup_cfg(args), args) == []
    teacher = tmp_path / "kd.yaml"  # PromptKD reads its teacher trainer's section too
    teacher.write_text(
        "TRAINER:\n  PROMPTSRC:\n    N_CTX_VISION: 4\n  PROMPTKD:\n    KD_WEIGHT: 1.0\n"
    )
    args = train.parse_args(["--trainer", "PromptKD", "--config-file", str(teacher)])
    assert train.foreign_sections(setup_cfg(args), args) == []
    # distil_folder.sh evaluates the teacher with the student's file (TEACHER_CKPT is read
    # from TRAINER.PROMPTKD): no warning for the PromptKD section there
    kd_file = os.path.join(REPO, "configs/trainers/PromptKD/base2new/image_folder.yaml")
    args = train.parse_args(["--trainer", "PromptSRC", "--config-file", kd_file])
    assert train.foreign_sections(setup_cfg(args), args) == []


@pytest.mark.parametrize(
    "text, says",
    [
        ("OPTIM.LR: 0.01\n", "sets 'OPTIM.LR' as one key; in a yaml file write it nested: OPTIM:"),
        ("optim:\n  LR: 0.01\n", "Unknown config key optim in"),
        ("OPTIM:\n  lr: 0.01\n", "(did you mean OPTIM.LR?)"),
    ],
)
def test_a_yaml_key_written_as_on_the_command_line_says_how(tmp_path, text, says):
    path = tmp_path / "c.yaml"
    path.write_text(text)  # was: "Unknown config key OPTIM.LR" (a key that exists)
    args = train.parse_args(["--trainer", "CoOp", "--config-file", str(path)])
    with pytest.raises(UserError) as e:
        setup_cfg(args)
    assert says in str(e.value)
    if text.startswith("optim"):
        assert "(did you mean OPTIM?)" in str(e.value)
