"""PromptKD from stored teacher views (TRAINER.PROMPTKD.STORED_VIEWS K > 0) on Digits with
tiny CLIPs: exactly the student of a live teacher on the same views, no teacher files needed
once the bank is built, keyed by what it depends on, resumable and sharded over processes."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from test_ddp import _free_port, _torchrun_env
from test_promptkd import KD_CFG, TeacherSpy, read_json, student_argv, teacher_argv

import train
from dassl_ext.config import setup_cfg
from dassl_ext.data.data_manager import build_dataset
from dassl_ext.data.splits import Datum
from dassl_ext.data.views import ReplayTransform
from dassl_ext.engine import build_trainer
from dassl_ext.errors import UserError
from dassl_ext.utils import set_random_seed
from trainers import promptkd_views
from trainers.promptkd import PromptKD
from trainers.promptkd_teacher import resolve_teacher
from trainers.promptkd_views import bank_key, prepare_bank

K = ("TRAINER.PROMPTKD.STORED_VIEWS", "2")
FP32 = ("TRAINER.PROMPTKD.PREC", "fp32", "TEST.NO_TEST", "True")


@pytest.fixture(scope="module")
def teacher_files(tmp_path_factory, digits_root, tiny_clip_root):
    """A trained teacher checkpoint and its CLIP, as files of their own (removable)."""
    tmp = tmp_path_factory.mktemp("views-teacher")
    assert train.main(teacher_argv(digits_root, tiny_clip_root, tmp / "run")) == 0
    ckpt, clip = tmp / "teacher.pth.tar", tmp / "teacher-clip.pt"
    shutil.copy(tmp / "run" / "VLPromptLearner" / "model.pth.tar-1", ckpt)
    shutil.copy(os.path.join(tiny_clip_root, "tiny-teacher.pt"), clip)
    return ckpt, clip


def views_argv(root, clip_root, out, files, *extra, flags=()):
    ckpt, clip = files
    argv = student_argv(root, clip_root, out, ckpt, "TRAINER.PROMPTKD.TEACHER_NAME", str(clip),
                        *K, *FP32, *extra, flags=flags)  # fmt: skip
    return argv


def _train(argv, live_teacher: bool = False, monkeypatch=None):
    cfg = setup_cfg(train.parse_args(argv))
    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    if live_teacher:  # the same replayed views, the teacher run on them at every step
        step = PromptKD.forward_backward

        def live(self, batch):
            self.ensure_teacher()
            return step(self, {k: v for k, v in batch.items() if k != "view_features"})

        monkeypatch.setattr(PromptKD, "forward_backward", live)
    trainer.train()
    return trainer


@pytest.mark.parametrize("teacher_prec", ["fp32", "bf16"])
def test_bank_student_equals_live_teacher_on_the_same_views(
    digits_root, tiny_clip_root, teacher_files, tmp_path, monkeypatch, teacher_prec
):
    """bf16 (CPU autocast): the embedding is stored in 2 bytes, and normalised as the live
    teacher normalises it, the student is the same."""
    spy = TeacherSpy(monkeypatch)
    argv = views_argv(digits_root, tiny_clip_root, tmp_path / "kd" / "a", teacher_files,
                      "OPTIM.MAX_EPOCH", "2", "TRAINER.PROMPTKD.TEACHER_PREC",
                      teacher_prec)  # fmt: skip
    a = _train(argv)  # builds the bank (20 images x 2 views), then trains from it
    assert a.teacher is None and a.view_bank is not None
    stored = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.teacher_spec.precision.effective]
    assert a.view_bank.features.dtype == stored
    assert spy.built == 1 and spy.image >= 1
    built = spy.image
    argv[argv.index(str(tmp_path / "kd" / "a"))] = str(tmp_path / "kd" / "b")
    b = _train(argv, live_teacher=True, monkeypatch=monkeypatch)
    assert b.view_bank.folder == a.view_bank.folder  # the same bank: not built again
    assert spy.image - built == 4  # the live teacher: 2 epochs x 2 steps
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    moved = a.model.image_encoder.VPT.detach()
    assert not torch.equal(moved, torch.zeros_like(moved))
    for key in sa:
        torch.testing.assert_close(sa[key].float(), sb[key].float(), rtol=0, atol=1e-5)


def test_bank_needs_no_teacher_files(digits_root, tiny_clip_root, teacher_files, tmp_path,
                                     monkeypatch, capsys):  # fmt: skip
    """Once the bank and the text features are stored, a student trains with the teacher's
    CLIP file and checkpoint gone: never built, their recorded digests in results.json; with
    the bank gone too, the teacher's own "not found" error."""
    ckpt, clip = (tmp_path / p.name for p in teacher_files)
    for src, dst in zip(teacher_files, (ckpt, clip)):
        shutil.copy(src, dst)
    files = (ckpt, clip)
    first = tmp_path / "kd" / "first"
    assert train.main(views_argv(digits_root, tiny_clip_root, first, files)) == 0
    teacher = read_json(first / "results.json")["teacher"]
    views = teacher["stored_views"]
    assert views["views"] == 2 and os.path.isdir(views["folder"])
    assert os.path.dirname(views["folder"]) == str(tmp_path / "kd" / "teacher_views")
    os.remove(ckpt)
    os.remove(clip)
    spy = TeacherSpy(monkeypatch)
    out = tmp_path / "kd" / "again"
    assert train.main(views_argv(digits_root, tiny_clip_root, out, files, "OPTIM.MAX_EPOCH",
                                 "2")) == 0  # fmt: skip
    assert spy.built == 0
    again = read_json(out / "results.json")["teacher"]
    assert again == teacher  # the same digests, the same bank
    assert "no longer exists: using its sha256 recorded" in (out / "log.txt").read_text()
    shutil.rmtree(views["folder"])
    out = tmp_path / "kd" / "gone"
    capsys.readouterr()
    assert train.main(views_argv(digits_root, tiny_clip_root, out, files)) == 1
    assert spy.built == 0
    err = capsys.readouterr().err  # no bank for these settings, and no teacher to build one
    assert "Error: No stored teacher views for these settings in " in err
    assert f"the teacher needed to build them is gone: Teacher checkpoint not found: {ckpt};" in err


def _key(argv) -> str:
    cfg = setup_cfg(train.parse_args(argv))
    data = build_dataset(cfg).train_x
    spec = resolve_teacher(cfg, torch.device("cpu"), [str(i) for i in range(10)])
    return bank_key(spec.identity, cfg, data, ReplayTransform.from_cfg(cfg))[0]


def test_bank_key(digits_root, tiny_clip_root, teacher_files, tmp_path):
    """What the views depend on makes a new bank; what a student run varies does not."""
    ckpt, clip = (tmp_path / p.name for p in teacher_files)
    for src, dst in zip(teacher_files, (ckpt, clip)):
        shutil.copy(src, dst)
    out = tmp_path / "kd" / "seed1"

    def key(*extra, seed="1", config=None):
        argv = views_argv(digits_root, tiny_clip_root, out, (ckpt, clip), "DATASET.NUM_SHOTS",
                          "0", *extra)  # fmt: skip  # all images (PromptKD's), whatever the seed
        argv[argv.index("--seed") + 1] = seed
        if config:
            argv[argv.index("--config-file") + 1] = config
        return _key(argv)

    base = key()
    xd = os.path.join(os.path.dirname(os.path.dirname(KD_CFG)), "xd.yaml")
    same = [
        key(seed="2"),
        key("OPTIM.LR", "0.1", "OPTIM.MAX_EPOCH", "7"),
        key("TRAINER.PROMPTKD.KD_WEIGHT", "3.0", "TRAINER.PROMPTKD.TEMPERATURE", "2.0"),
        key(config=xd),  # cross-dataset: other classes, the same images
    ]
    assert same == [base] * len(same)
    other = [
        key("TRAINER.PROMPTKD.STORED_VIEWS", "3"),
        key("TRAINER.PROMPTKD.VIEW_SEED", "2"),
        key("INPUT.TRANSFORMS", "['random_resized_crop', 'normalize']"),
        key("DATASET.NUM_SHOTS", "2"),  # another split
        key("TRAINER.PROMPTKD.PREC", "bf16"),
    ]
    ckpt_obj = torch.load(ckpt, weights_only=True)
    ckpt_obj["state_dict"]["prompt_learner.ctx"] += 0.5  # other teacher content, same path
    torch.save(ckpt_obj, ckpt)
    other.append(key())
    assert len({base, *other}) == len(other) + 1


# ---------------------------------------------------------------- building the bank
def _fake_teacher(calls: list):
    """A deterministic per-view 'teacher' (each view's channel means), counting the views."""

    def features(views: torch.Tensor) -> torch.Tensor:
        calls.append(views.shape[0])
        return views.mean(dim=(2, 3))  # (B, 3)

    return lambda: (features, 4.6052, torch.device("cpu"))


def _bank_cfg(digits_root, tiny_clip_root, folder):
    argv = student_argv(digits_root, tiny_clip_root, folder / "run", "unused", *K,
                        "TRAINER.PROMPTKD.VIEW_CACHE_DIR", str(folder))  # fmt: skip
    cfg = setup_cfg(train.parse_args(argv))
    return cfg, build_dataset(cfg).train_x


IDENTITY = {"teacher": "fake"}


def test_killed_build_resumes(digits_root, tiny_clip_root, tmp_path, monkeypatch):
    monkeypatch.setattr(promptkd_views, "SHARD_IMAGES", 4)  # 20 images: 5 shards
    cfg, data = _bank_cfg(digits_root, tiny_clip_root, tmp_path)
    calls: list[int] = []
    features, scale, device = _fake_teacher(calls)()

    def dying(views):
        if sum(calls) > 16:  # the dtype probe (1 view) and two shards of 4 images x 2 views
            raise KeyboardInterrupt
        return features(views)

    with pytest.raises(KeyboardInterrupt):
        prepare_bank(cfg, IDENTITY, str(tmp_path / "text"), data, 3,
                     lambda: (dying, scale, device))  # fmt: skip
    assert sum(calls) == 1 + 16
    calls.clear()
    bank = prepare_bank(cfg, IDENTITY, str(tmp_path / "text"), data, 3,
                        _fake_teacher(calls))  # fmt: skip
    assert sum(calls) == 1 + (20 - 8) * 2  # the finished shards are not computed again
    assert bank.logit_scale == 4.6052 and bank.features.shape == (20, 2, 3)
    calls.clear()
    again = prepare_bank(cfg, IDENTITY, str(tmp_path / "text"), data, 3,
                         _fake_teacher(calls))  # fmt: skip
    assert calls == [] and again.folder == bank.folder  # complete: no teacher asked for


def _build_in_group(digits_root, tiny_clip_root, folder) -> None:
    dist.init_process_group("gloo")
    try:
        cfg, data = _bank_cfg(digits_root, tiny_clip_root, folder)
        prepare_bank(cfg, IDENTITY, str(folder / "text"), data, 3, _fake_teacher([]))
    finally:
        dist.destroy_process_group()


def _spawned_build(rank, world_size, port, *args) -> None:
    os.environ.update(_torchrun_env(rank, world_size, port))
    torch.set_num_threads(1)
    train.import_plugins()
    promptkd_views.SHARD_IMAGES = 4
    _build_in_group(*args)


def test_two_processes_build_the_same_bank(digits_root, tiny_clip_root, tmp_path, monkeypatch):
    monkeypatch.setattr(promptkd_views, "SHARD_IMAGES", 4)
    one, two = tmp_path / "one", tmp_path / "two"
    cfg, data = _bank_cfg(digits_root, tiny_clip_root, one)
    single = prepare_bank(cfg, IDENTITY, str(one / "text"), data, 3, _fake_teacher([]))
    port = _free_port()
    ctx = mp.get_context("spawn")
    child = ctx.Process(target=_spawned_build,
                        args=(1, 2, port, digits_root, tiny_clip_root, two))  # fmt: skip
    child.start()
    try:
        with monkeypatch.context() as m:
            for k, v in _torchrun_env(0, 2, port).items():
                m.setenv(k, v)
            _build_in_group(digits_root, tiny_clip_root, two)
        child.join(timeout=120)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
    folder = two / os.path.basename(single.folder)
    names = sorted(f for f in os.listdir(single.folder) if f.endswith(".npy"))
    assert len(names) == 2 * 5 and names == sorted(
        f for f in os.listdir(folder) if f.endswith(".npy")
    )
    for name in names:
        with open(os.path.join(single.folder, name), "rb") as f1, open(folder / name, "rb") as f2:
            assert f1.read() == f2.read(), name


# ---------------------------------------------------------------- ahead of time: the script
def test_built_ahead_the_students_never_build_the_teacher(
    digits_root, tiny_clip_root, teacher_files, tmp_path, monkeypatch, capsys
):
    """build_teacher_views.py (what teacher_views.sh runs) stores the text features and the
    bank where the students of that experiment look: none of them builds the teacher."""
    from test_promptkd import load_script

    build = load_script("promptkd/build_teacher_views")
    argv = views_argv(digits_root, tiny_clip_root, tmp_path / "kd" / "teacher_views",
                      teacher_files)  # fmt: skip
    assert build.main(argv) == 0
    folder = capsys.readouterr().out.strip().splitlines()[-1]
    assert folder.startswith(f"Stored teacher views: {tmp_path / 'kd' / 'teacher_views'}")
    assert not os.path.exists(tmp_path / "kd" / "teacher_views" / "log.txt")
    spy = TeacherSpy(monkeypatch)
    out = tmp_path / "kd" / "seed1"  # (2-shot students: each seed its own images and bank)
    argv = views_argv(digits_root, tiny_clip_root, out, teacher_files)
    assert train.main(argv) == 0
    assert spy.built == 0
    assert folder.endswith(read_json(out / "results.json")["teacher"]["stored_views"]["folder"])
    assert build.main([*argv, "TRAINER.PROMPTKD.STORED_VIEWS", "0"]) == 1
    assert "TRAINER.PROMPTKD.STORED_VIEWS is 0" in capsys.readouterr().err


def test_teacher_views_script(tmp_path):
    """DRY_RUN: the teacher found as base2new.sh finds it, the students' config and K = 20
    unless given; NPROC=2: under torchrun."""
    from test_promptkd_scripts import put_checkpoint, run_script

    teacher = put_checkpoint(tmp_path / "teachers" / "DescribableTextures" / "VLPromptLearner")
    run = run_script("teacher_views.sh", tmp_path, "dtd")
    assert run.returncode == 0, run.stderr
    (line,) = [x for x in run.stdout.splitlines() if "build_teacher_views.py" in x]
    out = os.path.join(tmp_path, "out", "promptkd", "base2new", "dtd")
    assert f"--output-dir {out}/teacher_views" in line and "base2new/dtd.yaml" in line
    assert f"TEACHER_CKPT {teacher}" in line and "TRAINER.PROMPTKD.STORED_VIEWS 20" in line
    run = run_script("teacher_views.sh", tmp_path, "dtd", "TRAINER.PROMPTKD.STORED_VIEWS", "5",
                     NPROC="2")  # fmt: skip
    assert run.returncode == 0, run.stderr
    (line,) = [x for x in run.stdout.splitlines() if "build_teacher_views.py" in x]
    assert "torch.distributed.run" in line and "--nproc-per-node 2" in line
    assert line.endswith("TRAINER.PROMPTKD.STORED_VIEWS 5")


def test_augmentation_that_cannot_be_replayed_is_refused_before_any_work(
    digits_root, tiny_clip_root, teacher_files, tmp_path, capsys
):
    out = tmp_path / "kd" / "jitter"
    argv = views_argv(digits_root, tiny_clip_root, out, teacher_files, "INPUT.TRANSFORMS",
                      "['random_flip', 'colorjitter', 'normalize']")  # fmt: skip
    assert train.main(argv) == 1
    err = capsys.readouterr().err
    assert "Stored views replay only" in err and "'colorjitter'" in err
    assert not out.exists()  # refused before the run folder was made


def test_runs_started_together_build_the_bank_once(digits_root, tiny_clip_root, tmp_path):
    """Two runs (threads here, seeds with SEED_JOBS in practice) asking for a missing bank
    at once: one builds it, the other waits for it and asks no teacher."""
    cfg, data = _bank_cfg(digits_root, tiny_clip_root, tmp_path)
    teachers: list[str] = []
    start = threading.Barrier(2)

    def run(name: str, banks: list) -> None:
        def teacher():
            teachers.append(name)
            time.sleep(0.3)  # still building when the other run looks
            return _fake_teacher([])()

        start.wait()
        banks.append(prepare_bank(cfg, IDENTITY, str(tmp_path / "text"), data, 3, teacher))

    banks: list = []
    threads = [threading.Thread(target=run, args=(n, banks)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(teachers) == 1 and len(banks) == 2  # one build; both runs got the bank
    assert banks[0].folder == banks[1].folder


def test_a_bad_image_while_building_is_one_sentence_naming_it(
    digits_root, tiny_clip_root, tmp_path
):
    """An image too small for the random crop fails the build with the image's path, also
    from a loader worker (no worker traceback)."""
    cfg, data = _bank_cfg(digits_root, tiny_clip_root, tmp_path)
    cfg.defrost()
    cfg.INPUT.TRANSFORMS = ["random_crop", "normalize"]
    cfg.INPUT.CROP_PADDING = 0
    cfg.DATALOADER.NUM_WORKERS = 1
    small = tmp_path / "small.png"
    Image.new("RGB", (8, 8)).save(small)
    data = [data[0], Datum(impath=str(small), label=0, classname="zero")]
    with pytest.raises(UserError) as e:
        prepare_bank(cfg, IDENTITY, str(tmp_path / "text"), data, 3, _fake_teacher([]))
    message = str(e.value)
    assert message.startswith(f"Image {small}: ") and "Traceback" not in message


def test_an_open_clip_teachers_weights_file_gone_is_found_by_its_recorded_digest(
    digits_root, tiny_clip_root, tmp_path
):
    """A zero-shot open_clip teacher named with a weights file: once its digest is recorded,
    the file may go (stored views stand in for it), as for an OpenAI teacher's file."""
    pytest.importorskip("open_clip")
    from test_openclip import TINY_VIT, write_model

    name = write_model(tmp_path, "oc-teacher", TINY_VIT)
    weights = name.split(":")[2]
    opts = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP", "TRAINER.PROMPTKD.TEACHER_NAME",
            name, "TRAINER.PROMPTKD.TEXT_CACHE_DIR", str(tmp_path / "text"), *K)  # fmt: skip
    argv = student_argv(digits_root, tiny_clip_root, tmp_path / "run", "", *opts)
    cfg = setup_cfg(train.parse_args(argv))
    cpu = torch.device("cpu")
    present = resolve_teacher(cfg, cpu, ["a", "b"])
    os.remove(weights)
    gone = resolve_teacher(cfg, cpu, ["a", "b"])
    assert gone.clip_sha256 == present.clip_sha256 and gone.cache_key == present.cache_key
    assert gone.clip_file == os.path.abspath(weights) and gone.missing
