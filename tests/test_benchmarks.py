"""The benchmarks' CPU-side parts: promptkd_step on the tiny pair, the GPU check's fail-fast
and table, the data-loading benchmark, and INPUT.BACKEND tensor against the PIL path."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from dassl_ext.config import get_cfg_default, merge_from_file
from dassl_ext.data.data_manager import DatasetWrapper, image_reader
from dassl_ext.data.splits import Datum
from dassl_ext.data.transforms import build_transform
from dassl_ext.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the input settings of every prompt-learning config (PromptKD included)
INPUT_CFG = os.path.join(REPO, "configs", "trainers", "_base_", "prompt_sgd.yaml")


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(REPO, "benchmarks", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def step_bench():
    return _bench("promptkd_step")


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory, step_bench):
    folder = str(tmp_path_factory.mktemp("bench_files"))
    from benchmarks.promptkd_models import PAIRS, make_files

    make_files(folder, PAIRS["tiny"])
    step_bench.make_view_bank(_args(step_bench, folder), PAIRS["tiny"])  # train-views' bank
    return folder


def _args(step_bench, files, *extra):
    return step_bench.parse_args(["--pair", "tiny", "--files", files, "--classes", "10",
                                  "--steps", "1", "--bank-images", "16", "--views", "2",
                                  *extra])  # fmt: skip


VARIANTS = ["train-ours", "train-official", "train-views", "eval-ours", "eval-official"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_on_the_tiny_pair(step_bench, tiny_files, variant):
    args = _args(step_bench, tiny_files, "--variant", variant, "--teacher-prec", "fp32")
    r = step_bench.run_variant(args)
    assert r["variant"] == variant and r["batch"] == 8
    assert r["sec_per_step"] > 0 and r["cpu_sec_per_step"] > 0 and r["peak_rss_mb"] > 0
    assert 0 < r["step_rss_mb"] <= r["peak_rss_mb"]  # the steps' peak, loading excluded
    teacher = {"eval-ours": "", "train-views": "views float16"}.get(variant, "fp32")
    assert r["teacher_prec"] == teacher
    assert r["grad_ckpt"] == "off"
    views = variant == "train-views"  # the replay and read timed apart, within the step
    assert (0 < r["data_sec_per_step"] < r["sec_per_step"]) if views else not r["data_sec_per_step"]


def test_views_step_never_builds_the_teacher(step_bench, tiny_files, monkeypatch):
    import benchmarks.promptkd_models as models

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher was built")

    monkeypatch.setattr(models, "build_frozen_teacher", no_teacher)
    monkeypatch.setattr(models, "build_official", no_teacher)
    args = _args(step_bench, tiny_files, "--variant", "train-views")
    assert step_bench.run_variant(args)["variant"] == "train-views"


def test_views_batches_replay_the_stored_views(step_bench, tiny_files):
    """Each step's images are the stored crops of the bank's rows, replayed on the source
    images, and its teacher features those rows' stored features (the epoch's view)."""
    import numpy as np

    from benchmarks.promptkd_models import PAIRS

    args = _args(step_bench, tiny_files)
    pair = PAIRS["tiny"]
    views = step_bench.StoredViews(args, pair, torch.device("cpu"))
    arrays = step_bench.view_bank(args, pair).open()
    replay, reader = step_bench.replay_transform(pair.size), views.dataset.reader
    rng = np.random.default_rng(1)  # the batches' own stream
    for epoch in range(3):
        images, feats = views.batch()
        index = rng.choice(16, 8, replace=False)
        view = step_bench.views_for_epoch(1, epoch, index, 2)
        assert images.shape == (8, 3, pair.size, pair.size) and feats.dtype == torch.float32
        for row, (i, v) in enumerate(zip(index.tolist(), view.tolist())):
            assert torch.equal(feats[row], arrays["features"][i, v].float())
            assert torch.equal(images[row], replay.apply(reader(str(i)), arrays["params"][i, v]))
    assert arrays["features"].dtype == torch.float16 and arrays["features"].shape[1] == 2
    unit = arrays["features"][0].float().norm(dim=-1)  # unit-length features, as the teacher's
    assert torch.allclose(unit, torch.ones(2), atol=1e-2)


def test_checkpointing_variant_recomputes_the_student(step_bench, tiny_files, monkeypatch):
    from dassl_ext.modeling import prompted

    calls = []
    real = prompted.run_checkpointed

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(prompted, "run_checkpointed", counting)
    args = _args(step_bench, tiny_files, "--variant", "train-ours", "--teacher-prec", "fp32",
                 "--ckpt", "on")  # fmt: skip
    assert step_bench.run_variant(args)["grad_ckpt"] == "on" and calls


def test_plan_and_table(step_bench, tiny_files):
    args = _args(step_bench, tiny_files, "--eval-batch", "32")
    assert args.teacher_precs == ["fp32", "bf16"] and args.eval_batch == 32
    assert step_bench.plan(args) == [
        ("train-ours", "fp32", "off"), ("train-ours", "bf16", "off"),
        ("train-official", "", "off"), ("train-views", "", "off"), ("eval-ours", "", "off"),
        ("eval-official", "", "off"),
    ]  # fmt: skip
    both = _args(step_bench, tiny_files, "--checkpointing", "off,on", "--variants", "train-ours")
    assert step_bench.plan(both) == [("train-ours", p, c) for c in ("off", "on")
                                     for p in ("fp32", "bf16")]  # fmt: skip
    assert _args(step_bench, tiny_files, "--prec", "bf16").teacher_precs == ["bf16"]
    row = {"sec_per_step": 2.0, "cpu_sec_per_step": 4.0, "images_per_sec": 4.0,
           "peak_rss_mb": 1000.0, "step_rss_mb": 800.0, "peak_cuda_mb": 0, "build_sec": 1.0,
           "batch": 8, "grad_ckpt": "off"}  # fmt: skip
    results = [
        {**row, "variant": "train-ours", "teacher_prec": "fp32"},
        {**row, "variant": "train-ours", "teacher_prec": "bf16", "cpu_sec_per_step": 2.0,
         "peak_rss_mb": 600.0, "step_rss_mb": 400.0},
        {**row, "variant": "train-official", "teacher_prec": "fp32", "cpu_sec_per_step": 8.0},
        {**row, "variant": "eval-ours", "teacher_prec": "", "cpu_sec_per_step": 0.5},
        {**row, "variant": "eval-official", "teacher_prec": "fp32", "cpu_sec_per_step": 5.0},
        {**row, "variant": "train-ours", "teacher_prec": "fp32", "grad_ckpt": "on",
         "cpu_sec_per_step": 5.0, "peak_rss_mb": 700.0},
        {**row, "variant": "train-views", "teacher_prec": "views float16", "cpu_sec_per_step": 2.4,
         "data_cpu_sec_per_step": 0.8, "peak_rss_mb": 300.0, "step_rss_mb": 200.0},
    ]  # fmt: skip
    table = step_bench.format_table(results, args)
    assert (
        "train step CPU time, stored views / official: 0.300x (0.200x without the views' replay "
        "and read, 0.800 s/step, which a live loader's augmentation costs as well); peak memory "
        "0.30x, during the steps 0.25x; target <= 0.30x step, <= 0.40x memory: met"
    ) in table
    assert "stored views / ours (teacher bf16): 1.200x; peak memory 0.50x" in table
    assert "stored views / ours (teacher fp32)" in table  # the checkpointed run left out
    assert table.count("stored views / ours") == 2
    slower = [r if r["variant"] != "train-views" else {**r, "peak_rss_mb": 500.0}
              for r in results]  # fmt: skip
    assert "memory: NOT met" in step_bench.format_table(slower, args)
    assert (
        "(teacher bf16, checkpointing off) / official: 0.250x; peak memory 0.60x, "
        "during the steps 0.50x"
    ) in table
    assert "checkpointing on / off (teacher fp32): step CPU time 1.25x, peak memory 0.70x" in table
    assert "teacher fp32 / teacher bf16: 2.00x" in table
    assert "eval speed, student-only / official: 10.0x" in table
    with pytest.raises(SystemExit):
        _args(step_bench, tiny_files, "--variants", "train-ours,nonsense")


def test_main_runs_variants_in_their_own_processes(step_bench, tiny_files, tmp_path, capsys):
    out = tmp_path / "step.json"
    argv = ["--pair", "tiny", "--files", tiny_files, "--classes", "10", "--steps", "1",
            "--variants", "train-ours", "--teacher-precs", "fp32", "--json", str(out)]  # fmt: skip
    assert step_bench.main(argv) == 0
    assert "train step, stored text features" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["results"]] == ["train-ours"]
    assert saved["args"]["classes"] == 10


def test_gpu_check_fails_fast_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the check would run")
    env = {**os.environ, "PYTHON": sys.executable}
    script = os.path.join(REPO, "benchmarks", "gpu_check.sh")
    done = subprocess.run(
        ["bash", script, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert "no CUDA GPU visible" in done.stderr
    assert not list(tmp_path.iterdir())  # nothing ran


def test_gpu_check_report_table(tmp_path):
    gpu = _bench("gpu_check")
    row = {"teacher_prec": "fp16", "batch": 8, "sec_per_step": 0.05, "cpu_sec_per_step": 0.05,
           "images_per_sec": 160.0, "peak_cuda_mb": 3000.0}  # fmt: skip
    runs = {
        "step_fp16_b8.json": [{**row, "variant": "train-ours"},
                              {**row, "variant": "train-official", "sec_per_step": 0.1,
                               "peak_cuda_mb": 6000.0}],
        "step_bf16_b256.json": [{**row, "variant": "eval-ours", "batch": 256, "teacher_prec": ""}],
    }  # fmt: skip
    for name, results in runs.items():
        prec = name.split("_")[1]
        (tmp_path / name).write_text(
            json.dumps({"args": {"prec": prec, "classes": 100}, "results": results})
        )
    ckpt = [{**row, "variant": "train-ours", "grad_ckpt": "off"},
            {**row, "variant": "train-ours", "grad_ckpt": "on", "sec_per_step": 0.06,
             "peak_cuda_mb": 2400.0}]  # fmt: skip
    (tmp_path / "ckpt_bf16_b8.json").write_text(
        json.dumps({"args": {"prec": "bf16", "classes": 100}, "results": ckpt})
    )
    views = {**row, "variant": "train-views", "teacher_prec": "views float16",
             "sec_per_step": 0.04, "data_sec_per_step": 0.02, "images_per_sec": 200.0,
             "peak_cuda_mb": 1500.0}  # fmt: skip
    runs["step_fp16_b8.json"].append(views)
    (tmp_path / "step_fp16_b8.json").write_text(
        json.dumps({"args": {"prec": "fp16", "classes": 100}, "results": runs["step_fp16_b8.json"]})
    )
    (tmp_path / "pytest.txt").write_text("....\n12 passed, 3 skipped in 80.1s\n")
    (tmp_path / "data_loading.txt").write_text("train | tensor | 400.0 | 160.0 | 1\n")
    report = gpu.format_report(gpu.load_results(str(tmp_path)), str(tmp_path))
    lines = report.splitlines()
    assert lines[0].startswith("prec | variant") and len(lines) == 12  # ckpt rows apart
    assert "fp16 | train, stored views | views float16 | 8 | 40.0 | 200 | 1500" in report
    assert (
        "fp16, batch 8: step time stored views / official 0.40x, peak CUDA memory 0.25x" in report
    )
    assert (
        "fp16, batch 8: stored views 200 images/s with the views' replay and read in the step "
        "(20.0 ms), 400 images/s without"
    ) in report
    assert "bf16 | eval, student only | - | 256 | 50.0 | 160 | 3000" in report
    assert "fp16, batch 8: step time ours / official 0.50x, peak CUDA memory 0.50x" in report
    assert "pytest: 12 passed, 3 skipped in 80.1s" in report
    assert (
        "bf16, batch 8: checkpointing on / off: step time 1.20x, peak CUDA memory 0.80x "
        "(2400 vs 3000 MB)"
    ) in report
    assert gpu.main(["report", str(tmp_path / "empty")]) == 1


# ---------------------------------------------------------------------------- data loading
@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    return _bench("data_loading").write_jpegs(str(tmp_path_factory.mktemp("jpegs")), 12)


def _kd_cfg(backend: str):
    cfg = get_cfg_default()
    merge_from_file(cfg, INPUT_CFG)
    cfg.INPUT.BACKEND = backend
    return cfg


def _crops(paths, backend: str, is_train: bool, repeats: int) -> torch.Tensor:
    cfg = _kd_cfg(backend)
    data = [Datum(impath=p, label=0) for p in paths] * repeats
    wrapper = DatasetWrapper(data, build_transform(cfg, is_train), image_reader(cfg))
    torch.manual_seed(0)
    return torch.stack([wrapper[i]["img"] for i in range(len(wrapper))])


@pytest.mark.parametrize("is_train", [True, False], ids=["train", "test"])
def test_tensor_backend_crops_have_the_pil_statistics(jpegs, is_train):
    pil, fast = (_crops(jpegs, b, is_train, 4 if is_train else 1) for b in ("pil", "tensor"))
    assert pil.shape == fast.shape == (len(pil), 3, 224, 224) and fast.dtype == torch.float32
    cfg = _kd_cfg("pil")
    mean, std = torch.tensor(cfg.INPUT.PIXEL_MEAN), torch.tensor(cfg.INPUT.PIXEL_STD)
    low, high = (-mean / std).view(1, 3, 1, 1), ((1 - mean) / std).view(1, 3, 1, 1)
    for x in (pil, fast):  # normalised [0, 1] pixels (bicubic may overshoot a little)
        assert (x >= low - 0.1).all() and (x <= high + 0.1).all()
    assert torch.allclose(fast.mean((0, 2, 3)), pil.mean((0, 2, 3)), atol=0.05)
    assert torch.allclose(fast.std((0, 2, 3)), pil.std((0, 2, 3)), rtol=0.05)
    if not is_train:  # the same deterministic crop: equal up to resampling rounding
        assert (fast - pil).abs().mean() < 0.02


def test_tensor_backend_rejects_what_it_lacks():
    cfg = _kd_cfg("tensor")
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "colorjitter")
    with pytest.raises(UserError, match="INPUT.BACKEND tensor does not implement.*colorjitter"):
        build_transform(cfg, is_train=True)
    cfg.INPUT.BACKEND = "opencv"
    with pytest.raises(UserError, match="INPUT.BACKEND is 'opencv'"):
        build_transform(cfg, is_train=True)


def test_tensor_backend_unreadable_file_is_user_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.jpg"):
        image_reader(_kd_cfg("tensor"))(str(bad))


def test_data_loading_benchmark_prints_workers_needed(tmp_path, capsys):
    bench = _bench("data_loading")
    step = tmp_path / "step.json"
    step.write_text(json.dumps({"results": [
        {"variant": "train-ours", "images_per_sec": 300.0},
        {"variant": "eval-ours", "images_per_sec": 3000.0},
    ]}))  # fmt: skip
    assert bench.main(["--images", "3", "--step-json", str(step)]) == 0
    out = capsys.readouterr().out
    for split in ("train", "test"):
        for backend in ("pil", "tensor"):
            assert out.count(f"{split} | {backend} | ") == 1
        assert f"{split}: tensor / pil images/s per worker" in out
    assert "| 3000.0 |" in out and "| 300.0 |" in out


def test_ddp_throughput_runs_one_and_two_processes_at_one_global_batch(tmp_path):
    bench = _bench("ddp_throughput")
    out = tmp_path / "rows.json"
    argv = ["--procs", "1,2", "--steps", "1", "--warmup", "1", "--batch", "8", "--json", str(out)]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["procs"], r["global_batch"], r["per_rank"]) for r in rows] == [(1, 8, 8), (2, 8, 4)]
    assert all(r["img_per_s"] > 0 for r in rows)


def test_student_speed_benchmark_at_tiny_size(monkeypatch, capsys):
    """benchmarks/student_speed.py: eager and onnxruntime rows for the exported student and
    the teacher, a torch.compile failure reported as a row (not raised), the speed-ups."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    bench = _bench("student_speed")

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(torch, "compile", no_compiler)
    rows = bench.main(["--size", "tiny", "--iters", "1", "--batches", "1", "3", "--threads", "1",
                       "--teacher-backends", "eager", "compile"])  # fmt: skip
    cells = {(r["model"], r["backend"], r["batch"]): r for r in rows}
    assert set(cells) == {(m, b, n) for m, backends in (("student", ("eager", "compile", "onnx")),
                                                        ("teacher", ("eager", "compile")))
                          for b in backends for n in (1, 3)}  # fmt: skip
    for (_, backend, batch), r in cells.items():
        if backend == "compile":
            assert r["error"] == "RuntimeError: no C++ compiler here"
        else:
            assert r["images_per_s"] == pytest.approx(batch / r["sec"]) and r["sec"] > 0
    assert cells[("teacher", "eager", 1)]["params"] > cells[("student", "eager", 1)]["params"]
    speedups = {(s["backend"], s["batch"]) for s in bench.speedups(rows)}
    assert speedups == {("eager", 1), ("eager", 3)}
    out = capsys.readouterr().out
    assert "student / teacher images/s:" in out and "failed: RuntimeError" in out


# ---------------------------------------------------------------------------- stored views
def test_view_bank_benchmark_builds_with_one_and_two_processes(tiny_files, tmp_path, capsys):
    """benchmarks/view_bank.py at tiny size: every image built once per process count (the
    bank verified by ShardedStore.finish), views/s and the 2 / 1 ratio printed."""
    bench = _bench("view_bank")
    out = tmp_path / "rows.json"
    argv = ["--pair", "tiny", "--files", tiny_files, "--images", "4", "--k", "2",
            "--shard-images", "2", "--precs", "fp32", "--procs", "1,2", "--out",
            str(tmp_path / "banks"), "--json", str(out)]  # fmt: skip
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["procs"], r["threads"] >= 1, r["views"]) for r in rows] == [
        (1, True, 8),
        (2, True, 8),
    ]
    assert all(r["views_per_sec"] > 0 and r["teacher_prec"] == "fp32" for r in rows)
    for procs in (1, 2):  # finished banks: 2 images per shard, features of the teacher's width
        bank = tmp_path / "banks" / f"bank_fp32_{procs}"
        assert (bank / "manifest.json").is_file() and len(list(bank.glob("features-*.npy"))) == 2
    printed = capsys.readouterr().out
    assert "views/s, 2 processes / 1 (teacher fp32): " in printed
    with pytest.raises(SystemExit):  # more processes than shards
        bench.parse_args(["--images", "4", "--shard-images", "4", "--procs", "1,2"])


def test_view_bank_table_ratios():
    bench = _bench("view_bank")
    row = {"threads": 1, "views": 64, "load_sec": 1.0, "build_sec": 8.0, "cpu_sec_per_view": 0.1,
           "peak_rss_mb": 900.0, "digest": "a"}  # fmt: skip
    rows = [
        {**row, "teacher_prec": "fp32", "procs": 1, "views_per_sec": 8.0},
        {**row, "teacher_prec": "fp32", "procs": 2, "views_per_sec": 12.0, "digest": "b"},
        {**row, "teacher_prec": "bf16", "procs": 1, "views_per_sec": 20.0},
        {**row, "teacher_prec": "bf16", "procs": 2, "views_per_sec": 30.0},
    ]
    table = bench.format_table(rows)
    assert "views/s, teacher bf16 / fp32 (1 process(es)): 2.50x" in table
    assert "views/s, 2 processes / 1 (teacher fp32): 1.50x" in table
    assert "views/s, 2 processes / 1 (teacher bf16): 1.50x" in table
    assert table.count("no (float sums)") == 1  # only fp32 on 2 processes differs from its first


def test_views_protocol_reads_the_demo_options_and_plans_both_arms(tmp_path):
    bench = _bench("views_protocol")
    opts = bench.standin_opts()
    pairs = dict(zip(opts[::2], opts[1::2]))
    assert len(opts) % 2 == 0 and pairs["INPUT.SIZE"] == "(32, 32)"
    assert pairs["INPUT.TRANSFORMS"] == "['random_crop', 'normalize']"
    assert bench.recipe_epochs() == 40  # digits_standins.yaml: K = the students' epochs
    args = bench.parse_args(["--out", str(tmp_path), "--seeds", "1", "2", "--epochs", "3"])
    parts = {name: (env, cmd) for name, env, cmd in bench.parts(args)}
    assert list(parts) == ["teacher", "live", "bank", "views"]
    teacher = parts["live"][0]["TEACHER_CKPT"]
    assert all(parts[p][0]["TEACHER_CKPT"] == teacher for p in ("bank", "views"))
    views = ["TRAINER.PROMPTKD.STORED_VIEWS", "3"]
    for name, (_, cmd) in parts.items():
        has_views = any(cmd[i : i + 2] == views for i in range(len(cmd)))
        assert has_views == (name in ("bank", "views")), name
        assert cmd[-2:] == (views if has_views else ["OPTIM.MAX_EPOCH", "3"])
    assert parts["live"][1][3:5] == ["1", "2"] and parts["views"][1][3:5] == ["1", "2"]
    assert parts["bank"][0]["OUTPUT"] == parts["views"][0]["OUTPUT"] != parts["live"][0]["OUTPUT"]


def test_views_protocol_dry_run_prints_every_part(tmp_path, capfd):
    bench = _bench("views_protocol")
    assert bench.main(["--dry-run", "--out", str(tmp_path), "--seeds", "1"]) == 0
    out = capfd.readouterr().out
    for part in ("teacher", "live", "bank", "views"):
        assert f"== views_protocol: {part}" in out
    assert "build_teacher_views.py" in out and "TRAINER.PROMPTKD.STORED_VIEWS 40" in out
    assert out.count("DRY_RUN: ") >= 5 and not list(tmp_path.iterdir())  # nothing ran


def test_views_protocol_report():
    bench = _bench("views_protocol")
    times = {"teacher": 30.0, "live": 100.0, "bank": 10.0, "views": 40.0}
    live = {1: (90.0, 80.0, bench.hm(90.0, 80.0)), 2: (92.0, 82.0, bench.hm(92.0, 82.0))}
    views = {1: (90.0, 81.0, bench.hm(90.0, 81.0)), 2: (91.0, 82.0, bench.hm(91.0, 82.0))}
    report = bench.format_report(times, live, views, 40)
    assert "| bank of stored views (K = 40) | 10.0 |" in report
    assert "stored views / live, students only: 0.40x; with the bank: 0.50x" in report
    assert "| 1 | 90.00 | 80.00 | 84.71 | 90.00 | 81.00 | 85.26 | +0.56 |" in report
    assert "(target within 0.5: met)" in report and "| mean | 91.00 |" in report
