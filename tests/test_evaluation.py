"""Evaluator metrics vs scikit-learn, per-class / cmat, logits file, results.json merge."""

import json
import logging
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import f1_score
from yacs.config import CfgNode as CN

from dassl_ext.errors import UserError
from dassl_ext.evaluation import build_evaluator, config_hash, read_results, write_results

Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 1]
Y_PRED = [0, 1, 0, 1, 1, 2, 0, 2, 2, 2]


def make_cfg(tmp_path, **test_kw) -> CN:
    cfg = CN()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.SEED = 1
    cfg.TEST = CN()
    cfg.TEST.EVALUATOR = "Classification"
    cfg.TEST.PER_CLASS_RESULT = False
    cfg.TEST.COMPUTE_CMAT = False
    cfg.TEST.SAVE_LOGITS = False
    for k, v in test_kw.items():
        setattr(cfg.TEST, k, v)
    return cfg


def logits_for(pred: list[int], num_classes: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(len(pred), num_classes, generator=gen) * 0.1
    out[torch.arange(len(pred)), torch.tensor(pred)] = 5.0
    return out


def feed(ev, y_true=Y_TRUE, y_pred=Y_PRED, batch=4, offset=0):
    logits, labels = logits_for(y_pred), torch.tensor(y_true)
    for s in range(0, len(y_true), batch):
        idx = list(range(offset + s, offset + min(s + batch, len(y_true))))
        ev.process(
            logits[s : s + batch],
            labels[s : s + batch],
            impaths=[f"img{i}.png" for i in idx],
            indices=torch.tensor(idx),
        )
    return logits


def test_metrics_match_sklearn_and_dassl_lines(tmp_path, caplog):
    ev = build_evaluator(make_cfg(tmp_path))
    feed(ev)
    with caplog.at_level(logging.INFO):
        res = ev.evaluate()
    assert list(res) == ["accuracy", "error_rate", "macro_f1"]
    assert res["accuracy"] == pytest.approx(70.0)
    assert res["error_rate"] == pytest.approx(30.0)
    assert res["macro_f1"] == pytest.approx(100 * f1_score(Y_TRUE, Y_PRED, average="macro"))
    text = caplog.text
    for line in ["* total: 10", "* correct: 7", "* accuracy: 70.0%", "* error: 30.0%"]:
        assert line in text
    assert f"* macro_f1: {res['macro_f1']:.1f}%" in text
    ev.reset()
    assert ev.num_samples == 0
    with pytest.raises(UserError, match="no images"):
        ev.evaluate()


def test_macro_f1_only_over_present_labels(tmp_path):
    ev = build_evaluator(make_cfg(tmp_path))
    feed(ev, y_true=[0, 0, 1], y_pred=[0, 2, 1])
    res = ev.evaluate()
    expected = 100 * f1_score([0, 0, 1], [0, 2, 1], average="macro", labels=[0, 1])
    assert res["macro_f1"] == pytest.approx(expected)


def test_per_class_and_cmat(tmp_path, caplog):
    cfg = make_cfg(tmp_path, PER_CLASS_RESULT=True, COMPUTE_CMAT=True)
    ev = build_evaluator(cfg, lab2cname={0: "cat", 1: "dog", 2: "eel"})
    feed(ev)
    with caplog.at_level(logging.INFO):
        res = ev.evaluate(split="base")
    per_class = [100 * 2 / 3, 100 * 2 / 3, 100 * 3 / 4]
    assert res["perclass_accuracy"] == pytest.approx(sum(per_class) / 3)
    assert "* class: 1 (dog)" in caplog.text
    cmat = torch.load(tmp_path / "cmat_base.pt", weights_only=True)
    assert cmat.shape == (3, 3)
    assert cmat[2].tolist() == pytest.approx([0.25, 0.0, 0.75])
    assert torch.allclose(cmat.sum(1), torch.ones(3, dtype=cmat.dtype))


def test_save_logits_weights_only(tmp_path):
    ev = build_evaluator(make_cfg(tmp_path, SAVE_LOGITS=True), lab2cname={0: "a", 1: "b", 2: "c"})
    logits = feed(ev)
    path = tmp_path / "logits_test.pt"
    ev.save_logits(str(path))
    obj = torch.load(path, weights_only=True)
    assert torch.equal(obj["logits"], logits)
    assert obj["logits"].dtype == torch.float32
    assert obj["labels"].tolist() == Y_TRUE
    assert obj["impaths"] == [f"img{i}.png" for i in range(10)]
    assert obj["classnames"] == ["a", "b", "c"]
    no_keep = build_evaluator(make_cfg(tmp_path))
    with pytest.raises(RuntimeError, match="SAVE_LOGITS"):
        no_keep.save_logits(str(path))


def test_sync_is_noop_without_process_group(tmp_path):
    ev = build_evaluator(make_cfg(tmp_path))
    feed(ev)
    ev.sync()
    assert ev.num_samples == 10


def _ddp_worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        ev = build_evaluator(make_cfg(out_dir, SAVE_LOGITS=True))
        logits = logits_for(Y_PRED)
        # Rank-strided sampling, and rank 1 sees sample 0 again (as a padding sampler would).
        mine = list(range(rank, 10, world)) + ([0] if rank == 1 else [])
        ev.process(
            logits[mine],
            torch.tensor(Y_TRUE)[mine],
            impaths=[f"img{i}.png" for i in mine],
            indices=mine,
        )
        ev.sync()
        res = ev.evaluate()
        if rank == 0:
            ev.save_logits(os.path.join(out_dir, "gathered.pt"))
            torch.save({"acc": res["accuracy"], "logits": logits}, os.path.join(out_dir, "r.pt"))
    finally:
        dist.destroy_process_group()


def test_sync_gathers_in_dataset_order(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    gathered = torch.load(tmp_path / "gathered.pt", weights_only=True)
    ref = torch.load(tmp_path / "r.pt", weights_only=True)
    assert gathered["labels"].tolist() == Y_TRUE
    assert gathered["impaths"] == [f"img{i}.png" for i in range(10)]
    assert torch.equal(gathered["logits"], ref["logits"])
    assert ref["acc"] == pytest.approx(70.0)


def test_config_hash_ignores_run_identity(tmp_path):
    a, b = make_cfg(tmp_path), make_cfg(tmp_path / "other")
    b.SEED = 3
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 12
    # a key added for input checks leaves the hashes of runs made before it unchanged
    from dassl_ext.config import get_cfg_default

    full, older = get_cfg_default(), get_cfg_default()
    del older.DATASET["CHECK_IMAGES"]
    assert config_hash(older) == config_hash(full)
    b.TEST.EVALUATOR = "Other"
    assert config_hash(a) != config_hash(b)


def test_write_results_merges_splits(tmp_path):
    path = tmp_path / "results.json"
    base = {"trainer": "PromptKD", "dataset": "Digits", "seed": 1, "config_hash": "abc"}
    split = {"accuracy": 90.0, "macro_f1": 89.0, "error_rate": 10.0, "num_images": 5, "epoch": 2}
    write_results(str(path), {**base, "splits": {"base": split}, "selection": None})
    merged = write_results(str(path), {**base, "splits": {"new": {**split, "accuracy": 70.0}}})
    assert set(merged["splits"]) == {"base", "new"}
    on_disk = read_results(str(path))
    assert on_disk == merged
    assert on_disk["splits"]["new"]["accuracy"] == 70.0
    assert on_disk["selection"] is None
    assert [p for p in os.listdir(tmp_path) if p != "results.json"] == []
    # A different experiment in the same folder replaces the file instead of mixing.
    other = write_results(str(path), {**base, "config_hash": "zzz", "splits": {"test": split}})
    assert set(other["splits"]) == {"test"}
    (tmp_path / "results.json").write_text("{not json")
    assert set(write_results(str(path), {**base, "splits": {"x": split}})["splits"]) == {"x"}
    assert json.loads(path.read_text())["trainer"] == "PromptKD"


def test_build_evaluator_refuses_another_name_without_validate_config(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg.TEST.EVALUATOR = "Retrieval"  # a trainer built in code, not through train.py
    with pytest.raises(UserError, match="TEST.EVALUATOR is 'Retrieval'"):
        build_evaluator(cfg)
