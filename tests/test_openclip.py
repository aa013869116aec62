"""open_clip models wherever a CLIP is named (``open_clip:<model>:<pretrained>``): zero-shot
logits equal open_clip's own computation, OpenAI-shaped ViTs load as the project's CLIP and
train prompts, the stand-in loaded both ways gives the same results, errors are one sentence.

No network: tiny model configs written here, random weights (and the stand-in's weights).
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

import train  # noqa: E402
from dassl_ext.config import setup_cfg  # noqa: E402
from dassl_ext.errors import UserError  # noqa: E402
from dassl_ext.modeling import (  # noqa: E402
    OpenClipNative,
    PromptedImageEncoder,
    PromptedTextEncoder,
    clip,
    clip_sizes,
    find_clip_file,
    load_clip,
    load_zero_shot_clip,
    read_clip_state_dict,
    renormalize,
)
from dassl_ext.modeling.openclip import openai_shape_issue  # noqa: E402
from dassl_ext.modeling.standins import standin_path  # noqa: E402
from dassl_ext.utils.checkpoint import load_checkpoint  # noqa: E402
from tests.test_trainer_all import argv, read_results  # noqa: E402
from trainers.base import check_clip_model  # noqa: E402
from trainers.zsclip import OpenClipZeroshotModel, ZeroshotCLIP, ZeroshotModel  # noqa: E402

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
NAMES = ["cat", "golden_retriever", "sea turtle", "zero"]
TEMPLATE = "a photo of a {}."
# An OpenAI-shaped ViT: 2 heads of width 32 (OpenAI's build_model would derive 1), nn.GELU,
# an image MLP of 3 x width (OpenAI's: 4, as ViT-bigG-14 differs)
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 32,
        "layers": 2,
        "width": 64,
        "head_width": 32,
        "patch_size": 8,
        "mlp_ratio": 3.0,
    },
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# Not OpenAI-shaped: LayerScale, a 16-token context, a logit bias; its own normalisation
TINY_OTHER = {
    "embed_dim": 32,
    "init_logit_bias": -2.0,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8,
                   "ls_init_value": 0.5},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "ls_init_value": 0.5},
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}  # fmt: skip


def openai_model_config(state_dict: dict[str, torch.Tensor], quick_gelu: bool = True) -> dict:
    """open_clip's model config of an OpenAI-layout ViT CLIP state dict (the stand-ins),
    heads ``width // 64`` as OpenAI's ``build_model``."""
    sd = state_dict
    width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = sd["ln_final.weight"].shape[0]

    def blocks(prefix: str) -> int:
        depth = prefix.count(".")
        return len({k.split(".")[depth] for k in sd if k.startswith(prefix)})

    return {
        "embed_dim": int(sd["text_projection"].shape[1]),
        "quick_gelu": quick_gelu,
        "vision_cfg": {"image_size": int(patch * grid), "width": int(width),
                       "layers": blocks("visual.transformer.resblocks."), "patch_size": int(patch)},
        "text_cfg": {"context_length": int(sd["positional_embedding"].shape[0]),
                     "vocab_size": int(sd["token_embedding.weight"].shape[0]),
                     "width": int(text_width), "heads": int(text_width // 64),
                     "layers": blocks("transformer.resblocks.")},
    }  # fmt: skip


def adapt_batch(images, from_mean, from_std, resolution: int, to_mean, to_std) -> torch.Tensor:
    """A batch normalised with ``from_*`` as a model of ``resolution`` px and ``to_*`` takes
    it: resized bicubically with antialiasing (resizing commutes with the per-channel
    normalisation), then re-normalised; ``images`` itself when nothing differs."""
    if tuple(images.shape[-2:]) != (resolution, resolution):
        images = F.interpolate(images, size=(resolution, resolution), mode="bicubic",
                               align_corners=False, antialias=True)  # fmt: skip
    return renormalize(images, from_mean, from_std, to_mean, to_std)


def write_model(folder, stem: str, cfg: dict, state_dict=None, seed: int = 0) -> str:
    """``open_clip:<stem>.json:<stem>.pt`` of ``cfg`` with random (or the given) weights."""
    config = folder / f"{stem}.json"
    config.write_text(json.dumps(cfg))
    weights = folder / f"{stem}.pt"
    if state_dict is None:
        torch.manual_seed(seed)
        model_cfg = {k: v for k, v in cfg.items() if k != "preprocess_cfg"}
        model = open_clip.model.CLIP(**model_cfg)
        with torch.no_grad():  # CLIP's init pools every prompt alike: sharpen it
            model.token_embedding.weight.mul_(10.0)
            if model.logit_bias is not None:
                model.logit_bias.fill_(-2.0)
        state_dict = model.state_dict()
    torch.save(state_dict, weights)
    return f"open_clip:{config}:{weights}"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("open_clip")
    standin = read_clip_state_dict(standin_path("digits-teacher"))
    return {
        "vit": write_model(folder, "tiny-vit", TINY_VIT),
        "other": write_model(folder, "tiny-other", TINY_OTHER, seed=1),
        "standin": write_model(folder, "digits-teacher", openai_model_config(standin), standin),
    }


def read_config(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def reference(name: str, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Logits by open_clip alone: its model from the config, its checkpoint loader, its
    tokenizer, ``encode_image`` / ``encode_text``, normalised, scaled (+ bias)."""
    _, config, weights = name.split(":")
    cfg = read_config(config)
    cfg.pop("preprocess_cfg", None)
    model = open_clip.model.CLIP(**cfg).eval()
    open_clip.load_checkpoint(model, weights)
    context_length = cfg["text_cfg"]["context_length"]
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context_length)
    with torch.no_grad():
        image = F.normalize(model.encode_image(images), dim=-1)
        text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
        logits = model.logit_scale.exp() * image @ text.t()
        return logits if model.logit_bias is None else logits + model.logit_bias


def zs_cfg(tmp_path, backbone: str, mean=OPENAI_MEAN, std=OPENAI_STD):
    cfg = setup_cfg(train.parse_args([
        "--trainer", "ZeroshotCLIP", "--output-dir", str(tmp_path / "out"),
        "MODEL.BACKBONE.NAME", backbone, "INPUT.SIZE", "(32, 32)",
        "INPUT.PIXEL_MEAN", str(list(mean)), "INPUT.PIXEL_STD", str(list(std)),
    ]))  # fmt: skip
    return cfg


@pytest.mark.parametrize("kind", ["vit", "other", "standin"])
def test_zero_shot_logits_equal_open_clip(models, kind, tmp_path):
    """Through ZeroshotCLIP's model (the project's CLIP for OpenAI-shaped models, open_clip's
    towers otherwise), from batches normalised as the model wants: open_clip's logits."""
    name = models[kind]
    mean, std = ([0.5] * 3, [0.5] * 3) if kind == "other" else (OPENAI_MEAN, OPENAI_STD)
    model = ZeroshotCLIP.build_frozen_model(zs_cfg(tmp_path, name, mean, std), NAMES, name, None)
    assert isinstance(model, OpenClipZeroshotModel if kind == "other" else ZeroshotModel)
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = model(images)
    expected = reference(name, images, [TEMPLATE.format(n.replace("_", " ")) for n in NAMES])
    assert expected.std() > 0.1  # the classes are told apart
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert model.input_resolution == 32


def test_zero_shot_re_normalises_to_the_models_own(models, tmp_path):
    """Batches normalised with ImageNet's statistics reach an open_clip model re-normalised
    to its own (exactly: open_clip on the re-normalised batch); OpenAI's models are left
    alone (their configs set OpenAI's normalisation)."""
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    for kind, own in (("vit", (OPENAI_MEAN, OPENAI_STD)), ("other", ([0.5] * 3, [0.5] * 3))):
        name = models[kind]
        cfg = zs_cfg(tmp_path, name, *imagenet)
        model = ZeroshotCLIP.build_frozen_model(cfg, NAMES, name, None)
        with torch.no_grad():
            got = model(images)
        seen = renormalize(images, *imagenet, *own)
        prompts = [TEMPLATE.format(n.replace("_", " ")) for n in NAMES]
        torch.testing.assert_close(got, reference(name, seen, prompts), rtol=0, atol=1e-5)


def test_renormalize_and_adapt_batch():
    torch.manual_seed(0)
    raw = torch.rand(2, 3, 32, 32)
    m1, s1, m2, s2 = [0.4, 0.5, 0.6], [0.2, 0.3, 0.25], [0.5] * 3, [0.5] * 3

    def norm(x, m, s):
        return (x - torch.tensor(m).view(1, 3, 1, 1)) / torch.tensor(s).view(1, 3, 1, 1)

    x = norm(raw, m1, s1)
    torch.testing.assert_close(renormalize(x, m1, s1, m2, s2), norm(raw, m2, s2))
    assert renormalize(x, m1, s1, m1, s1) is x and adapt_batch(x, m1, s1, 32, m1, s1) is x
    kw = {"mode": "bicubic", "align_corners": False, "antialias": True}
    expected = norm(F.interpolate(raw, size=(48, 48), **kw), m2, s2)
    torch.testing.assert_close(adapt_batch(x, m1, s1, 48, m2, s2), expected)


def test_openai_shaped_loads_as_the_projects_clip(models):
    """The heads, the activation and the preprocessing are the model's; the prompted
    encoders with prompts off compute open_clip's features."""
    model = load_clip(models["vit"])
    assert isinstance(model, clip.model.CLIP)
    assert model.visual.transformer.resblocks[0].attn.num_heads == 2
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert model.visual.image_mean == tuple(OPENAI_MEAN)
    assert model.visual.transformer.resblocks[0].mlp.c_fc.weight.shape == (192, 64)
    assert model.transformer.resblocks[0].mlp.c_fc.weight.shape == (256, 64)
    sizes = clip_sizes(models["vit"])
    assert (sizes.input_resolution, sizes.vision_layers, sizes.text_layers) == (32, 2, 2)
    assert sizes.openai_shape_issue is None
    standin = load_clip(models["standin"])
    assert isinstance(standin.visual.transformer.resblocks[0].mlp.gelu, clip.model.QuickGELU)

    _, config, weights = models["vit"].split(":")
    ref = open_clip.model.CLIP(**read_config(config)).eval()
    open_clip.load_checkpoint(ref, weights)
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    tokens = clip.tokenize(["a photo of a cat.", "zero"])
    with torch.no_grad():
        image = PromptedImageEncoder(model.visual)(images)
        text = PromptedTextEncoder(model)(model.token_embedding(tokens), tokens)
        torch.testing.assert_close(image, ref.encode_image(images), rtol=0, atol=1e-5)
        torch.testing.assert_close(text, ref.encode_text(tokens), rtol=0, atol=1e-5)


def test_other_models_are_zero_shot_only(models, tmp_path, capsys):
    """A model that is not OpenAI-shaped: open_clip runs it for ZeroshotCLIP; a prompted
    trainer gets one sentence naming the trainers that support it, before any work."""
    assert openai_shape_issue(TINY_OTHER) == "it has a logit bias (sigmoid loss)"
    assert openai_shape_issue(TINY_VIT) is None
    assert isinstance(load_zero_shot_clip(models["other"]), OpenClipNative)
    sizes = clip_sizes(models["other"])
    assert sizes.vision_layers is None and sizes.image_mean == (0.5, 0.5, 0.5)
    with pytest.raises(UserError, match="only ZeroshotCLIP, ZeroshotCLIP2"):
        load_clip(models["other"])
    out = tmp_path / "ivlp"
    opts = ("MODEL.BACKBONE.NAME", models["other"], *IVLP_SMALL)
    assert train.main(argv("IVLP", out, tmp_path / "data", tmp_path, *opts)) == 1
    err = capsys.readouterr().err
    assert "IVLP: open_clip:" in err and "ZeroshotCLIP" in err and "Traceback" not in err
    assert not out.exists()


def test_ensemble_zero_shot_runs_an_open_clip_model(models, digits_root, tmp_path):
    """ZeroshotCLIP2 (template ensemble) through train.main on a model open_clip runs."""
    out = tmp_path / "zs2"
    args = argv("ZeroshotCLIP2", out, digits_root, tmp_path, "MODEL.BACKBONE.NAME",
                models["other"], config="CoOp/vit_b16.yaml", flags=("--eval-only",))  # fmt: skip
    assert train.main(args) == 0
    assert read_results(out)["splits"]["test"]["num_images"] == 540


def test_prompted_trainer_needs_the_models_normalisation(models, tmp_path):
    """A trainer that learns sees the batches as they come: INPUT.PIXEL_MEAN / STD must be the
    model's own (the zero-shot trainers re-normalise instead)."""
    from trainers.ivlp import IVLP

    cfg = zs_cfg(tmp_path, models["vit"], [0.5] * 3, [0.5] * 3)
    check_clip_model(cfg, "MODEL.BACKBONE.NAME")  # evaluation: re-normalised
    with pytest.raises(UserError, match=r"INPUT.PIXEL_MEAN .*use \[0.48145466"):
        check_clip_model(cfg, "MODEL.BACKBONE.NAME", IVLP)


def test_names_and_weights_errors_are_one_sentence(models, tmp_path, monkeypatch):
    """Malformed names, unknown models and tags, a tag not cached offline, a config that
    is not open_clip's, and open_clip not installed."""
    cases = {
        "open_clip:ViT-B-16": "names no weights",
        "open_clip:NoSuchModel:x": "neither an open_clip model name",
        "open_clip:ViT-B-16:nosuchtag": "neither a weights file nor an open_clip pretrained tag",
    }
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    cases[f"open_clip:{bad}:x.pt"] = "lacks vision_cfg, text_cfg"
    for name, message in cases.items():
        with pytest.raises(UserError, match=message):
            find_clip_file(name, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError) as e:
        find_clip_file("open_clip:ViT-B-16:laion2b_s34b_b88k", str(tmp_path))
    text = str(e.value)
    assert "model ViT-B-16, tag 'laion2b_s34b_b88k' not found in" in text
    assert str(tmp_path) in text and "HF_HUB_OFFLINE" in text and "create_model(" in text
    wrong = (
        write_model(tmp_path, "wrong", TINY_VIT).rsplit(":", 1)[0]
        + ":"
        + str(models["standin"].rsplit(":", 1)[1])
    )
    with pytest.raises(UserError, match="Cannot load .* give the weights of that model"):
        load_clip(wrong)
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    with pytest.raises(UserError, match=r'pip install -e "\.\[openclip\]"'):
        find_clip_file(models["vit"])


def test_a_cached_tag_is_found_offline(tmp_path, monkeypatch):
    """A tag's file in a CLIP folder (open_clip's URL downloads) is used without network."""
    from open_clip.pretrained import get_pretrained_cfg

    url = get_pretrained_cfg("ViT-B-32", "openai")["url"]
    assert url
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(
        "open_clip.pretrained.get_pretrained_cfg",
        lambda model, tag: {"url": url} if (model, tag) == ("ViT-B-32", "openai") else {},
    )  # as if open_clip served this tag by URL only
    target = tmp_path / url.rsplit("/", 1)[1]
    target.write_bytes(b"weights")
    assert find_clip_file("open_clip:ViT-B-32:openai", str(tmp_path)) == str(target)


# ---- prompted trainers on an open_clip ViT, and the stand-in loaded both ways ----

IVLP_SMALL = (
    "TRAINER.IVLP.PROMPT_DEPTH_VISION", "2", "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2",
    "DATASET.SUBSAMPLE_CLASSES", "base",
)  # fmt: skip


def test_coop_at_init_is_the_unprompted_model(models, tmp_path):
    """CoOp initialised from "a photo of a" computes, before any step, open_clip's zero-shot
    logits with the template "a photo of a {}." (prompts-off: the unprompted model)."""
    from trainers.coop import CoOp

    cfg = zs_cfg(tmp_path, models["vit"])
    cfg.defrost()
    cfg.TRAINER.COOP.CTX_INIT, cfg.TRAINER.COOP.N_CTX = "a photo of a", 4
    cfg.freeze()
    model = CoOp.build_frozen_model(cfg, NAMES, models["vit"], None)
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        got = model(images)
    expected = reference(models["vit"], images, [TEMPLATE.format(n.replace("_", " "))
                                                  for n in NAMES])  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_ivlp_trains_and_resumes_on_an_open_clip_vit(models, digits_root, tmp_path):
    """Two epochs of IVLP on the tiny open_clip ViT; a run stopped after epoch 1 and resumed
    ends with the same prompts."""
    opts = ("MODEL.BACKBONE.NAME", models["vit"], *IVLP_SMALL, "OPTIM.MAX_EPOCH", "2",
            "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.LR", "0.5")  # fmt: skip
    out = tmp_path / "straight"
    assert train.main(argv("IVLP", out, digits_root, tmp_path, *opts)) == 0
    crashed = tmp_path / "crashed"
    shutil.copytree(out, crashed)
    (crashed / "VLPromptLearner" / "model.pth.tar-2").unlink()
    (crashed / "results.json").unlink()
    flags = ("--resume", str(crashed))
    assert train.main(argv("IVLP", "", digits_root, tmp_path, *opts, flags=flags)) == 0
    first = load_checkpoint(str(out / "VLPromptLearner" / "model.pth.tar-1"))["state_dict"]
    a, b = (load_checkpoint(str(d / "VLPromptLearner" / "model.pth.tar-2"))["state_dict"]
            for d in (out, crashed))  # fmt: skip
    assert a.keys() == b.keys() and "image_encoder.VPT" in a
    assert not torch.equal(a["image_encoder.VPT"], first["image_encoder.VPT"])  # it trained
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_results(out)["splits"] == read_results(crashed)["splits"]


STANDIN_OPTS = [
    "INPUT.TRANSFORMS", "['random_crop', 'normalize']", "INPUT.CROP_PADDING", "2",
    "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "4", "TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT", "4",
]  # fmt: skip


def test_standin_as_open_clip_gives_the_same_accuracy_and_student(models, digits_root, tmp_path):
    """digits-teacher named as OpenAI-layout weights and as open_clip (a model config +
    the same file): the same zero-shot accuracy, and the same PromptKD student from it."""
    results = {}
    for key, teacher in (("openai", "digits-teacher"), ("open_clip", models["standin"])):
        zs = tmp_path / f"zs_{key}"
        args = argv("ZeroshotCLIP", zs, digits_root, tmp_path / "clip", "MODEL.BACKBONE.NAME",
                    teacher, "DATASET.EVAL_SPLITS", "base_new", config="CoOp/vit_b16.yaml",
                    flags=("--eval-only",))  # fmt: skip
        assert train.main(args) == 0
        kd = tmp_path / f"kd_{key}"
        kd_opts = [*STANDIN_OPTS, "TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP",
                   "TRAINER.PROMPTKD.TEACHER_NAME", teacher, "MODEL.BACKBONE.NAME",
                   "digits-student", "DATASET.NUM_SHOTS", "1"]  # fmt: skip
        args = argv("PromptKD", kd, digits_root, tmp_path / "clip", *kd_opts,
                    config="PromptKD/base2new/digits_standins.yaml")  # fmt: skip
        assert train.main(args) == 0
        ckpt = sorted((kd / "VLPromptLearner").glob("model.pth.tar-*"))[-1]
        results[key] = (read_results(zs)["splits"], read_results(kd)["splits"],
                        load_checkpoint(str(ckpt))["state_dict"])  # fmt: skip
    (zs_a, kd_a, sd_a), (zs_b, kd_b, sd_b) = results["openai"], results["open_clip"]
    assert zs_a == zs_b and zs_a["base"]["accuracy"] > 90
    assert kd_a == kd_b
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        torch.testing.assert_close(sd_a[k], sd_b[k], rtol=0, atol=1e-6)


def test_safetensors_weights_sizes_and_config_digest(models, tmp_path):
    """Weights in a .safetensors file (open_clip's Hugging Face downloads) load; the sizes
    carry the joint embedding width; the config digest follows the config's content."""
    from safetensors.torch import save_file

    from dassl_ext.modeling import model_config_digest

    _, config, weights = models["vit"].split(":")
    sd = {k: v.contiguous() for k, v in torch.load(weights, weights_only=True).items()}
    save_file(sd, str(tmp_path / "tiny.safetensors"))
    name = f"open_clip:{config}:{tmp_path / 'tiny.safetensors'}"
    a, b = load_clip(models["vit"]), load_clip(name)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    assert clip_sizes(name).embed_dim == 32 and clip_sizes(models["other"]).embed_dim == 32
    assert model_config_digest("tiny-teacher") is None
    digest = model_config_digest(name)
    assert digest == model_config_digest(models["vit"])  # the same config, other weights
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**TINY_VIT, "quick_gelu": True}))
    assert model_config_digest(f"open_clip:{changed}:{weights}") != digest


def test_promptkd_with_an_open_clip_teacher_at_its_own_resolution_and_normalisation(
    digits_root, tiny_clip_root, tmp_path, monkeypatch
):
    """A zero-shot open_clip teacher (not OpenAI-shaped: open_clip runs it) at 64 px with
    mean/std 0.5 teaches the 32 px tiny student (a training step); its features of a batch
    are open_clip's of that batch resized to 64 px and re-normalised (adapt_batch)."""
    from test_promptkd import student_argv

    from dassl_ext.engine import build_trainer

    other = {**TINY_OTHER, "vision_cfg": {**TINY_OTHER["vision_cfg"], "image_size": 64,
                                          "patch_size": 16}}  # fmt: skip
    teacher = write_model(tmp_path, "teacher-64", other, seed=2)
    opts = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP",
            "TRAINER.PROMPTKD.TEACHER_NAME", teacher, "USE_CUDA", "False")  # fmt: skip
    args = student_argv(digits_root, tiny_clip_root, tmp_path / "kd", "", *opts,
                        "TEST.NO_TEST", "True")  # fmt: skip
    trainer = build_trainer(setup_cfg(train.parse_args(args)))
    trainer.ensure_teacher()
    batch = next(iter(trainer.train_loader_x))
    loss = trainer.forward_backward(batch)["loss"]
    assert loss > 0 and loss == loss  # a finite KD loss from the open_clip teacher
    images = batch["img"][:2]
    data = (trainer.cfg.INPUT.PIXEL_MEAN, trainer.cfg.INPUT.PIXEL_STD)
    seen = adapt_batch(images, *data, 64, [0.5] * 3, [0.5] * 3)
    with torch.no_grad():
        t = trainer.teacher
        t_images = F.interpolate(images, size=(64, 64), mode="bicubic", align_corners=False,
                                 antialias=True)  # fmt: skip
        got = F.normalize(t.image_features(t_images), dim=-1)
    ref_cfg = read_config(teacher.split(":")[1])
    ref_cfg.pop("preprocess_cfg")
    ref = open_clip.model.CLIP(**ref_cfg).eval()
    open_clip.load_checkpoint(ref, teacher.split(":")[2])
    with torch.no_grad():
        expected = F.normalize(ref.encode_image(seen), dim=-1)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_tags_activation_wins_over_the_model_names():
    """open_clip's OpenAI weights under a name without '-quickgelu' (ViT-L-14-336:openai) were
    trained with QuickGELU: the model uses it (open_clip would warn and use nn.GELU)."""
    from dassl_ext.modeling.openclip import open_clip_spec

    assert open_clip_spec("open_clip:ViT-L-14-336:openai").model_cfg["quick_gelu"] is True
    assert not open_clip_spec("open_clip:ViT-L-14:laion2b_s32b_b82k").model_cfg.get("quick_gelu")


def test_a_tag_in_hugging_faces_cache_is_found_offline(tmp_path, monkeypatch):
    """A tag served from the Hugging Face Hub, already in its cache: that file, no network
    (the safetensors file open_clip prefers to the .bin)."""
    from open_clip.pretrained import get_pretrained_cfg

    hub = get_pretrained_cfg("ViT-B-16", "laion2b_s34b_b88k")["hf_hub"]
    repo = hub.rstrip("/")
    snapshot = tmp_path / "hf" / f"models--{repo.replace('/', '--')}" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    (snapshot / "open_clip_model.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    found = find_clip_file("open_clip:ViT-B-16:laion2b_s34b_b88k", str(tmp_path / "clip"))
    assert found == str(snapshot / "open_clip_model.safetensors")


def test_promptkd_teacher_checks_and_keys_of_open_clip_models(
    models, digits_root, tiny_clip_root, tmp_path
):
    """A prompt-tuned teacher (PromptSRC) on a model open_clip alone runs: the sentence
    naming the trainers that take it (not a prompt-depth rule); a zero-shot open_clip teacher
    is keyed by its model config too (an edited .json under one name: other text features and
    stored views), while an OpenAI teacher's key has no such part."""
    from test_promptkd import student_argv

    from trainers.promptkd import PromptKD
    from trainers.promptkd_teacher import resolve_teacher

    def cfg_of(*opts):
        args = student_argv(digits_root, tiny_clip_root, tmp_path / "kd", "", *opts)
        return setup_cfg(train.parse_args(args))

    cfg = cfg_of("TRAINER.PROMPTKD.TEACHER_NAME", models["other"])
    with pytest.raises(UserError, match="PromptSRC") as e:
        PromptKD.check_config(cfg)
    assert "PROMPT_DEPTH" not in str(e.value) and "ZeroshotCLIP" in str(e.value)

    config = tmp_path / "edited.json"
    config.write_text(json.dumps(read_config(models["vit"].split(":")[1])))
    name = f"open_clip:{config}:{models['vit'].split(':')[2]}"
    zs = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP", "TRAINER.PROMPTKD.TEACHER_NAME")
    cpu = torch.device("cpu")
    before = resolve_teacher(cfg_of(*zs, name), cpu, NAMES)
    assert "model_config_sha256" in before.identity
    edited = read_config(config)
    edited["preprocess_cfg"] = {"mean": [0.5] * 3, "std": [0.5] * 3}
    config.write_text(json.dumps(edited))
    after = resolve_teacher(cfg_of(*zs, name), cpu, NAMES)
    assert after.cache_key != before.cache_key
    assert after.identity["clip_sha256"] == before.identity["clip_sha256"]
    openai = resolve_teacher(cfg_of(*zs, "tiny-teacher"), cpu, NAMES)
    assert "model_config_sha256" not in openai.identity


def test_openai_torchscript_weights_load(models, tmp_path):
    """OpenAI's own TorchScript file (what a tag 'openai' finds in a CLIP folder, e.g.
    ViT-L-14-336px.pt) loads through an open_clip: name, both ways, as the plain weights."""
    import warnings

    _, config, weights = models["standin"].split(":")
    sd = torch.load(weights, weights_only=True)
    model = clip.model.build_model(sd).float()
    for key, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        if key in vars(model):
            delattr(model, key)
        model.register_buffer(key, torch.tensor(value))  # as OpenAI's archives hold
    inputs = (torch.randn(1, 3, 32, 32), clip.tokenize(["a"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings
        torch.jit.save(torch.jit.trace(model, inputs, check_trace=False), tmp_path / "ts.pt")
    name = f"open_clip:{config}:{tmp_path / 'ts.pt'}"
    a, b = load_clip(models["standin"]), load_clip(name)
    for (k, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), k
    from dassl_ext.modeling.openclip import create_open_clip, open_clip_spec

    native = create_open_clip(open_clip_spec(name), str(tmp_path / "ts.pt"))  # open_clip's own
    assert torch.equal(native.visual.conv1.weight, sd["visual.conv1.weight"].float())


TINY_COCA = {
    "embed_dim": 32,
    "custom_text": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8,
                   "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                       "layers": 1, "attn_pooler_heads": 2},
}  # fmt: skip


def test_a_coca_model_runs_zero_shot(tmp_path):
    """A CoCa model (its image tower returns pooled and token features): zero-shot logits from
    the pooled features, as CoCa's own encode_image / encode_text (was: a tuple, a traceback)."""
    torch.manual_seed(0)
    reference_model = open_clip.CoCa(**{k: v for k, v in TINY_COCA.items() if k != "custom_text"})
    (tmp_path / "coca.json").write_text(json.dumps(TINY_COCA))
    torch.save(reference_model.state_dict(), tmp_path / "coca.pt")
    name = f"open_clip:{tmp_path / 'coca.json'}:{tmp_path / 'coca.pt'}"
    model = ZeroshotCLIP.build_frozen_model(zs_cfg(tmp_path, name), NAMES, name, None)
    assert isinstance(model, OpenClipZeroshotModel)
    images = torch.randn(2, 3, 32, 32)
    prompts = [TEMPLATE.format(n.replace("_", " ")) for n in NAMES]
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        got = model(images)
        reference_model.eval()
        image = reference_model.encode_image(images)
        text = reference_model.encode_text(tokenizer(prompts))
        expected = reference_model.logit_scale.exp() * image @ text.t()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_a_tower_narrower_than_64_is_zero_shot_only(tmp_path):
    """Width < 64 (OpenAI's CLIP derives width // 64 heads: none): not OpenAI-shaped, one
    sentence for prompted trainers, open_clip runs it zero-shot (was: ZeroDivisionError)."""
    narrow = {**TINY_VIT, "text_cfg": {**TINY_VIT["text_cfg"], "width": 32, "heads": 1}}
    assert "text width 32" in openai_shape_issue(narrow)
    name = write_model(tmp_path, "narrow", narrow)
    with pytest.raises(UserError, match="not an OpenAI-shaped ViT CLIP") as e:
        load_clip(name)
    assert "\n" not in str(e.value)
    assert isinstance(load_zero_shot_clip(name), OpenClipNative)


def test_a_builtin_model_with_a_bare_weights_file_warns(models, tmp_path, monkeypatch, caplog):
    """open_clip:ViT-L-14-336:<file> loses the tag's QuickGELU and normalisation: one warning
    naming both; the offline "not found" sentence says where to put the tag's file."""
    from dassl_ext.modeling.openclip import open_clip_spec

    weights = models["vit"].rsplit(":", 1)[1]
    with caplog.at_level("WARNING", logger="dassl_ext.modeling.openclip"):
        spec = open_clip_spec(f"open_clip:ViT-L-14-336:{weights}")
        open_clip_spec(f"open_clip:ViT-L-14-336:{weights}")
    assert not spec.model_cfg.get("quick_gelu")
    warnings = [r.getMessage() for r in caplog.records if "a weights file, not a tag" in r.message]
    assert len(warnings) == 1 and "nn.GELU" in warnings[0] and "normalisation" in warnings[0]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(UserError) as e:
        find_clip_file("open_clip:ViT-L-14-336:openai", str(tmp_path))
    assert f"a CLIP folder as ViT-L-14-336px.pt (e.g. {tmp_path})" in str(e.value)
    assert "loses what the tag sets" in str(e.value)


def test_config_digest_follows_the_installed_open_clip(models, monkeypatch):
    """open_clip's tokenizers and encode_text compute the features: another version of it,
    another digest; OpenAI names keep None."""
    from dassl_ext.modeling import model_config_digest

    digest = model_config_digest(models["vit"])
    monkeypatch.setattr(open_clip, "__version__", "0.0.0-other")
    assert model_config_digest(models["vit"]) != digest
    assert model_config_digest("ViT-B/16") is None


def test_layer_norm_eps_is_checked():
    """A tower's norm_kwargs: CLIP's eps is OpenAI-shaped, another eps is named (was: any
    norm_kwargs named as an unknown key, the eps check never reached)."""

    def with_eps(eps):
        return {**TINY_VIT, "vision_cfg": {**TINY_VIT["vision_cfg"], "norm_kwargs": {"eps": eps}}}

    assert openai_shape_issue(with_eps(1e-5)) is None
    assert (
        openai_shape_issue(with_eps(1e-6)) == "its vision LayerNorms use eps 1e-06 (CLIP's: 1e-5)"
    )
