"""Seed aggregation: mean/std, HM convention, warnings, Dassl-log input, Markdown/CSV."""

import csv
import importlib.util
import json
import math
import os
import statistics

import pytest

from dassl_ext.errors import UserError
from dassl_ext.evaluation import write_results
from dassl_ext.reporting.aggregate import Stat, aggregate, collect_runs, hm, summarize
from dassl_ext.reporting.dassl_log import parse_dassl_log
from dassl_ext.reporting.reference import load_reference
from dassl_ext.reporting.tables import table_rows, to_markdown

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER = load_reference(os.path.join(REPO, "configs", "reporting", "promptkd.yaml"))

# dataset -> seed -> (base, new)
B2N = {
    "OxfordPets": {1: (95.0, 97.0), 2: (96.0, 98.0), 3: (97.0, 96.5)},
    "EuroSAT": {1: (90.0, 66.0), 2: (94.0, 74.0), 3: (92.0, 70.0)},
}


def write_run(
    root, trainer, dataset, seed, splits, protocol="paper", config="h1", kind=None, selection=None
):
    out = os.path.join(root, trainer, dataset, f"seed{seed}")
    record = {
        "trainer": trainer,
        "dataset": dataset,
        "seed": seed,
        "protocol": protocol,
        "eval_splits": kind or ("base_new" if "base" in splits else "standard"),
        "config_hash": config,
        "backbone": "ViT-B/16",
        "splits": {
            k: {"accuracy": v, "macro_f1": v, "error_rate": 100 - v, "num_images": 10, "epoch": 2}
            for k, v in splits.items()
        },
        "selection": selection,
    }
    write_results(os.path.join(out, "results.json"), record)


def b2n_tree(root, data=B2N, **kw):
    for dataset, seeds in data.items():
        for seed, (b, n) in seeds.items():
            write_run(root, "PromptKD", dataset, seed, {"base": b, "new": n}, **kw)


def test_mean_std_and_hm_convention(tmp_path):
    b2n_tree(tmp_path)
    (table,) = summarize(str(tmp_path), PAPER)
    assert [r.dataset for r in table.rows] == ["OxfordPets", "EuroSAT"]  # paper order
    (by_name,) = summarize(str(tmp_path))  # no reference: by name
    assert [r.dataset for r in by_name.rows] == ["EuroSAT", "OxfordPets"]
    euro = table.rows[1]
    assert euro.seeds == [1, 2, 3]
    assert euro.stats["base"].mean == pytest.approx(92.0)
    assert euro.stats["base"].std == pytest.approx(2.0)  # sample std (n - 1)
    assert euro.stats["new"].std == pytest.approx(4.0)
    # Row HM = HM of the means, not the mean of per-seed HMs.
    assert euro.hm == pytest.approx(hm(92.0, 70.0))
    per_seed = [hm(90, 66), hm(94, 74), hm(92, 70)]
    assert euro.hm_seeds.mean == pytest.approx(statistics.fmean(per_seed))
    assert euro.hm != pytest.approx(euro.hm_seeds.mean)
    # Average row: HM of the averaged base and new.
    avg = table.average
    b = statistics.fmean([96.0, 92.0])
    n = statistics.fmean([statistics.fmean([97.0, 98.0, 96.5]), 70.0])
    assert avg.stats["base"].mean == pytest.approx(b)
    assert avg.stats["new"].mean == pytest.approx(n)
    assert avg.hm == pytest.approx(hm(b, n))
    assert avg.hm != pytest.approx(statistics.fmean([table.rows[0].hm, euro.hm]))
    # Same seeds everywhere: the Average's spread is that of the per-seed averages.
    assert avg.stats["base"].values == pytest.approx([92.5, 95.0, 94.5])
    assert table.warnings == []
    headers, rows = table_rows(table)
    assert headers[:6] == ["Dataset", "Seeds", "Base", "New", "HM", "HM (per-seed)"]
    assert rows[1][:4] == ["EuroSAT", "1,2,3", "92.00 ± 2.00", "70.00 ± 4.00"]
    assert rows[-1][0] == "Average"


def test_ci_uses_t_distribution():
    s = Stat([90.0, 92.0, 94.0])
    q = 4.302653 if importlib.util.find_spec("scipy") else 1.959964
    assert s.ci95 == pytest.approx(q * 2.0 / math.sqrt(3), rel=1e-5)
    assert math.isnan(Stat([1.0]).ci95)


def test_collapsed_seed_warning(tmp_path):
    data = {"DescribableTextures": {1: (80.0, 70.0), 2: (81.0, 71.0), 3: (79.5, 45.0)}}
    b2n_tree(tmp_path, data)
    (table,) = summarize(str(tmp_path))
    text = " ".join(table.warnings)
    assert "seed 3: new 45.00" in text and "collapsed" in text
    assert "seed 3: base" not in text
    assert "- WARNING: DescribableTextures seed 3: new" in to_markdown([table])


def test_small_spread_flagged_by_std_rule(tmp_path):
    accs = {1: 90.0, 2: 90.2, 3: 89.9, 4: 90.1, 5: 86.0}
    for seed, a in accs.items():
        write_run(tmp_path, "CoOp", "Caltech101", seed, {"test": a})
    (table,) = summarize(str(tmp_path))
    assert any("seed 5: test" in w for w in table.warnings)
    assert not any("seed 1" in w for w in table.warnings)


def test_standard_runs_and_separate_configs(tmp_path):
    for seed, a in {1: 70.0, 2: 72.0}.items():
        write_run(tmp_path, "CoOp", "Food101", seed, {"test": a})
        write_run(tmp_path / "b", "CoOp", "Food101", seed, {"test": a - 10}, config="h2")
    (table,) = summarize(str(tmp_path))
    assert table.eval_splits == "standard"
    headers, rows = table_rows(table, ci=True)
    assert headers == ["Dataset", "Seeds", "Accuracy", "Accuracy 95% CI"]
    assert sorted(r[0] for r in rows) == ["Food101 [h1]", "Food101 [h2]"]
    assert table.average is None
    assert any("several configs" in w for w in table.warnings)
    write_run(tmp_path / "rerun", "CoOp", "Food101", 1, {"test": 75.0})
    (table,) = summarize(str(tmp_path))
    assert any("seed 1: ['test'] found again" in w for w in table.warnings)


def test_protocols_make_separate_tables(tmp_path):
    sel = {"split": "val", "accuracy": 90.0, "epoch": 2}
    b2n_tree(tmp_path / "a", selection=sel)
    b2n_tree(tmp_path / "b", protocol="clean", selection=sel)
    b2n_tree(tmp_path / "c", protocol="clean", config="last")
    tables = summarize(str(tmp_path))
    assert sorted(t.protocol for t in tables) == ["clean", "paper"]
    text = {t.protocol: t.protocol_text for t in tables}
    assert "base test split" in text["paper"]
    assert "held-out validation" in text["clean"] and "last-epoch" in text["clean"]
    b2n_tree(tmp_path / "only_last")
    (last,) = summarize(str(tmp_path / "only_last"))
    assert "no checkpoint selection" in to_markdown([last])


# ---- Dassl logs of the official code -------------------------------------------------

HEADER = """***************
** Arguments **
***************
backbone:{sp}
config_file: configs/trainers/{trainer}/{cfgname}.yaml
dataset_config_file: configs/datasets/dtd.yaml
eval_only: {eval_only}
opts: ['TRAINER.MODAL', 'base2novel']
output_dir: {out}
seed: {seed}
trainer: {trainer}
************
** Config **
************
DATASET:
  NAME: DescribableTextures
  NUM_SHOTS: {shots}
  ROOT:{sp}
  SUBSAMPLE_CLASSES: {subsample}
INPUT:
  SIZE: (224, 224)
MODEL:
  BACKBONE:
    NAME: ViT-B/16
  INIT_WEIGHTS:{sp}
SEED: {seed}
TRAINER:
  MODAL: base2novel
  NAME: {trainer}
  PROMPTKD:
    KD_WEIGHT: 200.0
Collecting env info ...
** System info **
PyTorch version: 1.10.0
"""

RESULT = """=> result
* total: 864
* correct: 700
* accuracy: {acc}%
* error: {err}%
* macro_f1: 80.0%
"""


def write_log(path, trainer, seed, val_accs, final_acc, subsample="all", shots=0, eval_only=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = HEADER.format(
        trainer=trainer,
        cfgname="vit_b16_c2_ep20_batch8_4+4ctx",
        eval_only=eval_only,
        out=os.path.dirname(path),
        seed=seed,
        shots=shots,
        subsample=subsample,
        sp=" ",  # Dassl prints empty values as 'KEY: '
    )
    for e, acc in enumerate(val_accs):
        text += f"epoch [{e + 1}/20] batch [20/20] loss 1.0 lr 5.0000e-03\n"
        text += "Evaluate on the *val* set\n" + RESULT.format(acc=acc, err=round(100 - acc, 1))
    if not eval_only:
        text += "Finish training\nDeploy the model with the best val performance\n"
    text += "Evaluate on the *test* set\n" + RESULT.format(acc=final_acc, err=0)
    text += "Elapsed: 0:10:00\n"
    with open(path, "w") as f:
        f.write(text)


def test_official_promptkd_log(tmp_path):
    path = tmp_path / "dtd" / "seed1" / "log.txt"
    write_log(str(path), "PromptKD", 1, [80.1, 85.8, 84.0], 71.4)
    rec = parse_dassl_log(str(path), PAPER)
    assert rec["splits"] == {"base": {"accuracy": 85.8}, "new": {"accuracy": 71.4}}
    assert (rec["trainer"], rec["dataset"], rec["seed"]) == ("PromptKD", "DescribableTextures", 1)
    assert rec["protocol"] == "official" and rec["backbone"] == "ViT-B/16"
    # An unfinished training has no new-class result yet.
    text = path.read_text().split("Finish training")[0]
    (tmp_path / "partial.txt").write_text(text)
    assert parse_dassl_log(str(tmp_path / "partial.txt"), PAPER) is None
    # Without the reference's rule the log is an ordinary one: its last accuracy, "test".
    assert parse_dassl_log(str(path))["splits"] == {"test": {"accuracy": 71.4}}


def test_official_logs_aggregate_with_baseline_join(tmp_path):
    for seed, (best, new) in {1: (85.0, 71.0), 2: (86.0, 72.0), 3: (86.5, 71.5)}.items():
        write_log(str(tmp_path / f"kd/dtd/seed{seed}/log.txt"), "PromptKD", seed, [80, best], new)
        base_dir = tmp_path / f"base2new/train_base/dtd/shots_16/PromptSRC/seed{seed}"
        new_dir = tmp_path / f"base2new/test_new/dtd/shots_16/PromptSRC/seed{seed}"
        write_log(str(base_dir / "log.txt"), "PromptSRC", seed, [], 83.0 + seed, "base", 16)
        write_log(str(new_dir / "log.txt"), "PromptSRC", seed, [], 63.0, "new", 16, True)
    # Dassl names a second log of the same folder log.txt-<time>; the newest one wins.
    write_log(str(tmp_path / "kd/dtd/seed3/log.txt-2024-01-01-10-00-00"), "PromptKD", 3, [87], 70)
    runs = collect_runs(str(tmp_path), PAPER)
    assert len(runs) == 9
    tables = {t.trainer: t for t in aggregate(runs, PAPER)}
    kd = tables["PromptKD"].rows[0]
    assert kd.stats["base"].values == [85.0, 86.0, 87.0]
    assert kd.stats["new"].values == [71.0, 72.0, 70.0]
    src = tables["PromptSRC"].rows[0]
    assert src.config == "vit_b16_c2_ep20_batch8_4+4ctx/16shots"
    assert src.stats["base"].values == [84.0, 85.0, 86.0]
    assert src.stats["new"].values == [63.0, 63.0, 63.0]
    assert src.hm == pytest.approx(hm(85.0, 63.0))
    assert "official code" in to_markdown(list(tables.values()))


def test_cli_markdown_csv_paper(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "parse_results", os.path.join(REPO, "scripts", "parse_results.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    b2n_tree(tmp_path / "runs")
    md, cs = tmp_path / "t.md", tmp_path / "t.csv"
    args = [str(tmp_path / "runs"), "--ci", "--paper", "--markdown", str(md), "--csv", str(cs)]
    assert mod.main(args) == 0
    out = capsys.readouterr().out
    assert "Paper PromptKD B / N / HM" in out and "96.30 / 98.01 / 97.15" in out
    assert md.read_text() == out
    rows = list(csv.DictReader(cs.open()))
    assert [r["dataset"] for r in rows] == ["OxfordPets", "EuroSAT", "Average"]
    assert float(rows[1]["hm"]) == pytest.approx(hm(92.0, 70.0))
    assert float(rows[1]["base_std"]) == pytest.approx(2.0)
    assert mod.main([str(tmp_path / "empty_nonexistent")]) == 1


def test_two_seeds_a_few_points_apart_are_not_a_collapse(tmp_path):
    b2n_tree(tmp_path, {"EuroSAT": {1: (90.0, 70.0), 2: (85.0, 66.0)}})
    (table,) = summarize(str(tmp_path))
    assert not [w for w in table.warnings if "collapsed" in w]
    b2n_tree(tmp_path, {"EuroSAT": {3: (90.0, 40.0)}})
    (table,) = summarize(str(tmp_path))
    assert any("seed 3: new 40.00" in w for w in table.warnings)


def test_reference_file_errors_and_defaults(tmp_path):
    assert PAPER.numbers_for("PromptKD")[1]["OxfordPets"] == (96.30, 98.01, 97.15)
    assert PAPER.numbers_for("MyNewMethod")[0] == "PromptKD"  # the default comparison
    bad = tmp_path / "ref.yaml"
    bad.write_text("PUBLISHD: {}\n")
    with pytest.raises(UserError, match="unknown keys \\['PUBLISHD'\\]"):
        load_reference(str(bad))
    bad.write_text("PUBLISHED: {X: {Pets: [1.0, 2.0]}}\n")
    with pytest.raises(UserError, match="malformed"):
        load_reference(str(bad))
    bad.write_text("DATASETS: [B, A]\n")
    assert load_reference(str(bad)).numbers_for("PromptKD") is None


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_seeds_take_only_the_seeds_asked_for(tmp_path, capsys):
    """Leftovers of an earlier run with other seeds stay out; a seed asked for and not there
    is one error naming the folder it should be in."""
    b2n_tree(tmp_path, {"EuroSAT": B2N["EuroSAT"]})
    (table,) = summarize(str(tmp_path), seeds=[1, 2])
    assert table.rows[0].seeds == [1, 2]
    assert table.rows[0].stats["base"].values == [90.0, 94.0]
    with pytest.raises(UserError, match="No results.json for seed 4 of PromptKD on EuroSAT"):
        summarize(str(tmp_path), seeds=[1, 4])
    parse = _script("parse_results")
    assert parse.main([str(tmp_path), "--seeds", "1", "2"]) == 0
    assert "| EuroSAT   | 1,2  " in capsys.readouterr().out
    assert parse.main([str(tmp_path), "--seeds", "2", "4"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and str(tmp_path / "PromptKD" / "EuroSAT" / "seed4") in out
    with pytest.raises(SystemExit):  # 01 would name the folder seed01
        parse.main([str(tmp_path), "--seeds", "01"])
    assert "'01' is not a seed" in capsys.readouterr().err


def test_a_row_never_mixes_configurations(tmp_path):
    """Seeds of one experiment folder with different config hashes: refused with --seeds
    (naming both runs); without, they are two rows labelled by hash, never one."""
    write_run(tmp_path, "CoOp", "Food101", 1, {"test": 70.0}, config="h1")
    write_run(tmp_path, "CoOp", "Food101", 2, {"test": 60.0}, config="h2")
    with pytest.raises(UserError, match="different configurations") as e:
        summarize(str(tmp_path), seeds=[1, 2])
    assert "seed1" in str(e.value) and "seed2" in str(e.value) and "h2" in str(e.value)
    (table,) = summarize(str(tmp_path))
    assert [r.label for r in table.rows] == ["Food101 [h1]", "Food101 [h2]"]
    # Two configurations each with all seeds, in their own folders, are two rows.
    write_run(tmp_path / "b", "CoOp", "Food101", 2, {"test": 61.0}, config="h1")
    write_run(tmp_path / "b", "CoOp", "Food101", 1, {"test": 62.0}, config="h2")
    (table,) = summarize(str(tmp_path), seeds=[1, 2])
    assert [r.seeds for r in table.rows] == [[1, 2], [1, 2]]


@pytest.mark.parametrize(
    "content,says",
    [('{"trainer": "CoOp", "splits": {"te', "truncated or not JSON"),
     (b"\xff\xfe\x00garbage", "not UTF-8"),
     ("[1, 2]", "no 'splits'"),
     ('{"trainer": "CoOp", "splits": {}}', "no 'splits'"),
     ('{"splits": {"test": {"accuracy": "high"}}}', "no numeric 'accuracy'"),
     ('{"splits": {"test": {"accuracy": NaN}}}', "no numeric 'accuracy'"),
     ('{"seed": "one", "splits": {"test": {"accuracy": 1.0}}}', "not an integer")],
)  # fmt: skip
def test_corrupt_results_json_is_named(tmp_path, capsys, content, says):
    b2n_tree(tmp_path, {"EuroSAT": B2N["EuroSAT"]})
    bad = tmp_path / "PromptKD" / "EuroSAT" / "seed2" / "results.json"
    bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert _script("parse_results").main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"error: {bad}") and says in out and out.count("\n") == 1
    with pytest.raises(SystemExit) as e:
        _script("demo_table").main([f"x={tmp_path}"])
    assert e.value.code == 1 and str(bad) in capsys.readouterr().err


def test_unfinished_runs_and_logs_without_results_are_named(tmp_path, caplog):
    """A run of this code without results.json is not read as an official log (its log.txt
    has per-epoch '* accuracy:' lines); a Dassl log without a result is named."""
    b2n_tree(tmp_path, {"EuroSAT": B2N["EuroSAT"]})
    ours = tmp_path / "PromptKD" / "EuroSAT" / "seed4"
    ours.mkdir()
    (ours / "config.yaml").write_text("SEED: 4\n")
    (ours / "log.txt").write_text("2026-01-01 00:00:00 * accuracy: 12.0%\n")
    official = tmp_path / "official" / "dtd" / "seed1"
    official.mkdir(parents=True)
    (official / "log.txt").write_text("** Arguments **\ntrainer: PromptKD\nepoch [1/20]\n")
    tables = summarize(str(tmp_path))
    assert [t.trainer for t in tables] == ["PromptKD"] and tables[0].rows[0].seeds == [1, 2, 3]
    text = caplog.text
    assert f"{ours} has no results.json (an unfinished run?); left out." in text
    assert f"{official / 'log.txt'} holds no result" in text


def test_demo_table_takes_the_seeds_asked_for(tmp_path, capsys):
    demo = _script("demo_table")
    b2n_tree(tmp_path, {"EuroSAT": B2N["EuroSAT"]})
    text = demo.main([f"kd={tmp_path}", "--seeds", "1", "2"])
    assert text.splitlines()[-1].endswith("| 1, 2    |") and "92.00 ± 2.83" in text
    with pytest.raises(SystemExit) as e:
        demo.main([f"kd={tmp_path}", "--seeds", "1", "5"])
    err = capsys.readouterr().err
    assert e.value.code == 1 and str(tmp_path / "PromptKD" / "EuroSAT" / "seed5") in err
    write_run(tmp_path, "PromptKD", "EuroSAT", 3, {"base": 1.0, "new": 1.0}, config="h9")
    with pytest.raises(SystemExit):  # all seeds, two configurations: never one row
        demo.main([f"kd={tmp_path}"])
    assert "would mix runs of 2 configurations" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.main([f"kd={tmp_path / 'nope'}"])
    assert "is not a folder (row 'kd')" in capsys.readouterr().err


def test_a_run_trained_without_evaluation_is_left_out_with_a_warning(tmp_path, caplog, capsys):
    """TEST.NO_TEST: its results.json (``"no_test": true``, no splits) only records that the
    run finished; tables, demo rows and plots leave it out and say why."""
    b2n_tree(tmp_path, {"EuroSAT": B2N["EuroSAT"]})
    untested = tmp_path / "PromptKD" / "EuroSAT" / "nolabels"
    untested.mkdir()
    record = {"trainer": "PromptKD", "dataset": "ImageFolder", "seed": 1, "config_hash": "h7",
              "splits": {}, "selection": None, "no_test": True}  # fmt: skip
    (untested / "results.json").write_text(json.dumps(record))
    (tables,) = summarize(str(tmp_path))
    assert [r.dataset for r in tables.rows] == ["EuroSAT"] and tables.rows[0].seeds == [1, 2, 3]
    assert f"{untested} was trained without evaluation (TEST.NO_TEST)" in caplog.text
    assert _script("parse_results").main([str(tmp_path)]) == 0
    assert "EuroSAT" in capsys.readouterr().out
    assert "92.00" in _script("demo_table").main([f"kd={tmp_path}", "--seeds", "1", "2"])
    assert _script("plot_results").main([str(tmp_path), "--out-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    # only such a run: nothing to tabulate, said as for an empty tree (not a traceback)
    assert _script("parse_results").main([str(untested)]) == 1
    assert capsys.readouterr().out.startswith("error: no results.json or Dassl log.txt")


def test_linked_run_folders_are_followed_once(tmp_path):
    """A seed kept elsewhere and linked into the tree is tabulated; a link loop and a second
    link to the same run do not read it twice."""
    tree, elsewhere = tmp_path / "tree", tmp_path / "elsewhere"
    write_run(tree, "CoOp", "Food101", 1, {"test": 70.0})
    write_run(elsewhere, "CoOp", "Food101", 2, {"test": 72.0})
    os.symlink(elsewhere / "CoOp" / "Food101" / "seed2", tree / "CoOp" / "Food101" / "seed2")
    os.symlink(elsewhere / "CoOp" / "Food101" / "seed2", tree / "CoOp" / "again")
    os.symlink(tree, tree / "CoOp" / "loop")
    runs = collect_runs(str(tree))
    assert sorted(r.seed for r in runs) == [1, 2]
    (table,) = summarize(str(tree))
    assert not any("found again" in w for w in table.warnings), table.warnings
