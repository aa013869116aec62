"""scripts/promptkd/distil_folder.sh: a student from a folder of unlabeled images in one
command (train, evaluate against the zero-shot CLIPs and the teacher, one table and bar
chart, export), on Digits written as image files (tests/image_folder_fixtures.py) with the
tiny CLIPs; and scripts/demo_table.py --plot, the bar chart of all models side by side."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys

import pytest
from image_folder_fixtures import write_folders
from test_aggregate import write_run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "promptkd", "distil_folder.sh")
# 32-pixel images, one epoch, small batches: seconds per run with the tiny CLIPs
TINY = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1",
        "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "64"]  # fmt: skip
MODELS = ["--teacher", "tiny-teacher", "--student", "tiny-student"]


def demo_table():
    spec = importlib.util.spec_from_file_location(
        "demo_table", os.path.join(REPO, "scripts", "demo_table.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def distil(cwd, *args: str, clip_root: str = "", **env: str) -> subprocess.CompletedProcess:
    """``bash distil_folder.sh ARGS`` run from ``cwd`` (paths relative to it)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("TEACHER_CKPT", "SEEDS", "DATA")}
    environ.update(PYTHON=sys.executable, CLIP_ROOT=clip_root, **env)
    return subprocess.run(["bash", SCRIPT, *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


@pytest.fixture
def mine(tmp_path):
    """4 digit classes: 3 unlabeled images each under mine/unlabeled, 4 labeled each."""
    return write_folders(str(tmp_path / "mine"), n_classes=4, n_train=3, n_eval=4)


def test_labeled_folder_trains_evaluates_plots_and_exports(tmp_path, mine, tiny_clip_root):
    folders = ["--images", "mine/unlabeled", "--classes", "mine/classes.txt",
               "--labeled", "mine/labeled", "--out", "out", *MODELS, "--no-onnx"]  # fmt: skip
    run = distil(tmp_path, *folders, *TINY, clip_root=tiny_clip_root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    table = (out / "table.md").read_text().splitlines()
    assert [line.split("|")[1].strip() for line in table[2:]] == [
        "zero-shot CLIP (teacher)", "zero-shot CLIP (student)", "PromptKD student (no labels)"
    ]  # fmt: skip
    assert "| tiny-teacher |" in table[2] and table[4].endswith("| 1       |")
    assert "\n".join(table) in run.stdout  # the one table is printed
    assert f"Bar chart of the 3 models: {out / 'models.png'}" in run.stdout
    assert (out / "models.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the student trained without a label: no labeled folder, no test in its run
    config = (out / "student" / "seed1" / "config.yaml").read_text()
    assert "EVAL_DIR: ''" in config and "NO_TEST: true" in config
    assert str(tmp_path / "mine" / "unlabeled") in config  # paths relative to where it ran
    assert (out / "teacher_text_features").is_dir()  # one cache for training and evaluation
    export = out / "student" / "seed1" / "student.pt"
    assert export.is_file() and f"predict.py -m {export}" in run.stdout.splitlines()[-2]
    assert not (out / "student" / "seed1" / "student.onnx").exists()  # --no-onnx


def test_unlabeled_folder_trains_and_exports_without_a_table_and_reruns(
    tmp_path, mine, tiny_clip_root
):
    args = ["--images", mine.train_dir, "--classes", mine.class_file,
            "--out", str(tmp_path / "out"), *MODELS, *TINY]  # fmt: skip
    run = distil(tmp_path, *args, clip_root=tiny_clip_root, ONNX="0")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = tmp_path / "out"
    export = out / "student" / "seed1" / "student.pt"
    assert export.is_file() and f"predict.py -m {export}" in run.stdout.splitlines()[-1]
    assert not (out / "eval").exists() and not (out / "table.md").exists()
    assert "Base / new / HM" not in run.stdout and "|" not in run.stdout
    # Re-run: nothing trained or built again (the run trained without a test still wrote
    # its results.json, with no splits, so --skip-finished skips it), the export is kept.
    checkpoint = out / "student" / "seed1" / "VLPromptLearner" / "model.pth.tar-1"
    stamps = {p: p.stat().st_mtime_ns for p in (checkpoint, export)}
    again = distil(tmp_path, *args, clip_root=tiny_clip_root, ONNX="0")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Done, skipped: {out / 'student' / 'seed1'} already holds a run" in again.stdout
    assert f"{export} is newer than {checkpoint}; kept" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert sorted(os.listdir(checkpoint.parent)) == ["checkpoint", "model.pth.tar-1"]


def _dry_run_lines(stdout: str) -> list[list[str]]:
    return [shlex.split(ln.removeprefix("DRY_RUN: ")) for ln in stdout.splitlines()
            if ln.startswith("DRY_RUN: ")]  # fmt: skip


def test_a_teacher_at_another_resolution_is_evaluated_at_its_own(tmp_path, mine, tiny_clip_root):
    """DRY_RUN with a 64 px teacher and the 32 px student: the student's runs keep the
    INPUT.SIZE passed, the zero-shot teacher's evaluation runs at 64 px."""
    from dassl_ext.modeling import TinyClipSpec, save_tiny_clip

    teacher = str(tmp_path / "tiny-64px.pt")
    save_tiny_clip(teacher, TinyClipSpec(embed_dim=48, vision_width=64, text_width=64,
                                         image_resolution=64, patch_size=16))  # fmt: skip
    run = distil(tmp_path, "--images", mine.train_dir, "--classes", mine.class_file,
                 "--labeled", mine.eval_dir, "--teacher", teacher, "--student", "tiny-student",
                 "--out", "out", *TINY, clip_root=tiny_clip_root, DRY_RUN="1")  # fmt: skip
    assert run.returncode == 0, run.stderr
    trains = [c for c in _dry_run_lines(run.stdout) if "train.py" in c]
    sizes = {}
    for c in trains:
        key = c[c.index("--output-dir") + 1] if "--output-dir" in c else c[c.index("--resume") + 1]
        sizes[os.path.basename(key)] = [c[i + 1] for i, a in enumerate(c) if a == "INPUT.SIZE"][-1]
    assert sizes["zeroshot_teacher"] == "(64, 64)"
    assert sizes["zeroshot_student"] == sizes["seed1"] == "(32, 32)"


def test_prompt_tuned_teacher_is_evaluated_from_the_file_promptkd_loads(tmp_path, mine):
    """DRY_RUN: the PromptSRC teacher's own lookup (best file, else newest epoch) names the
    file that is linked for its evaluation; all four rows, in the demo's order."""
    teacher = tmp_path / "teacher_run" / "VLPromptLearner"
    teacher.mkdir(parents=True)
    (teacher / "model.pth.tar-3").write_bytes(b"")
    (teacher / "model.pth.tar-20").write_bytes(b"")
    run = distil(tmp_path, "--images", mine.train_dir, "--classes", mine.class_file,
                 "--labeled", mine.eval_dir, "--teacher-ckpt", "teacher_run", "--seeds", "2 5",
                 "--out", "out", "OPTIM.MAX_EPOCH", "1", DRY_RUN="1")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
    cmds = _dry_run_lines(run.stdout)
    link = [c for c in cmds if c[0] == "ln"]
    linked = tmp_path / "out" / "eval" / "teacher_checkpoint" / "VLPromptLearner"
    assert link == [["ln", "-sfn", str(teacher / "model.pth.tar-20"),
                     str(linked / "model-best.pth.tar")]]  # fmt: skip
    trains = [c for c in cmds if "train.py" in c]
    trainers = [c[c.index("--trainer") + 1] for c in trains]
    assert trainers == ["PromptKD"] * 4 + ["ZeroshotCLIP", "PromptSRC", "ZeroshotCLIP"]
    first = trains[0]
    assert first[first.index("TRAINER.PROMPTKD.TEACHER_CKPT") + 1] == str(tmp_path / "teacher_run")
    assert first[first.index("TRAINER.PROMPTKD.TEACHER_TRAINER") + 1] == "PromptSRC"
    assert first[-2:] == ["OPTIM.MAX_EPOCH", "1"]  # the extra pairs pass through, last
    evaluation = trains[5]
    assert evaluation[evaluation.index("--model-dir") + 1] == str(
        tmp_path / "out/eval/teacher_checkpoint"
    )
    (table,) = [c for c in cmds if "scripts/demo_table.py" in c]
    assert [a.split("=")[0] for a in table if "=" in a] == [
        "zero-shot CLIP (teacher)", "PromptSRC teacher", "zero-shot CLIP (student)",
        "PromptKD student (no labels)"
    ]  # fmt: skip
    assert table[-5:] == ["--plot", str(tmp_path / "out/models.png"), "--seeds", "2", "5"]
    exports = [c for c in cmds if "scripts/export_student.py" in c]
    assert len(exports) == 2
    onnx = importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript")
    assert all((c[-1] == "--onnx") == bool(onnx) for c in exports)


@pytest.mark.parametrize(
    "args,says",
    [([], "no images folder given; pass --images DIR"),
     (["--images", "nope", "--classes", "mine/classes.txt"],
      "the images folder 'nope' does not exist or is not a folder"),
     (["--images", "mine/unlabeled"], "no class file given; pass --classes FILE"),
     (["--images", "mine/unlabeled", "--classes", "mine/none.txt"],
      "the class file 'mine/none.txt' does not exist or is not a file"),
     (["--images", "mine/unlabeled", "--classes", "mine/classes.txt", "--labeled", "x"],
      "the labeled folder 'x' does not exist"),
     (["--images", "mine/unlabeled", "--classes", "mine/classes.txt", "--teacher-ckpt", "x"],
      "the teacher checkpoint 'x' does not exist"),
     (["--images", "mine/unlabeled", "--classes", "mine/classes.txt", "--teacher-trainer",
       "PromptSRC"], "a PromptSRC teacher needs its checkpoint"),
     (["--images", "--classes", "mine/classes.txt"], "--images needs a value."),
     (["--imgs", "mine/unlabeled"], "unknown option '--imgs'."),
     (["--images", "mine/unlabeled", "--classes", "mine/classes.txt", "OPTIM.LR"],
      "the arguments after the options must be KEY VALUE pairs; got an odd number (1)"),
     (["--images", "mine/unlabeled", "--classes", "mine/classes.txt", "lr", "1"],
      "'lr' is not a config KEY")],
)  # fmt: skip
def test_bad_arguments_stop_with_one_sentence_and_write_nothing(tmp_path, mine, args, says):
    run = distil(tmp_path, *args, OUT_DIR="out")
    assert run.returncode == 2 and run.stdout == ""
    error, usage = run.stderr.splitlines()
    assert error.startswith(f"Error: {says}") and error.endswith(".")
    assert usage.startswith("Usage: bash scripts/promptkd/distil_folder.sh --images DIR")
    assert not (tmp_path / "out").exists()


def test_help_lists_every_option(tmp_path):
    run = distil(tmp_path, "--help")
    assert run.returncode == 0 and run.stderr == ""
    flags = ("--images", "--classes", "--labeled", "--teacher ", "--teacher-ckpt",
             "--teacher-trainer", "--student", "--config", "--seeds", "--out",
             "--no-onnx")  # fmt: skip
    for flag in flags:
        assert f"  {flag}" in run.stdout, flag


# ------------------------------------------------------------- demo_table.py --plot


def test_demo_table_plot_draws_every_row_side_by_side(tmp_path, capsys):
    """Three bars (base, new, HM) per row, each labelled with its mean; std as error bars."""
    rows = {"zs": {None: (50.0, 60.0)}, "kd": {1: (90.0, 66.0), 2: (94.0, 74.0)}}
    args = []
    for label, seeds in rows.items():
        for seed, (base, new) in seeds.items():
            write_run(tmp_path / label, "T", "D", seed if seed else -1, {"base": base, "new": new})
        args.append(f"{label}={tmp_path / label}")
    mod = demo_table()
    png = tmp_path / "plots" / "models.png"
    os.makedirs(png.parent)
    mod.main([*args, "--plot", str(png), "--title", "Digits"])
    assert f"Bar chart of the 2 models: {png}" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    models = [mod.model_row(label, str(tmp_path / label)) for label in rows]
    fig = mod.models_figure(models, "Digits")
    assert mod.bar_count(fig) == 6
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.texts] == ["50.0", "60.0", "54.5", "92.0", "70.0", "79.5"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["zs: ViT-B/16", "kd: ViT-B/16"]
    four = models + [models[0]._replace(label="a"), models[1]._replace(label="b")]
    assert mod.bar_count(mod.models_figure(four)) == 12


def test_demo_passes_the_plot_and_says_where_it_is(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TEACHER_CKPT", "SEEDS")}
    env.update(PYTHON=sys.executable, OUTPUT=str(tmp_path / "out"), DRY_RUN="1")
    run = subprocess.run(["bash", os.path.join(REPO, "scripts", "demo.sh"), "3"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    (table,) = [shlex.split(ln) for ln in run.stdout.splitlines() if "demo_table.py" in ln]
    png = str(tmp_path / "out" / "promptkd" / "base2new" / "digits" / "demo_models.png")
    assert table[table.index("--plot") + 1] == png and table[-2:] == ["--seeds", "3"]
    assert f"The four models side by side: {png}" in run.stdout
