"""PromptKD through train.py on Digits with tiny CLIPs: teacher -> student -> base/new/HM.

One PromptSRC teacher is trained once for the module; the student runs check the text
tower runs once, the teacher never runs at evaluation, eval-only needs no teacher, labels
are never read, official-format teacher files load, and other teachers distil.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os

import pytest
import torch

import train
from dassl_ext.config import setup_cfg
from dassl_ext.engine import TRAINER_REGISTRY, build_trainer
from dassl_ext.utils import set_random_seed
from trainers.promptkd import PromptKD

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = os.path.join(REPO, "configs", "datasets", "digits.yaml")
KD_CFG = os.path.join(REPO, "configs", "trainers", "PromptKD", "base2new", "digits.yaml")
SRC_CFG = os.path.join(
    REPO, "configs", "trainers", "PromptSRC", "vit_l14_c2_ep20_batch8_4+4ctx.yaml"
)
TINY = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "OPTIM.MAX_EPOCH", "1"]


def _sha256(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def load_script(name: str):
    """Import scripts/<name>.py as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def teacher_argv(root, clip_root, out, trainer="PromptSRC", config=SRC_CFG, *extra):
    return [
        "--root", str(root), "--seed", "1", "--trainer", trainer, "--dataset-config-file", DIGITS,
        "--config-file", config, "--output-dir", str(out), "DATASET.NUM_SHOTS", "2",
        "DATASET.SUBSAMPLE_CLASSES", "base", "MODEL.BACKBONE.NAME", "tiny-teacher",
        "MODEL.CLIP_ROOT", clip_root, "TEST.NO_TEST", "True", *TINY, *extra,
    ]  # fmt: skip


def student_argv(root, clip_root, out, teacher, *extra, flags=()):
    return [
        *flags, "--root", str(root), "--seed", "1", "--trainer", "PromptKD",
        "--dataset-config-file", DIGITS, "--config-file", KD_CFG, "--output-dir", str(out),
        "MODEL.BACKBONE.NAME", "tiny-student", "TRAINER.PROMPTKD.TEACHER_NAME", "tiny-teacher",
        "TRAINER.PROMPTKD.TEACHER_CKPT", str(teacher), "MODEL.CLIP_ROOT", clip_root,
        "DATASET.NUM_SHOTS", "2", *TINY, *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, digits_root, tiny_clip_root):
    out = tmp_path_factory.mktemp("teacher") / "promptsrc"
    assert train.main(teacher_argv(digits_root, tiny_clip_root, out)) == 0
    return out / "VLPromptLearner"


class TeacherSpy:
    """Counts the teacher's text / image forwards, and those made during evaluation."""

    def __init__(self, monkeypatch, trainer_name="PromptSRC"):
        self.built, self.text, self.image, self.during_eval = 0, 0, 0, 0
        cls = TRAINER_REGISTRY.get(trainer_name)
        build = cls.build_frozen_model
        spy = self

        def counting_build(*args, **kwargs):
            model = build(*args, **kwargs)
            text, image = model.text_features, model.image_embedding
            spy.built += 1

            def text_features(*a, **k):
                spy.text += 1
                return text(*a, **k)

            def image_embedding(*a, **k):  # what PromptKD calls (then it normalises)
                spy.image += 1
                return image(*a, **k)

            model.text_features, model.image_embedding = text_features, image_embedding
            return model

        evaluate = PromptKD.evaluate_split

        def watched_evaluate(trainer, split):
            before = spy.text + spy.image
            result = evaluate(trainer, split)
            spy.during_eval += spy.text + spy.image - before
            return result

        monkeypatch.setattr(cls, "build_frozen_model", counting_build)
        monkeypatch.setattr(PromptKD, "evaluate_split", watched_evaluate)


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, digits_root, tiny_clip_root, teacher_dir):
    """Two epochs of distillation with best_val selection; logits saved; spy counts."""
    mp = pytest.MonkeyPatch()
    spy = TeacherSpy(mp)
    out = tmp_path_factory.mktemp("kd") / "digits" / "seed1"
    argv = student_argv(digits_root, tiny_clip_root, out, teacher_dir, "OPTIM.MAX_EPOCH", "2",
                        "TEST.SAVE_LOGITS", "True")  # fmt: skip
    try:
        assert train.main(argv) == 0
    finally:
        mp.undo()
    return out, spy


def test_pipeline_reports_base_new_and_teacher_runs_once(student_run, teacher_dir, capsys):
    out, spy = student_run
    res = read_json(out / "results.json")
    assert set(res["splits"]) == {"base", "new"} and res["eval_splits"] == "base_new"
    assert res["selection"]["split"] == "val"
    # text tower: once per run; image tower: once per training step (2 epochs x 2 batches);
    # nothing of the teacher during the 2 val + base + new evaluations
    assert (spy.built, spy.text, spy.image, spy.during_eval) == (1, 1, 4, 0)
    teacher = res["teacher"]  # the teacher file and its digest, in results.json and the log
    assert os.path.dirname(teacher["checkpoint"]) == os.path.abspath(teacher_dir)
    assert teacher["checkpoint_sha256"] == _sha256(teacher["checkpoint"])
    assert teacher["clip_sha256"] == _sha256(teacher["clip_file"])
    assert f"{teacher['checkpoint_sha256']})" in (out / "log.txt").read_text()
    for split, n_classes in (("base", 5), ("new", 5)):
        logits = torch.load(out / f"logits_{split}.pt", weights_only=True)
        assert logits["logits"].shape == (res["splits"][split]["num_images"], n_classes)
        assert logits["labels"].max() < n_classes  # each split in its own label space
    from dassl_ext.reporting.aggregate import summarize

    assert summarize(str(out.parent))  # the aggregation tool reads it (base / new / HM)
    assert load_script("parse_results").main([str(out.parent)]) == 0
    assert "HM" in capsys.readouterr().out


def test_replaced_teacher_gets_new_text_features(
    digits_root, tiny_clip_root, teacher_dir, tmp_path
):
    """The text-feature cache is keyed by content: another teacher file of the same size and
    mtime (cp -p) is a miss, the same content again a hit."""
    ckpt, cache = tmp_path / "teacher.pth.tar", tmp_path / "cache"
    teacher = torch.load(teacher_dir / "model.pth.tar-1", weights_only=True)
    torch.save(teacher, ckpt)

    def build(name: str) -> str:
        opts = ("TRAINER.PROMPTKD.TEXT_CACHE_DIR", str(cache))
        argv = student_argv(digits_root, tiny_clip_root, tmp_path / name, ckpt, *opts,
                            flags=["--no-train"])  # fmt: skip
        assert train.main(argv) == 0
        return (tmp_path / name / "log.txt").read_text()

    assert "from the cache" not in build("first")
    teacher["state_dict"]["prompt_learner.ctx"] += 0.5  # other prompts, same shapes
    other = tmp_path / "new" / ckpt.name  # the name goes into the archive: keep it
    other.parent.mkdir()
    torch.save(teacher, other)
    st = os.stat(ckpt)
    assert os.path.getsize(other) == st.st_size
    with open(ckpt, "r+b") as f:  # cp -p: the same file, rewritten, its mtime put back
        f.write(other.read_bytes())
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(ckpt).st_size, os.stat(ckpt).st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    assert "from the cache" not in build("replaced")
    first, second = (torch.load(p, weights_only=True)["text_features"]
                     for p in sorted(cache.glob("*.pt"), key=os.path.getmtime))  # fmt: skip
    assert not torch.allclose(first, second)
    assert "Teacher text features from the cache" in build("again")  # same content: a hit


def test_teacher_ckpt_names_a_run_folder_or_a_student(
    student_run, digits_root, tiny_clip_root, teacher_dir, tmp_path, capsys
):
    """TEACHER_CKPT may name the teacher's run folder (its VLPromptLearner/ is used); a
    student's run, model folder or checkpoint is refused as what it is, before training."""
    argv = student_argv(digits_root, tiny_clip_root, tmp_path / "a", teacher_dir.parent,
                        "OPTIM.MAX_EPOCH", "1")  # fmt: skip
    assert train.main(argv) == 0
    assert read_json(tmp_path / "a" / "results.json")["teacher"]["checkpoint"].startswith(
        str(teacher_dir)
    )
    out, _ = student_run
    for i, student in enumerate(
        [out, out / "VLPromptLearner", out / "VLPromptLearner" / "model-best.pth.tar"]
    ):
        capsys.readouterr()
        run = tmp_path / f"b{i}"
        assert train.main(student_argv(digits_root, tiny_clip_root, run, student)) == 1
        err = capsys.readouterr().err
        assert f"TEACHER_CKPT {student} belongs to a PromptKD student run, not a teacher" in err
        assert not (run / "results.json").exists() and not (run / "VLPromptLearner").exists()


def test_eval_only_needs_no_teacher(
    student_run, digits_root, tiny_clip_root, tmp_path, monkeypatch
):
    out, _ = student_run
    spy = TeacherSpy(monkeypatch)
    argv = student_argv(digits_root, tiny_clip_root, tmp_path / "eval", tmp_path / "no-teacher",
                        flags=["--eval-only", "--model-dir", str(out)])  # fmt: skip
    assert train.main(argv) == 0
    assert spy.built == 0  # the class text features came from the student checkpoint
    trained = read_json(out / "results.json")["splits"]
    again = read_json(tmp_path / "eval" / "results.json")["splits"]
    assert set(again) == {"base", "new"}
    for split in ("base", "new"):
        assert again[split]["accuracy"] == pytest.approx(trained[split]["accuracy"])


def _train_student(argv, shuffle_labels: bool):
    cfg = setup_cfg(train.parse_args(argv))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    if shuffle_labels:
        loader, g = trainer.train_loader_x, torch.Generator().manual_seed(123)

        class Shuffled:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for batch in loader:
                    yield dict(batch, label=torch.randint(0, 10, batch["label"].shape, generator=g))

        trainer.train_loader_x = Shuffled()
    trainer.train()
    return trainer.model.state_dict()


def test_student_never_reads_labels(digits_root, tiny_clip_root, teacher_dir, tmp_path):
    extra = ("TEST.NO_TEST", "True")
    a = _train_student(
        student_argv(digits_root, tiny_clip_root, tmp_path / "a", teacher_dir, *extra), False
    )
    b = _train_student(
        student_argv(digits_root, tiny_clip_root, tmp_path / "b", teacher_dir, *extra), True
    )
    assert a.keys() == b.keys()
    tol = 1e-5 if torch.cuda.is_available() else 0.0  # CUDA kernels may reorder sums
    assert all(torch.allclose(a[k].float(), b[k].float(), rtol=0, atol=tol) for k in a)


def test_export_then_predict_agrees_with_evaluation(student_run, tmp_path, capsys):
    from PIL import Image

    from trainers.promptkd_export import ExportedStudent

    out, _ = student_run
    path = tmp_path / "student.pt"
    assert load_script("export_student").main([str(out), "-o", str(path)]) == 0
    capsys.readouterr()
    obj = torch.load(path, weights_only=True)  # tensors, strings and numbers only
    assert obj["classnames"] == ["zero", "one", "two", "three", "four", "five", "six", "seven",
                                 "eight", "nine"]  # fmt: skip
    student = ExportedStudent(str(path))
    saved = torch.load(out / "logits_new.pt", weights_only=True)  # the trainer's own test
    paths = list(saved["impaths"][:16])
    images = torch.stack([student.transform(Image.open(p).convert("RGB")) for p in paths])
    logits = student.logits(images)  # (16, 10): all classes
    # new = labels 5..9; a CUDA run evaluated in fp16, the export runs fp32 on the CPU
    tol = 0.1 if torch.cuda.is_available() else 1e-4
    assert torch.allclose(logits[:, 5:], saved["logits"][:16], atol=tol)
    assert load_script("predict").main(["-m", str(path), "--json", "--topk", "3", *paths[:4]]) == 0
    preds = json.loads(capsys.readouterr().out)
    assert [p["image"] for p in preds] == paths[:4]
    for pred, row in zip(preds, logits[:4]):
        assert len(pred["top"]) == 3 and pred["top"][0]["label"] == int(row.argmax())
        assert pred["top"][0]["prob"] == pytest.approx(float(row.softmax(0).max()), abs=1e-5)


@pytest.mark.parametrize("prec", ["bf16", "fp16", "amp"])
def test_precisions(prec, digits_root, tiny_clip_root, teacher_dir, tmp_path, cpu_fp16):
    """Frozen towers (student and teacher) in the inference dtype, trainables and class vectors
    fp32, finite loss; fp16 / amp kept on the CPU by the test-only switch, with the scaler."""
    extra = ("TRAINER.PROMPTKD.PREC", prec, "TEST.NO_TEST", "True")
    cfg = setup_cfg(
        train.parse_args(student_argv(digits_root, tiny_clip_root, tmp_path, teacher_dir, *extra))
    )
    trainer = build_trainer(cfg)
    teacher_prec = trainer.teacher_spec.precision
    assert (trainer.prec.effective, teacher_prec.effective) == (prec, prec)
    assert trainer.scaler.is_enabled() == (prec != "bf16")
    dtype = trainer.prec.weight_dtype
    assert trainer.teacher.image_encoder.conv1.weight.dtype == teacher_prec.weight_dtype
    assert trainer.model.image_encoder.conv1.weight.dtype == dtype
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    assert trainer.model.class_text_features.dtype == torch.float32
    before = trainer.model.image_encoder.VPT.detach().clone()
    batch = next(iter(trainer.train_loader_x))
    # fp16 / amp: the grad scaler skips steps until its scale stops overflowing
    skipped = 0
    while True:
        loss = trainer.forward_backward(batch)["loss"]
        assert loss == loss and abs(loss) < float("inf")
        if not torch.equal(before, trainer.model.image_encoder.VPT):
            break
        skipped += 1
        assert trainer.scaler.is_enabled() and skipped < 30
    if trainer.scaler.is_enabled():  # each skipped (overflowing) step halved the scale
        assert skipped > 0 and trainer.scaler.get_scale() == 2.0 ** (16 - skipped)


def test_official_student_file_evaluates(student_run, digits_root, tiny_clip_root, teacher_dir,
                                         tmp_path, monkeypatch):  # fmt: skip
    """A student saved by the official code (no class vectors, fp16 projector convs, a
    pickled scheduler) loads with --eval-only --model-dir; the teacher supplies the vectors."""
    out, _ = student_run
    ckpt = torch.load(out / "VLPromptLearner" / "model-best.pth.tar", weights_only=True)
    sd = {k: v for k, v in ckpt["state_dict"].items() if k != "class_text_features"}
    for k in ("VPT_image_trans.conv1.0.weight", "VPT_image_trans.conv1.3.weight"):
        sd[k] = sd[k].half()
    optim = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.005)
    scheduler = {"successor": torch.optim.lr_scheduler.CosineAnnealingLR(optim, 20)}
    official = tmp_path / "official" / "VLPromptLearner"
    official.mkdir(parents=True)
    state = {"state_dict": sd, "epoch": 1, "optimizer": optim.state_dict(),
             "scheduler": scheduler, "val_result": None}  # fmt: skip
    torch.save(state, official / "model-best.pth.tar")
    spy = TeacherSpy(monkeypatch)
    flags = ["--eval-only", "--model-dir", str(tmp_path / "official")]
    argv = student_argv(digits_root, tiny_clip_root, tmp_path / "eval", teacher_dir, flags=flags)
    assert train.main(argv) == 0
    assert (spy.built, spy.text, spy.image) == (1, 1, 0)
    trained = read_json(out / "results.json")["splits"]
    again = read_json(tmp_path / "eval" / "results.json")["splits"]
    for split in ("base", "new"):
        assert again[split]["accuracy"] == pytest.approx(trained[split]["accuracy"], abs=1.0)


XD_CFG = os.path.join(REPO, "configs", "trainers", "PromptKD", "xd.yaml")


def test_cross_mode_distils_onto_all_target_classes(
    teacher_dir, digits_root, tiny_clip_root, tmp_path, monkeypatch
):
    """MODAL cross (xd.yaml): the teacher's text features cover every class of the target,
    the student keeps its own prompt depth (3) under a depth-9 teacher, one split 'test'."""
    spy = TeacherSpy(monkeypatch)
    out = tmp_path / "xd"
    argv = student_argv(digits_root, tiny_clip_root, out, teacher_dir)
    argv[argv.index(KD_CFG)] = XD_CFG
    assert train.main(argv) == 0
    res = read_json(out / "results.json")
    assert res["eval_splits"] == "standard" and set(res["splits"]) == {"test"}
    assert (spy.built, spy.text, spy.during_eval) == (1, 1, 0)
    ckpt = torch.load(out / "VLPromptLearner" / "model.pth.tar-1", weights_only=True)
    sd = ckpt["state_dict"]
    assert sd["class_text_features"].shape[0] == 10  # all digits, not only the base half
    deep = sorted(int(k.split(".")[3]) for k in sd if k.endswith("VPT_shallow"))
    assert deep == [1, 2]  # depth 3 -> two deep prompt sets
