"""train.py: flags, errors as one line on stderr, plugin imports."""

import importlib
import sys

import pytest
from test_engine_tiny import tiny, tiny_argv  # noqa: F401

import train


def test_flags_parse_like_dassl():
    args = train.parse_args(
        ["--root", "d", "--seed", "0", "--trainer", "CoOp", "--eval-only", "--model-dir", "m",
         "--load-epoch", "5", "--no-train", "OPTIM.LR", "0.1"]
    )  # fmt: skip
    assert (args.root, args.seed, args.trainer, args.model_dir, args.load_epoch) == (
        "d", 0, "CoOp", "m", 5
    )  # fmt: skip
    assert args.eval_only and args.no_train and args.opts == ["OPTIM.LR", "0.1"]


def test_unknown_trainer_is_one_line_error(tiny, capsys):  # noqa: F811
    root, out = tiny
    argv = tiny_argv(root, out)
    argv[argv.index("TinyEngineTrainer")] = "TinyEngineTrainr"
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "Did you mean 'TinyEngineTrainer'?" in err and "Traceback" not in err


def test_unknown_key_is_user_error(tiny, capsys):  # noqa: F811
    root, out = tiny
    assert train.main(tiny_argv(root, out, "OPTIM.NOPE", "1")) == 1
    assert "OPTIM.NOPE" in capsys.readouterr().err


def test_seed_zero_and_no_train(tiny):  # noqa: F811
    root, out = tiny
    assert train.main(tiny_argv(root, out, seed=0, flags=("--no-train",))) == 0
    with open(f"{out}/config.yaml") as f:
        assert "SEED: 0" in f.read()


def test_plugin_import_errors_are_not_swallowed(monkeypatch, tmp_path):
    pkg = tmp_path / "trainers"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import some_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("trainers", "datasets"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.invalidate_caches()
    with pytest.raises(ModuleNotFoundError, match="some_missing_dependency_xyz"):
        train.import_plugins()
