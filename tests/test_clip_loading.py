"""CLIP weights: file names, folders, tiny models, both file formats, offline errors."""

import os
import urllib.error
import warnings
from types import SimpleNamespace

import pytest
import torch

from dassl_ext.errors import UserError
from dassl_ext.modeling import (
    TINY_SPECS,
    PromptedImageEncoder,
    PromptedTextEncoder,
    build_tiny_clip,
    clip,
    clip_filename,
    clip_root_from_cfg,
    clip_search_dirs,
    load_clip,
    loading,
)


@pytest.fixture
def no_default_dirs(monkeypatch, tmp_path):
    """Keep the user's CLIP_ROOT and ~/.cache/clip out of the search."""
    monkeypatch.delenv("CLIP_ROOT", raising=False)
    monkeypatch.setattr(loading, "OPENAI_CACHE", str(tmp_path / "openai-cache"))
    return str(tmp_path / "openai-cache")


@pytest.mark.parametrize(
    "name, filename",
    [
        ("ViT-B/16", "ViT-B-16.pt"),
        ("ViT-B/32", "ViT-B-32.pt"),
        ("ViT-L/14", "ViT-L-14.pt"),
        ("ViT-L/14@336px", "ViT-L-14-336px.pt"),
        ("RN50", "RN50.pt"),
        ("RN50x4", "RN50x4.pt"),
        ("tiny-student", "tiny-student.pt"),
        ("my/model.pt", "my/model.pt"),
    ],
)
def test_clip_filename(name, filename):
    assert clip_filename(name) == filename


def test_search_dirs_order(monkeypatch, tmp_path, no_default_dirs):
    monkeypatch.setenv("CLIP_ROOT", str(tmp_path / "env"))
    assert clip_search_dirs(str(tmp_path / "arg")) == [
        str(tmp_path / "arg"),
        str(tmp_path / "env"),
        no_default_dirs,
    ]
    cfg = SimpleNamespace(MODEL=SimpleNamespace(CLIP_ROOT=""))
    assert clip_root_from_cfg(cfg) == str(tmp_path / "env")
    cfg.MODEL.CLIP_ROOT = str(tmp_path / "cfg")
    assert clip_root_from_cfg(cfg) == str(tmp_path / "cfg")
    monkeypatch.delenv("CLIP_ROOT")
    assert clip_search_dirs() == [no_default_dirs]


def test_tiny_specs_deterministic_and_usable(tiny_clip_root):
    for name, spec in TINY_SPECS.items():
        path = os.path.join(tiny_clip_root, f"{name}.pt")
        saved = torch.load(path, weights_only=True)
        built = build_tiny_clip(name)
        assert saved.keys() == built.keys()
        assert all(torch.equal(saved[k], built[k]) for k in saved)
        model = load_clip(name, tiny_clip_root)
        assert len(model.visual.transformer.resblocks) >= 12
        assert len(model.transformer.resblocks) >= 12
        assert model.visual.input_resolution == 32 and model.context_length == 77
        assert model.text_projection.shape == (spec.text_width, spec.embed_dim)
        assert model.visual.conv1.weight.dtype == torch.float32 and not model.training
        prompts = [f"a photo of the digit {d}." for d in ("zero", "one", "two", "three")]
        with torch.no_grad():
            txt = model.encode_text(clip.tokenize(prompts))
            img = model.encode_image(torch.rand(4, 3, 32, 32))
        # Random but not degenerate: distinct inputs give distinct features.
        for f in (txt, img):
            f = f / f.norm(dim=-1, keepdim=True)
            assert torch.isfinite(f).all()
            assert (f @ f.T).triu(1).max() < 0.98
    other = build_tiny_clip("tiny-student", seed=123)
    assert not torch.equal(other["visual.proj"], saved["visual.proj"])
    t, s = TINY_SPECS["tiny-teacher"], TINY_SPECS["tiny-student"]
    assert t.vision_width > s.vision_width and t.embed_dim != s.embed_dim


def test_tiny_written_when_missing(tmp_path, no_default_dirs):
    model = load_clip("tiny-student", str(tmp_path))
    assert os.listdir(tmp_path) == ["tiny-student.pt"]  # atomic write leaves no temp file
    again = load_clip("tiny-student", str(tmp_path))
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())
    )


def test_stale_tiny_file_is_rebuilt(tmp_path, no_default_dirs):
    """A tiny file written by an older spec (other widths) is replaced, not used."""
    from dassl_ext.modeling.tiny import TinyClipSpec, save_tiny_clip

    path = tmp_path / "tiny-teacher.pt"
    save_tiny_clip(str(path), TinyClipSpec(embed_dim=48, vision_width=128, text_width=128))
    model = load_clip("tiny-teacher", str(tmp_path))
    spec = TINY_SPECS["tiny-teacher"]
    assert tuple(model.text_projection.shape) == (spec.text_width, spec.embed_dim)
    reread = torch.load(path, weights_only=True)
    assert tuple(reread["text_projection"].shape) == (spec.text_width, spec.embed_dim)


@pytest.mark.parametrize("content", [torch.zeros(3), [1, 2]])
def test_tiny_file_that_is_not_a_state_dict_is_rebuilt(tmp_path, no_default_dirs, content):
    path = tmp_path / "tiny-student.pt"
    torch.save(content, path)
    model = load_clip("tiny-student", str(tmp_path))
    assert isinstance(torch.load(path, weights_only=True), dict)
    assert model.visual.conv1.weight.shape[0] == TINY_SPECS["tiny-student"].vision_width


def _torchscript_archive(state_dict_path: str, path: str) -> None:
    """An OpenAI-like TorchScript archive: a traced CLIP (fp32 here)."""
    model = clip.model.build_model(torch.load(state_dict_path, weights_only=True)).float()
    inputs = (torch.randn(1, 3, 32, 32), clip.tokenize(["a"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings
        torch.jit.save(torch.jit.trace(model, inputs, check_trace=False), path)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # clip.load calls torch.jit.load
@pytest.mark.parametrize("fmt", ["state_dict", "torchscript"])
def test_prompts_off_equal_clip(fmt, tiny_clip_root, tmp_path):
    path = os.path.join(tiny_clip_root, "tiny-teacher.pt")
    if fmt == "torchscript":
        _torchscript_archive(path, str(tmp_path / "ts.pt"))
        path = str(tmp_path / "ts.pt")
        assert isinstance(torch.jit.load(path), torch.jit.ScriptModule)
    # The reference is clip's own loader and encode_* on the same file.
    ref, _ = clip.load(path, device="cpu", jit=False)
    model = load_clip(path)
    text = PromptedTextEncoder(model)
    image = PromptedImageEncoder(model.visual)
    tokens = clip.tokenize(["a photo of a cat.", "itap of a dog", "x"])
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        txt = text(model.token_embedding(tokens), tokens)
        img = image(images)
        assert (txt - ref.encode_text(tokens)).abs().max() <= 1e-5
        assert (img - ref.encode_image(images)).abs().max() <= 1e-5


def test_missing_weights_message_offline(tmp_path, no_default_dirs):
    with pytest.raises(UserError) as e:
        load_clip("ViT-B/16", str(tmp_path), download=False)
    msg = str(e.value)
    assert "ViT-B-16.pt" in msg and str(tmp_path) in msg and no_default_dirs in msg
    assert clip.clip._MODELS["ViT-B/16"] in msg and "CLIP_ROOT" in msg


def test_failed_download_is_user_error(monkeypatch, tmp_path, no_default_dirs):
    def offline(url, root):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(clip.clip, "_download", offline)
    with pytest.raises(UserError, match="download failed.*name resolution"):
        load_clip("ViT-L/14", str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing half-written


def test_download_lands_in_root(monkeypatch, tmp_path, tiny_clip_root, no_default_dirs):
    def fake_download(url, root):
        target = os.path.join(root, os.path.basename(url))
        with (
            open(os.path.join(tiny_clip_root, "tiny-student.pt"), "rb") as f,
            open(target, "wb") as g,
        ):
            g.write(f.read())
        return target

    monkeypatch.setattr(clip.clip, "_download", fake_download)
    model = load_clip("ViT-B/16", str(tmp_path))
    assert os.listdir(tmp_path) == ["ViT-B-16.pt"]
    assert model.visual.conv1.out_channels == TINY_SPECS["tiny-student"].vision_width


def test_bad_files_are_user_errors(tmp_path, no_default_dirs):
    with pytest.raises(UserError, match="not an OpenAI model name"):
        load_clip("ViT-X/99", str(tmp_path))
    (tmp_path / "ViT-B-16.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="Cannot read"):
        load_clip("ViT-B/16", str(tmp_path))
    torch.save({"weight": torch.zeros(2)}, tmp_path / "ViT-B-32.pt")
    with pytest.raises(UserError, match="not a CLIP checkpoint"):
        load_clip("ViT-B/32", str(tmp_path))
