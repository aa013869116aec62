"""Plots are written: training curves from metrics.jsonl, base/new/HM bars, the CLI."""

import importlib.util
import json
import os

import pytest

from dassl_ext.errors import UserError
from dassl_ext.reporting.aggregate import summarize
from dassl_ext.reporting.plots import plot_base_new_bars, plot_training_curves, read_metrics
from dassl_ext.reporting.reference import load_reference
from tests.test_aggregate import b2n_tree, write_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_metrics(run_dir, epochs=4, val=True):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "metrics.jsonl"), "w") as f:
        for e in range(1, epochs + 1):
            rec = {
                "epoch": e,
                "lr": 0.005 / e,
                "loss": {"loss_kd": 2.0 / e, "loss": 2.5 / e},
                "val_accuracy": 80.0 + e if val else None,
            }
            f.write(json.dumps(rec) + "\n")
        f.write('{"epoch": 5, "lr"')  # cut by an interrupted run


def png_ok(path):
    with open(path, "rb") as f:
        return os.path.getsize(path) > 1000 and f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_training_curves(tmp_path):
    write_metrics(tmp_path / "run")
    assert [r["epoch"] for r in read_metrics(str(tmp_path / "run"))] == [1, 2, 3, 4]
    path = plot_training_curves(str(tmp_path / "run"))
    assert path == str(tmp_path / "run" / "training_curves.png") and png_ok(path)
    write_metrics(tmp_path / "noval", val=False)
    assert png_ok(plot_training_curves(str(tmp_path / "noval"), str(tmp_path / "x.png")))
    with pytest.raises(UserError, match="metrics.jsonl"):
        plot_training_curves(str(tmp_path / "missing"))


def test_base_new_bars_with_paper_and_standard(tmp_path):
    b2n_tree(tmp_path / "b2n")
    (table,) = summarize(str(tmp_path / "b2n"))
    paper = load_reference(os.path.join(REPO, "configs", "reporting", "promptkd.yaml"))
    out = plot_base_new_bars(table, str(tmp_path / "bars.png"), paper=paper.published["PromptKD"])
    assert png_ok(out)
    for seed in (1, 2):
        write_run(tmp_path / "std", "CoOp", "Food101", seed, {"test": 80.0 + seed})
    (std_table,) = summarize(str(tmp_path / "std"))
    assert png_ok(plot_base_new_bars(std_table, str(tmp_path / "std.png")))


def test_plot_results_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "plot_results", os.path.join(REPO, "scripts", "plot_results.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    b2n_tree(tmp_path)
    write_metrics(tmp_path / "PromptKD" / "EuroSAT" / "seed1")
    assert mod.main([str(tmp_path), "--paper"]) == 0
    assert png_ok(tmp_path / "bars_PromptKD_paper.png")
    assert png_ok(tmp_path / "PromptKD" / "EuroSAT" / "seed1" / "training_curves.png")
    assert "wrote" in capsys.readouterr().out
    assert mod.main([str(tmp_path / "nothing_here")]) == 1


def _plot_results():
    spec = importlib.util.spec_from_file_location(
        "plot_results", os.path.join(REPO, "scripts", "plot_results.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "content",
    [b"", b"\xff\xfe\x00\x01 not text", b'{"epoch": 1, "loss": 5}\n[1, 2]\n{"epoch": "x"}\n'],
)
def test_run_without_epoch_records_is_named_and_the_others_drawn(tmp_path, capsys, content):
    """An empty, binary or malformed metrics.jsonl (a run that has just started, a damaged
    file): one warning naming it, no traceback, and the other runs are still drawn."""
    b2n_tree(tmp_path)
    write_metrics(tmp_path / "PromptKD" / "EuroSAT" / "seed1")
    bad = tmp_path / "PromptKD" / "EuroSAT" / "seed2" / "metrics.jsonl"
    bad.write_bytes(content)
    assert _plot_results().main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"warning: {bad} " in out
    assert png_ok(tmp_path / "PromptKD" / "EuroSAT" / "seed1" / "training_curves.png")
    assert png_ok(tmp_path / "bars_PromptKD_paper.png")
    assert _plot_results().main([str(bad.parent), "--no-curves"]) == 0  # its results: bars
    assert _plot_results().main([str(bad.parent)]) == 0


def test_plot_results_takes_the_seeds_asked_for(tmp_path, capsys):
    b2n_tree(tmp_path)
    for seed in (1, 3):
        write_metrics(tmp_path / "PromptKD" / "EuroSAT" / f"seed{seed}")
    assert _plot_results().main([str(tmp_path), "--seeds", "1", "2"]) == 0
    assert png_ok(tmp_path / "PromptKD" / "EuroSAT" / "seed1" / "training_curves.png")
    assert not (tmp_path / "PromptKD" / "EuroSAT" / "seed3" / "training_curves.png").exists()
    assert _plot_results().main([str(tmp_path), "--seeds", "1", "7"]) == 1
    assert "No results.json for seed 7" in capsys.readouterr().out


def test_plot_results_follows_linked_run_folders_once(tmp_path):
    (tmp_path / "elsewhere" / "seed2").mkdir(parents=True)
    (tmp_path / "elsewhere" / "seed2" / "metrics.jsonl").write_text("")
    (tmp_path / "tree" / "seed1").mkdir(parents=True)
    (tmp_path / "tree" / "seed1" / "metrics.jsonl").write_text("")
    os.symlink(tmp_path / "elsewhere" / "seed2", tmp_path / "tree" / "seed2")
    os.symlink(tmp_path / "elsewhere" / "seed2", tmp_path / "tree" / "again")
    os.symlink(tmp_path / "tree", tmp_path / "tree" / "loop")
    found = _plot_results().run_folders(str(tmp_path / "tree"), None)
    real = sorted(os.path.realpath(f) for f in found)  # the linked run once, by either link
    assert real == [str(tmp_path / "elsewhere" / "seed2"), str(tmp_path / "tree" / "seed1")]
