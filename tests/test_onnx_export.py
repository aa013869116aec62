"""The student as an ONNX model (trainers/promptkd_onnx.py): it agrees with the PyTorch export
(probabilities within 1e-4 in fp32, batch sizes 1 and 5 from one file), on a tiny student, on
the packaged stand-ins and from a PromptKD run folder; its metadata describes it; predict.py
reads it as it reads student.pt; a file that is not a student ONNX model, or a missing
onnxruntime, is one sentence."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

import trainers  # noqa: E402, F401  (registers the trainers and their config sections)
from dassl_ext.config.setup import apply_config_extensions, get_cfg_default  # noqa: E402
from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.modeling import PromptedImageEncoder, clip, load_clip  # noqa: E402
from trainers.promptkd_export import ExportedStudent, export_student  # noqa: E402
from trainers.promptkd_onnx import (  # noqa: E402
    ONNX_FORMAT,
    OnnxStudent,
    export_onnx,
    onnx_path_for,
    open_student,
)
from trainers.promptkd_student import PromptKDStudent  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_script, predict = _script("export_student"), _script("predict")


def _write_export(folder, visual, n_ctx, depth, teacher_dim, classnames, size, seed) -> str:
    torch.manual_seed(seed)
    encoder = PromptedImageEncoder(visual, n_ctx, depth)
    model = PromptKDStudent(encoder, torch.tensor(4.6), encoder.output_dim, teacher_dim)
    model.VPT_image_trans.conv1[1].running_mean.normal_()  # BN statistics that matter
    model.set_class_text_features(F.normalize(torch.randn(len(classnames), teacher_dim), dim=-1))
    cfg = apply_config_extensions(get_cfg_default())
    cfg.INPUT.SIZE = (size, size)
    cfg.INPUT.INTERPOLATION = "bicubic"  # as the prompt-learning configs
    cfg.INPUT.PIXEL_MEAN = [0.48145466, 0.4578275, 0.40821073]
    cfg.INPUT.PIXEL_STD = [0.26862954, 0.26130258, 0.27577711]
    cfg.INPUT.TRANSFORMS = ["random_resized_crop", "random_flip", "normalize"]
    path = str(folder / "student.pt")
    export_student(SimpleNamespace(model=model.eval(), classnames=classnames, cfg=cfg), path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[str, str]:
    """(student.pt, student.onnx) of a 3-class tiny student with random weights (32 px)."""
    folder = tmp_path_factory.mktemp("tiny")
    visual = clip.model.VisionTransformer(32, 8, 64, 2, 1, 32)
    pt = _write_export(folder, visual, 2, 2, 48, ["cat", "dog", "bird"], 32, seed=0)
    export_onnx(pt, onnx_path_for(pt))
    return pt, onnx_path_for(pt)


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> tuple[str, str]:
    """(student.pt, student.onnx) of the packaged digits-student with the demo's prompts
    (4 x depth 4) and a projector to the digits-teacher's width (64), 10 classes."""
    folder = tmp_path_factory.mktemp("standin")
    visual = load_clip("digits-student", str(folder)).visual.float()
    pt = _write_export(folder, visual, 4, 4, 64, DIGITS, 32, seed=1)
    assert export_script.main([pt, "--onnx"]) == 0  # an existing export -> student.onnx
    return pt, onnx_path_for(pt)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("which", ["tiny", "standin"])
def test_onnx_agrees_with_pytorch_at_batch_1_and_5(which, request):
    pt, path = request.getfixturevalue(which)
    torch_student, onnx_student = ExportedStudent(pt), OnnxStudent(path)
    assert onnx_student.classnames == torch_student.classnames
    for batch in (1, 5):  # one file: the batch size is dynamic
        x = _images(batch, 32, seed=batch)
        ref = torch_student.logits(x)
        got = onnx_student.logits(x)
        assert got.shape == ref.shape == (batch, len(torch_student.classnames))
        probs = onnx_student.probabilities(x)  # the model's own softmax output
        assert (probs - F.softmax(ref, dim=1)).abs().max() <= 1e-4
        assert (F.softmax(got, dim=1) - F.softmax(ref, dim=1)).abs().max() <= 1e-4
        assert not torch.allclose(ref[0], ref[0].mean())  # the classes are told apart
    assert isinstance(open_student(path), OnnxStudent)
    assert not isinstance(open_student(pt), OnnxStudent)


def test_metadata_describes_the_model(standin):
    pt, path = standin
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    export = torch.load(pt, weights_only=True)
    assert meta["format"] == ONNX_FORMAT and meta["student_format"] == export["format"]
    assert json.loads(meta["classnames"]) == DIGITS
    assert json.loads(meta["preprocess"]) == export["preprocess"]
    assert json.loads(meta["architecture"]) == export["architecture"]
    pre = export["preprocess"]
    interpolation, mean = pre["INTERPOLATION"], pre["PIXEL_MEAN"]
    assert f"shorter side to 32 ({interpolation}); center crop 32x32" in meta["preprocessing"]
    assert f"subtract mean {list(mean)}" in meta["preprocessing"]
    assert "subtract mean [0.48145466, 0.4578275, 0.40821073]" in meta["preprocessing"]
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]  # dynamic N
    assert [o.name for o in model.graph.output] == ["probs", "logits"]
    assert {op.domain: op.version for op in model.opset_import}[""] == 18
    features = export["state_dict"]["class_text_features"].numpy()  # (10, 64)
    constants = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer]
    assert any(c.shape == features.T.shape and np.allclose(c, features.T) for c in constants)


def _preprocess_with_numpy(path: str, meta: dict) -> np.ndarray:
    """The README's recipe: the preprocessing the metadata states, with PIL and numpy only."""
    pre = json.loads(meta["preprocess"])
    h, w = pre["SIZE"]
    image = Image.open(path).convert("RGB")
    side, (width, height) = max(h, w), image.size  # the shorter side becomes max(SIZE)
    size = (
        (side, int(side * height / width))
        if width <= height
        else (int(side * width / height), side)
    )
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[pre["INTERPOLATION"]]
    image = image.resize(size, resample)
    left, top = round((image.width - w) / 2), round((image.height - h) / 2)
    x = np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.float32) / 255
    x = (x - np.array(pre["PIXEL_MEAN"], np.float32)) / np.array(pre["PIXEL_STD"], np.float32)
    return x.transpose(2, 0, 1)[None]  # (1, 3, H, W)


def test_onnxruntime_alone_with_the_metadata(standin, tmp_path):
    """Everything onnxruntime needs is in the file: its metadata's preprocessing, done with
    PIL and numpy, gives the probabilities predict.py gives."""
    import onnxruntime as ort

    _, path = standin
    image = str(tmp_path / "digit.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    probs = session.run(["probs"], {"image": _preprocess_with_numpy(image, meta)})[0][0]
    student = OnnxStudent(path)
    (pred,) = student.predict([image], topk=10)
    by_label = sorted(pred["top"], key=lambda t: t["label"])
    assert np.abs(probs - [t["prob"] for t in by_label]).max() <= 1e-4
    assert json.loads(meta["classnames"])[int(probs.argmax())] == pred["top"][0]["class"]


def _run(capsys, *argv: str) -> tuple[int, str, list[str]]:
    rc = predict.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err.splitlines()


def test_predict_on_onnx_goes_on_past_a_broken_file_as_on_pt(standin, tmp_path, capsys):
    pt, path = standin
    rng = np.random.default_rng(1)
    images = []
    for i in range(3):
        images.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images[-1])
    broken = str(tmp_path / "broken.jpg")
    with open(broken, "w") as f:
        f.write("not an image")
    argv = ["--json", "--topk", "3", "--batch-size", "2", images[0], broken, *images[1:]]
    results = {}
    for model in (pt, path):
        rc, out, err = _run(capsys, "-m", model, *argv)
        assert rc == 1
        assert err == [
            f"Skipped: {broken} is not a readable image (cannot identify image file '{broken}').",
            "1 input(s) skipped (named above); 3 image(s) classified.",
        ]
        results[model] = json.loads(out)
    assert [r["image"] for r in results[path]] == images
    for a, b in zip(results[pt], results[path]):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert np.allclose([t["prob"] for t in a["top"]], [t["prob"] for t in b["top"]], atol=1e-4)
    rc, out, _ = _run(capsys, "-m", path, images[0])  # the text format
    assert rc == 0 and out.startswith(f"{images[0]}: ") and out.count("%") == 5


def _bad_onnx_files(tmp_path, tiny) -> dict[str, tuple[str, str]]:
    """-m files ending .onnx that are not a student ONNX model: (path, words)."""
    from onnx import TensorProto, helper

    pt, good = tiny
    cases = {}
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(foreign, tmp_path / "foreign.onnx")
    cases["foreign"] = (
        "foreign.onnx",
        "is an ONNX model but not a PromptKD student export (its metadata has no format",
    )
    with open(good, "rb") as f:
        data = f.read()
    with open(tmp_path / "truncated.onnx", "wb") as f:
        f.write(data[: len(data) // 2])
    cases["truncated"] = ("truncated.onnx", "is not a readable ONNX model (")
    with open(tmp_path / "text.onnx", "w") as f:
        f.write("hello, I am text\n")
    cases["text"] = ("text.onnx", "is not a readable ONNX model (")
    with open(pt, "rb") as f, open(tmp_path / "torch.onnx", "wb") as g:
        g.write(f.read())
    cases["torch-file"] = ("torch.onnx", "(it is a PyTorch file; name it .pt)")
    damaged = onnx.load(good)
    for prop in damaged.metadata_props:
        if prop.key == "classnames":
            prop.value = json.dumps(["cat", "dog"])
    onnx.save(damaged, tmp_path / "damaged.onnx")
    cases["damaged"] = ("damaged.onnx", "is a damaged PromptKD student ONNX model (ValueError: 2")
    os.makedirs(tmp_path / "folder.onnx")
    cases["folder"] = ("folder.onnx", "is a folder, not a student ONNX model")
    cases["missing"] = ("missing.onnx", "does not exist; write it with python")
    return {k: (str(tmp_path / name), words) for k, (name, words) in cases.items()}


def test_a_file_that_is_not_a_student_onnx_model_is_one_sentence(tiny, tmp_path, capsys):
    image = str(tmp_path / "good.png")
    Image.new("RGB", (32, 32), (10, 200, 30)).save(image)
    for name, (path, words) in _bad_onnx_files(tmp_path, tiny).items():
        rc, out, err = _run(capsys, "-m", path, image)
        assert rc == 1 and out == "", name
        assert len(err) == 1 and err[0].startswith("Error: ") and words in err[0], (name, err)
        assert path in err[0], name
    rc, _, err = _run(capsys, "-m", tiny[1], "--device", "tpu", image)
    assert rc == 1 and err == [
        "Error: --device tpu is not a device onnxruntime knows; use cpu, cuda or cuda:<index>."
    ]


def test_missing_packages_are_one_sentence(tiny, tmp_path, monkeypatch, capsys):
    pt, path = tiny
    image = str(tmp_path / "good.png")
    Image.new("RGB", (32, 32)).save(image)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    rc, out, err = _run(capsys, "-m", path, image)
    assert rc == 1 and out == ""
    assert err == [
        f"Error: Reading {path} needs the Python package onnxruntime, which is not installed "
        'here; install the ONNX extra with pip install -e ".[onnx]".'
    ]
    assert _run(capsys, "-m", pt, image)[0] == 0  # student.pt needs none of it
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    target = str(tmp_path / "student.pt")
    os.link(pt, target)
    assert export_script.main([target, "--onnx"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "Writing an ONNX model needs the Python package onnxscript" in err[0]
    assert not os.path.exists(onnx_path_for(target))


def test_a_disagreeing_model_is_not_written(tiny, tmp_path, monkeypatch):
    """The check after writing: a model whose probabilities differ is a UserError and leaves
    no file (the exporter is replaced by a copy of the good file, checked as written)."""
    import shutil

    import trainers.promptkd_onnx as promptkd_onnx
    from dassl_ext.utils.atomic import atomic_write

    pt, good = tiny

    def copy_of_good(model, example, path, metadata, opset, check):
        return atomic_write(path, lambda tmp: (shutil.copy(good, tmp), check(tmp)))

    monkeypatch.setattr(promptkd_onnx, "write_onnx", copy_of_good)
    target = str(tmp_path / "student.onnx")
    assert promptkd_onnx.export_onnx(pt, target) <= 1e-4  # the good file passes
    os.remove(target)
    monkeypatch.setattr(promptkd_onnx, "TOLERANCE", -1.0)  # any difference is too large
    with pytest.raises(UserError, match=r"disagrees with PyTorch .* was not written"):
        promptkd_onnx.export_onnx(pt, target)
    assert os.listdir(tmp_path) == []  # no file, no temporary file left


def test_export_of_a_run_folder_writes_both_files(digits_root, tiny_clip_root, tmp_path, capsys):
    """``export_student.py RUN_DIR --onnx`` on a 1-epoch PromptKD run of the tiny teacher and
    a 2-layer tiny student (prompts in both layers): student.pt and student.onnx side by side,
    agreeing on real Digits images. The ONNX export's time grows with the layers traced (the
    12-layer tiny-student took most of this test); the 2-layer export is checked here too."""
    import train
    from dassl_ext.modeling import TinyClipSpec, save_tiny_clip
    from tests.test_promptkd import student_argv

    student = str(tmp_path / "tiny-student-2-layers.pt")
    save_tiny_clip(student, TinyClipSpec(embed_dim=32, vision_width=96, text_width=64,
                                         vision_layers=2, text_layers=2, seed=2))  # fmt: skip
    out = tmp_path / "run"
    extra = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP", "TEST.NO_TEST", "True",
             "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "1", "USE_CUDA", "False",
             "MODEL.BACKBONE.NAME", student,
             "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "2")  # fmt: skip
    assert train.main(student_argv(digits_root, tiny_clip_root, out, "", *extra)) == 0
    capsys.readouterr()
    assert export_script.main([str(out), "--onnx"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Wrote")]
    pt, path = out / "student.pt", out / "student.onnx"
    assert lines[0].startswith(f"Wrote {pt} (10 classes)")
    assert lines[1].startswith(f"Wrote {path} (agrees with {pt}: largest probability difference")
    torch_student, onnx_student = ExportedStudent(str(pt)), open_student(str(path))
    assert onnx_student.classnames == torch_student.classnames == DIGITS
    files = sorted(str(p) for p in (digits_root / "digits").rglob("*.png"))[:5]
    assert len(files) == 5
    x = torch.stack([torch_student.load_image(p) for p in files])
    diff = F.softmax(onnx_student.logits(x), 1) - F.softmax(torch_student.logits(x), 1)
    assert diff.abs().max() <= 1e-4


def test_a_student_on_an_open_clip_backbone_exports_its_gelu_and_mlp_width(tmp_path):
    """A student whose backbone has nn.GELU and an MLP of 3 x width (an open_clip ViT, loaded
    into the project's CLIP) comes back from its export with both: the same logits (before,
    the reload used QuickGELU silently, and failed on the MLP's shape)."""
    visual = clip.model.VisionTransformer(32, 8, 64, 2, 1, 32)
    for block in visual.transformer.resblocks:
        block.mlp.gelu = torch.nn.GELU()
        block.mlp.c_fc, block.mlp.c_proj = torch.nn.Linear(64, 192), torch.nn.Linear(192, 64)
    fresh = copy.deepcopy(visual)  # the export prompts its own copy
    path = _write_export(tmp_path, visual, 2, 2, 48, ["cat", "dog", "bird"], 32, seed=0)
    saved = torch.load(path, weights_only=True)
    assert saved["architecture"]["activation"] == "gelu"
    assert saved["architecture"]["mlp_width"] == 192
    loaded = ExportedStudent(path).model.eval()
    block = loaded.image_encoder.transformer.resblocks[0]
    assert isinstance(block.mlp.gelu, torch.nn.GELU) and block.mlp.c_fc.out_features == 192
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    original = PromptKDStudent(PromptedImageEncoder(fresh, 2, 2), torch.tensor(4.6), 32, 48)
    original.load_state_dict(saved["state_dict"])
    with torch.no_grad():
        feats = loaded.class_text_features
        torch.testing.assert_close(loaded.eval()(images, feats), original.eval()(images, feats))
