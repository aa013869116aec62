"""scripts/predict.py with hostile inputs: each unusable input is one line on stderr and the
others are still classified (exit 1 if any was skipped); a bad -m file, --device or output is
one sentence, never a traceback. A tiny student is exported once (no training)."""

from __future__ import annotations

import builtins
import errno
import importlib.util
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from export_fixtures import write_tiny_export
from PIL import Image

import trainers  # noqa: F401  (registers the trainers and their config sections)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["cat", "dog", "bird"]


def _load_predict():
    spec = importlib.util.spec_from_file_location(
        "predict", os.path.join(REPO, "scripts", "predict.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


predict = _load_predict()


@pytest.fixture(autouse=True)
def no_train_log_handlers():
    """predict.py sets up no logging; drop the console handlers an earlier train.main in
    this process left on the root logger (they write to a closed captured stream)."""
    import logging

    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_dassl_ext", False)]:
        root.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> str:
    """A 3-class export of an untrained tiny student (32 px)."""
    return write_tiny_export(str(tmp_path_factory.mktemp("export") / "student.pt"), CLASSES)


@pytest.fixture
def good(tmp_path) -> str:
    rng = np.random.default_rng(0)
    path = str(tmp_path / "good.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    return path


def run(capsys, *argv: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, stderr lines) of predict.main(argv)."""
    rc = predict.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err.splitlines()


def _bomb_png(path: str, side: int = 20_000) -> None:
    """A PNG whose header claims side x side pixels (over PIL's decompression-bomb limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")))
        f.write(chunk(b"IEND", b""))


def _make_bad(kind: str, tmp_path, good: str) -> tuple[str, str]:
    """(the argument, the words its stderr line must hold)."""
    p = str(tmp_path / f"bad_{kind}")
    if kind == "empty":
        open(p + ".png", "wb").close()
        return p + ".png", "is empty (0 bytes)"
    if kind == "not-an-image":
        with open(p + ".jpg", "w") as f:
            f.write("hello, I am text")
        return p + ".jpg", "is not a readable image"
    if kind == "truncated-jpeg":
        Image.open(good).save(p + ".jpg", quality=95)
        with open(p + ".jpg", "rb") as f:
            data = f.read()
        with open(p + ".jpg", "wb") as f:
            f.write(data[: len(data) // 2])
        return p + ".jpg", "is not a readable image"
    if kind == "folder-without-images":
        os.makedirs(p)
        with open(os.path.join(p, "notes.txt"), "w") as f:
            f.write("no images here")
        return p, "is a folder with no images"
    if kind == "missing":
        return p + ".png", "does not exist"
    if kind == "glob-matching-nothing":
        return str(tmp_path / "*.nomatch"), "matches no file"
    if kind == "decompression-bomb":
        _bomb_png(p + ".png")
        return p + ".png", "is too large to decode safely"
    raise AssertionError(kind)


BAD_KINDS = ["empty", "not-an-image", "truncated-jpeg", "folder-without-images", "missing",
             "glob-matching-nothing", "decompression-bomb"]  # fmt: skip


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_an_unusable_input_is_named_and_the_others_are_classified(
    kind, student, good, tmp_path, capsys
):
    bad, words = _make_bad(kind, tmp_path, good)
    rc, out, err = run(capsys, "-m", student, good, bad, good)
    assert rc == 1
    assert out.splitlines()[0].startswith(f"{good}: ") and len(out.splitlines()) == 2
    skipped = [line for line in err if line.startswith("Skipped: ")]
    assert skipped == [line for line in skipped if bad in line and words in line]
    assert len(skipped) == 1
    assert err[-1] == "1 input(s) skipped (named above); 2 image(s) classified."


def test_all_good_inputs_exit_0_and_json_lists_them(student, good, capsys):
    rc, out, err = run(capsys, "-m", student, "--json", good, os.path.dirname(good))
    assert rc == 0 and err == []
    preds = json.loads(out)
    assert [p["image"] for p in preds] == [good, good]
    assert {t["class"] for t in preds[0]["top"]} == set(CLASSES)  # 3 classes: all of them


def test_unreadable_file_is_named(student, good, tmp_path, monkeypatch, capsys):
    """No read permission. root reads any file, so as root the open itself is made to fail
    with EACCES (what the kernel returns to other users)."""
    locked = str(tmp_path / "locked.png")
    Image.open(good).save(locked)
    os.chmod(locked, 0)
    if os.geteuid() == 0:
        real_open = builtins.open

        def no_permission(file, *args, **kwargs):
            if os.fspath(file) == locked if isinstance(file, (str, os.PathLike)) else False:
                raise PermissionError(errno.EACCES, "Permission denied", locked)
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", no_permission)
    rc, out, err = run(capsys, "-m", student, locked, good)
    assert rc == 1 and out.startswith(f"{good}: ")
    assert f"Skipped: {locked} cannot be read (permission denied); make it readable." in err


def test_odd_image_modes_are_classified_with_their_full_range(student, tmp_path, capsys):
    """16-bit PNG (read as value >> 8, not clipped to black and white), CMYK JPEG, palette
    with transparency, grey + alpha, 1x1 pixel, a 1:300 strip: all classified, no noise."""
    ramp = (np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) * 28).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "sixteen.png")
    Image.fromarray((ramp >> 8).astype(np.uint8)).convert("RGB").save(tmp_path / "eight.png")
    Image.new("CMYK", (40, 40), (0, 120, 40, 0)).save(tmp_path / "cmyk.jpg")
    pal = Image.new("P", (40, 40))
    pal.putpalette([0, 0, 0, 255, 0, 0] * 128)
    pal.save(tmp_path / "palette.png", transparency=0)
    Image.new("LA", (40, 40), (90, 128)).save(tmp_path / "grey_alpha.png")
    Image.new("RGB", (1, 1), (1, 2, 3)).save(tmp_path / "one_pixel.png")
    Image.new("RGB", (300, 1), (9, 9, 9)).save(tmp_path / "strip.png")
    rc, out, err = run(capsys, "-m", student, "--json", str(tmp_path))
    assert rc == 0 and err == []
    preds = {os.path.basename(p["image"]): p["top"] for p in json.loads(out)}
    assert len(preds) == 7

    def probs(name: str) -> list[float]:
        return [t["prob"] for t in sorted(preds[name], key=lambda t: t["label"])]

    assert probs("sixteen.png") == pytest.approx(probs("eight.png"), abs=1e-7, rel=0)
    # what PIL's convert("RGB") makes of it (clipped at 255): the test can tell them apart
    Image.open(tmp_path / "sixteen.png").convert("RGB").save(tmp_path / "clipped.png")
    _, out, _ = run(capsys, "-m", student, "--json", str(tmp_path / "clipped.png"))
    preds["clipped.png"] = json.loads(out)[0]["top"]
    assert probs("clipped.png") != pytest.approx(probs("eight.png"), abs=1e-7, rel=0)


def test_topk(student, good, capsys):
    rc, out, err = run(capsys, "-m", student, "--topk", "10", good)
    assert rc == 0 and out.count("%") == 3
    assert err == [
        f"Note: --topk 10 is more than the 3 classes of {student}; all of them are shown."
    ]
    rc, out, err = run(capsys, "-m", student, "--topk", "1", good)
    assert rc == 0 and out.count("%") == 1
    with pytest.raises(SystemExit) as e:
        predict.main(["-m", student, "--topk", "0", good])
    assert e.value.code == 2 and "'0' is not an integer >= 1" in capsys.readouterr().err


def _not_exports(tmp_path, student: str) -> dict[str, tuple[str, str]]:
    """-m files that are not an export: (path, words of the sentence)."""
    files = {
        "training-checkpoint": ({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, "it is a training checkpoint (epoch 3); export its run with python scripts/export_student.py RUN_DIR"),  # noqa: E501
        "list": ([1, 2, 3], "it holds a list"),
        "tensor": (torch.zeros(3), "it holds a Tensor"),
        "dict": ({"weights": torch.zeros(3)}, "it holds a dict without a format key"),
        "clip-weights": ({"text_projection": torch.zeros(2, 2)}, "it holds CLIP weights"),
        "future-format": ({"format": "promptkd-student/9"}, "its format is 'promptkd-student/9'"),
    }  # fmt: skip
    cases = {}
    for name, (obj, words) in files.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        cases[name] = (str(tmp_path / f"{name}.pt"), f"is not a PromptKD student export: {words}")
    damaged = torch.load(student, weights_only=True)
    del damaged["state_dict"]["image_encoder.proj"]
    torch.save(damaged, tmp_path / "damaged.pt")
    cases["damaged"] = (str(tmp_path / "damaged.pt"), "is a damaged PromptKD student export")
    cases["folder"] = (str(tmp_path), "is a folder, not a student export")
    cases["missing"] = (str(tmp_path / "nope.pt"), "does not exist; write it with python")
    with open(tmp_path / "image.pt", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not a torch file")
    cases["not-torch"] = (str(tmp_path / "image.pt"), "is truncated or corrupt")
    return cases


def test_a_model_file_that_is_not_an_export_is_one_sentence(student, good, tmp_path, capsys):
    for name, (path, words) in _not_exports(tmp_path, student).items():
        rc, out, err = run(capsys, "-m", path, good)
        assert rc == 1 and out == "", name
        assert len(err) == 1 and err[0].startswith("Error: ") and words in err[0], (name, err)
        assert path in err[0], name


def test_bad_device_is_one_sentence(student, good, capsys):
    rc, _, err = run(capsys, "-m", student, "--device", "gpu0", good)
    assert rc == 1 and err == ["Error: --device gpu0 is not a torch device; use cpu, cuda or cuda:<index>."]  # fmt: skip # noqa: E501
    if not torch.cuda.is_available():
        rc, _, err = run(capsys, "-m", student, "--device", "cuda", good)
        assert rc == 1 and err[0].startswith("Error: --device cuda: this machine has 0 CUDA")


def test_output_that_cannot_be_written_is_one_sentence(student, good, monkeypatch, capsys):
    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sys.stdout", FullDisk())
    rc = predict.main(["-m", student, good])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.splitlines() == [
        "Error: Cannot write the predictions to standard output (No space left on device)."
    ]


def test_a_batch_that_does_not_fit_in_memory_names_batch_size(student, good, monkeypatch, capsys):
    from trainers.promptkd_export import ExportedStudent

    def no_memory(self, images):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 9 GB")

    monkeypatch.setattr(ExportedStudent, "logits", no_memory)
    rc, out, err = run(capsys, "-m", student, "--batch-size", "8", good, good, good)
    assert rc == 1 and out == ""
    assert err == [
        "Error: Classifying a batch of 3 images ran out of memory (RuntimeError); use a "
        "smaller --batch-size, e.g. 1."
    ]
