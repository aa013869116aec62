"""open_clip models wherever a CLIP is named: ``open_clip:<model>:<pretrained>``.

``<model>`` is an open_clip model name (``ViT-H-14-quickgelu``) or a model-config ``.json``
file (open_clip's layout: ``embed_dim``, ``vision_cfg``, ``text_cfg``; or an
``open_clip_config.json`` with ``model_cfg`` and ``preprocess_cfg``); ``<pretrained>`` an
open_clip tag (``dfn5b``: looked up in Hugging Face's and the CLIP folders' caches, downloaded
only when the network allows and ``HF_HUB_OFFLINE`` is not set) or a weights file.

Two kinds of model (:func:`openai_shape_issue` decides, from the model config alone):

* OpenAI-shaped ViT CLIPs (patch embedding, class token, ln_pre / ln_post, residual
  attention blocks, projection, argmax text pooling, CLIP's 77-token BPE): their state dict
  is OpenAI's, so :func:`load_open_clip_as_openai` loads it into the project's own
  ``clip.model.CLIP`` (with the model's attention heads and GELU), and every trainer prompts
  it unchanged.
* Any other (SigLIP-class, timm or ResNet towers, custom text towers, other tokenizers,
  LayerScale ...): :class:`OpenClipNative` runs open_clip's own ``encode_image`` /
  ``encode_text`` with its own tokenizer; zero-shot only (ZeroshotCLIP, its ensemble
  ZeroshotCLIP2, and a zero-shot PromptKD teacher).

Each model keeps its own input: ``image_mean`` / ``image_std`` (open_clip's preprocess
config, the tag's when a tag names the weights) on its image tower; :func:`renormalize`
turns a batch normalised for another model into this model's normalisation (a trainer's
``model_input``; the PromptKD teacher resizes to the model's resolution itself).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import socket
from dataclasses import asdict, dataclass, field
from types import ModuleType

import torch
from torch import nn

from dassl_ext.errors import UserError
from dassl_ext.modeling.weights_file import _is_torchscript, _reason, read_clip_state_dict

logger = logging.getLogger(__name__)

PREFIX = "open_clip:"
INSTALL_HINT = 'pip install -e ".[openclip]"'
OPENAI_CONTEXT_LENGTH = 77
OPENAI_VOCAB_SIZE = 49408
DOWNLOAD_TIMEOUT_S = 30

# Config keys of an OpenAI-shaped tower: any value (_SIZE_KEYS; of norm_kwargs only the eps
# is checked), or the value each must have (None in a config means open_clip's default); keys
# not listed here (timm_*, hf_*, attn_pooler_*) are other towers.
_SIZE_KEYS = {"image_size", "layers", "width", "head_width", "patch_size", "heads", "mlp_ratio",
              "context_length", "vocab_size", "output_tokens", "patch_dropout",
              "final_ln_after_pool", "eos_id", "pad_id", "timm_model_pretrained",
              "hf_model_pretrained", "norm_kwargs"}  # fmt: skip
_FIXED = {
    "ls_init_value": None, "attentional_pool": False, "no_ln_pre": False,
    "pos_embed_type": "learnable", "act_kwargs": None, "block_type": None, "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "timm_model_name": None, "hf_model_name": None,
    "hf_tokenizer_name": None, "tokenizer_mode": None, "embed_cls": False,
    "no_causal_mask": False, "use_pad_mask": False, "proj_bias": False, "proj_type": "linear",
    "input_patchnorm": False, "global_average_pool": False,
}  # fmt: skip
_VISION_FIXED = {"pool_type": "tok"}
_TEXT_FIXED = {"pool_type": "argmax", "context_length": OPENAI_CONTEXT_LENGTH,
               "vocab_size": OPENAI_VOCAB_SIZE}  # fmt: skip
# Keys of OpenAI's TorchScript files that are no weights of open_clip's model
_OPENAI_ONLY = ("input_resolution", "context_length", "vocab_size")
_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "cast_dtype",
             "init_logit_scale", "preprocess_cfg"}  # fmt: skip


def is_open_clip_name(name: str) -> bool:
    """Whether ``name`` names an open_clip model (``open_clip:<model>:<pretrained>``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def require_open_clip() -> ModuleType:
    """``import open_clip``, or one sentence saying how to install it."""
    try:
        import open_clip
    except ImportError:
        raise UserError(
            f"open_clip models (names starting with '{PREFIX}') need the package "
            f"open-clip-torch; install it with {INSTALL_HINT}."
        ) from None
    return open_clip


@dataclass(frozen=True)
class OpenClipSpec:
    """What an ``open_clip:`` name resolves to before any weights are read."""

    name: str  # the full name as given
    model: str  # an open_clip model name or a model-config .json path
    pretrained: str  # a tag or a weights file
    model_cfg: dict = field(repr=False)  # open_clip's model config (embed_dim, vision_cfg ...)
    preprocess: dict = field(repr=False)  # size, mean, std, interpolation ... (PreprocessCfg)
    builtin: bool  # ``model`` is one of open_clip's own names

    @property
    def resolution(self) -> int:
        size = self.preprocess["size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if h != w:
            raise UserError(
                f"{self.name}: its input is {h}x{w} pixels; the data pipeline makes square "
                "images only: use a model with a square input."
            )
        return int(h)

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.preprocess["mean"])

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(float(v) for v in self.preprocess["std"])


def parse_open_clip_name(name: str) -> tuple[str, str]:
    """``open_clip:<model>:<pretrained>`` -> (model, pretrained); one sentence when malformed."""
    model, _, pretrained = name[len(PREFIX) :].partition(":")
    if not model.strip() or not pretrained.strip():
        raise UserError(
            f"'{name}' names no {'model' if not model.strip() else 'weights'}; write "
            f"{PREFIX}<model>:<pretrained>, e.g. {PREFIX}ViT-B-16:laion2b_s34b_b88k (an "
            "open_clip model name or model-config .json, and a pretrained tag or weights file)."
        )
    return model.strip(), pretrained.strip()


def open_clip_spec(name: str) -> OpenClipSpec:
    """The model config and preprocessing of ``name`` (no weights read)."""
    open_clip = require_open_clip()
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    model, pretrained = parse_open_clip_name(name)
    preprocess = asdict(PreprocessCfg())
    builtin = not (model.endswith(".json") or os.path.isfile(model))
    if not builtin:
        model_cfg = _read_model_config(name, model)
        preprocess = merge_preprocess_dict(preprocess, model_cfg.pop("preprocess_cfg", {}))
    else:
        model_cfg = open_clip.get_model_config(model.replace("/", "-"))
        if model_cfg is None:
            raise UserError(
                f"'{model}' in {name} is neither an open_clip model name nor a model-config "
                f".json file; open_clip.list_models() lists the names (e.g. ViT-B-16, "
                "ViT-H-14-quickgelu)."
            )
        model_cfg.pop("preprocess_cfg", None)
        tag_cfg = get_pretrained_cfg(model.replace("/", "-"), pretrained)
        preprocess = merge_preprocess_dict(preprocess, tag_cfg)
        tag_gelu, model_gelu = bool(tag_cfg.get("quick_gelu")), bool(model_cfg.get("quick_gelu"))
        if tag_gelu and not model_gelu:  # open_clip only warns, and computes off
            logger.info(f"{name}: QuickGELU, as the weights '{pretrained}' were trained")
            model_cfg["quick_gelu"] = True
        elif tag_cfg and model_gelu and not tag_gelu:
            logger.warning(
                f"{name}: the weights '{pretrained}' were trained with nn.GELU but model "
                f"{model} uses QuickGELU; name the model without '-quickgelu'."
            )
        elif not tag_cfg and os.path.isfile(os.path.expanduser(pretrained)):
            act = "QuickGELU" if model_gelu else "nn.GELU"
            _warn_once(
                f"{name}: a weights file, not a tag, so what a tag would set is unknown: "
                f"the activation follows the model name ({act}) and the normalisation is "
                f"open_clip's default (mean {tuple(preprocess['mean'])}); if the weights were "
                "trained otherwise, name the model with or without '-quickgelu', or give a "
                "model-config .json with its preprocess_cfg."
            )
    preprocess["size"] = model_cfg["vision_cfg"].get("image_size", preprocess["size"])
    return OpenClipSpec(name, model, pretrained, model_cfg, preprocess, builtin)


@functools.cache  # each message once per process
def _warn_once(message: str) -> None:
    logger.warning(message)


def _read_model_config(name: str, path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"Cannot read the open_clip model config '{path}' of {name}: {e}") from None
    if isinstance(cfg, dict) and isinstance(cfg.get("model_cfg"), dict):  # open_clip_config.json
        cfg = {**cfg["model_cfg"], "preprocess_cfg": cfg.get("preprocess_cfg", {})}
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict)
               or k not in cfg]  # fmt: skip
    if missing:
        raise UserError(
            f"The open_clip model config '{path}' of {name} lacks {', '.join(missing)}; write "
            "it as open_clip's own model configs (open_clip/model_configs/*.json)."
        )
    return cfg


def openai_shape_issue(model_cfg: dict) -> str | None:
    """Why a model of this config cannot be loaded as the project's OpenAI-shaped CLIP (one
    phrase), or None when it can."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    if model_cfg.get("custom_text") or "multimodal_cfg" in model_cfg or text.get("hf_model_name"):
        return "it has a custom text tower"
    if vision.get("timm_model_name"):
        return f"its image tower is timm's {vision['timm_model_name']}"
    if isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is a ResNet"
    if (
        text.get("hf_tokenizer_name")
        or (text.get("tokenizer_kwargs") or {}).get("clean", "lower") != "lower"
    ):
        return "its tokenizer is not CLIP's BPE"
    if model_cfg.get("init_logit_bias") is not None:
        return "it has a logit bias (sigmoid loss)"
    for tower, cfg, default in (("vision", vision, 768), ("text", text, 512)):
        width = cfg.get("width", default)
        if isinstance(width, int) and width < 64:  # OpenAI's CLIP derives width // 64 heads
            return f"its {tower} width {width} is under 64"
    for key in sorted(set(model_cfg) - _TOP_KEYS - {"custom_text"}):
        return f"its config sets '{key}'"
    for tower, cfg, fixed in (("vision", vision, _VISION_FIXED), ("text", text, _TEXT_FIXED)):
        for key, value in cfg.items():
            want = {**_FIXED, **fixed}.get(key, "size")
            if want == "size":
                if key not in _SIZE_KEYS:
                    return f"its {tower}_cfg sets '{key}'"
            elif value is not None and value != want:
                return f"its {tower}_cfg sets {key}={value!r} (CLIP's: {want!r})"
        eps = (cfg.get("norm_kwargs") or {}).get("eps", 1e-5)
        if eps != 1e-5:
            return f"its {tower} LayerNorms use eps {eps} (CLIP's: 1e-5)"
    return None


def find_open_clip_weights(name: str, dirs: list[str], download: bool = True) -> str:
    """The weights file of ``name``: ``<pretrained>`` itself when it is a file, else the tag's
    file in Hugging Face's cache or in ``dirs`` (the CLIP folders), downloaded when allowed."""
    spec = open_clip_spec(name)
    if os.path.isfile(os.path.expanduser(spec.pretrained)):
        return os.path.expanduser(spec.pretrained)
    from open_clip.pretrained import (
        download_pretrained,
        get_pretrained_cfg,
        list_pretrained_tags_by_model,
    )

    model = spec.model.replace("/", "-")
    tag_cfg = get_pretrained_cfg(model, spec.pretrained) if spec.builtin else {}
    if not tag_cfg:
        tags = list_pretrained_tags_by_model(model) if spec.builtin else []
        known = f"its tags: {', '.join(tags)}" if tags else "open_clip lists no tags for it"
        raise UserError(
            f"'{spec.pretrained}' in {name} is neither a weights file nor an open_clip "
            f"pretrained tag of {spec.model} ({known}); give a tag or the path of a weights file."
        )
    found, places = _cached_weights(tag_cfg, dirs)
    if found:
        return found
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    reason = "downloads are disabled" + (" (HF_HUB_OFFLINE is set)" if offline else "")
    if download and not offline:
        url_only = not tag_cfg.get("hf_hub")
        old_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # no network should fail, not hang
        try:
            logger.info(f"Downloading the weights of {name}")
            path = download_pretrained(tag_cfg, cache_dir=dirs[0] if url_only else None)
            if path and os.path.isfile(path):
                return path
            reason = "the download gave no file"
        except Exception as e:  # no network, HF errors, bad checksum: all the same to the user
            reason = f"download failed: {_reason(e)}"
        finally:
            socket.setdefaulttimeout(old_timeout)
    wheres = ["Hugging Face's cache (HF_HOME)"] if tag_cfg.get("hf_hub") else []
    if tag_cfg.get("url"):
        wheres.append(f"a CLIP folder as {os.path.basename(tag_cfg['url'])} (e.g. {dirs[0]})")
    where = " or ".join(wheres)
    raise UserError(
        f"open_clip weights of model {spec.model}, tag '{spec.pretrained}' not found in "
        f"{'; '.join(places)} ({reason}); fetch them where the network allows with "
        f"python -c \"import open_clip; open_clip.create_model('{model}', "
        f"pretrained='{spec.pretrained}')\" and put them into {where} here, where the tag "
        f"looks (a bare weights file, {PREFIX}{spec.model}:<file>, loses what the tag sets: "
        "its activation and normalisation)."
    )


def _cached_weights(tag_cfg: dict, dirs: list[str]) -> tuple[str | None, list[str]]:
    """The tag's file if cached (Hugging Face's cache, then each CLIP folder as a Hugging
    Face cache and as a plain folder of URL downloads), and the places looked."""
    places: list[str] = []
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache  # a dependency of open-clip-torch
        from huggingface_hub.constants import HF_HUB_CACHE

        if hub.endswith("/"):  # a repository: open_clip's file names in it
            repo, filename = hub.rstrip("/"), "open_clip_pytorch_model.bin"
        else:
            repo, filename = os.path.split(hub)
        names = [filename]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        if filename == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
        for cache_dir in (None, *dirs):
            places.append(f"{cache_dir or HF_HUB_CACHE} (Hugging Face {repo})")
            for fn in names:
                path = try_to_load_from_cache(repo, fn, cache_dir=cache_dir)
                if isinstance(path, str) and os.path.isfile(path):
                    return path, places
    url = tag_cfg.get("url", "")
    if url:
        for d in dirs:
            path = os.path.join(d, os.path.basename(url))
            places.append(path)
            if os.path.isfile(path):
                return path, places
    return None, places


def open_clip_sizes(name: str) -> dict:
    """Sizes of ``name`` from its model config (no weights read): ``input_resolution``,
    ``vision_layers`` (None unless OpenAI-shaped), ``text_layers``, ``openai_shape_issue``,
    ``image_mean``, ``image_std``, ``embed_dim``."""
    spec = open_clip_spec(name)
    issue = openai_shape_issue(spec.model_cfg)
    vision, text = spec.model_cfg["vision_cfg"], spec.model_cfg["text_cfg"]
    return {
        "input_resolution": spec.resolution,
        "vision_layers": int(vision.get("layers", 12)) if issue is None else None,
        "text_layers": int(text.get("layers", 12)),
        "openai_shape_issue": issue,
        "image_mean": spec.mean,
        "image_std": spec.std,
        "embed_dim": int(spec.model_cfg["embed_dim"]),
    }


def model_config_digest(name: str) -> str | None:
    """sha256 of what an ``open_clip:`` name's model config and preprocessing hold (a config
    .json can change under the same name; the weights file has its own digest) and of the
    installed open_clip's version; None for any other name. For cache keys of what the
    model computes."""
    if not is_open_clip_name(name):
        return None
    spec = open_clip_spec(name)
    # the installed open_clip: its tokenizers and encode_text compute the features too
    version = getattr(require_open_clip(), "__version__", "")
    text = json.dumps({"model_cfg": spec.model_cfg, "preprocess": spec.preprocess,
                       "open_clip": version}, sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()


def create_open_clip(spec: OpenClipSpec, weights: str) -> nn.Module:
    """open_clip's model of ``spec`` (CLIP, CustomTextCLIP or CoCa, as ``create_model``
    chooses) with ``weights`` loaded strictly; fp32, eval, CPU; its preprocess config set."""
    open_clip = require_open_clip()
    from open_clip.model import CLIP, CustomTextCLIP, set_model_preprocess_cfg

    cfg = json.loads(json.dumps(spec.model_cfg))  # a deep copy
    cfg["vision_cfg"]["timm_model_pretrained"] = False  # the checkpoint holds every weight
    if "hf_model_name" in cfg["text_cfg"]:
        cfg["text_cfg"]["hf_model_pretrained"] = False
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg["text_cfg"]
    cls = CLIP
    if custom:
        cls = open_clip.CoCa if "multimodal_cfg" in cfg else CustomTextCLIP
    try:
        model = cls(**cfg)
        if _is_torchscript(weights):  # OpenAI's own file (a tag 'openai'): torch.load refuses
            sd = {k: v for k, v in read_clip_state_dict(weights).items() if k not in _OPENAI_ONLY}
            model.load_state_dict(sd, strict=True)
        else:
            open_clip.load_checkpoint(model, weights, strict=True)
    except UserError:
        raise
    except Exception as e:
        raise UserError(
            f"Cannot load '{weights}' into open_clip model {spec.model} of {spec.name} "
            f"({_reason(e)}); give the weights of that model."
        ) from None
    set_model_preprocess_cfg(model, spec.preprocess)
    return model.float().eval()


def load_open_clip_as_openai(spec: OpenClipSpec, weights: str, build) -> nn.Module:
    """The OpenAI-shaped open_clip model of ``spec`` as the project's ``clip.model.CLIP``
    (``build``: state dict -> CLIP, as ``loading.build_clip_from_state_dict``), fp32, with the
    model's attention heads, its GELU (nn.GELU unless quick_gelu) and its preprocessing
    (``visual.image_mean`` / ``image_std``). One sentence if the model is not OpenAI-shaped."""
    issue = openai_shape_issue(spec.model_cfg)
    if issue is not None:
        raise UserError(not_openai_shaped_message(spec.name, issue))
    model = create_open_clip(spec, weights)
    state_dict = {k: v for k, v in model.state_dict().items() if k != "attn_mask"}
    towers = ("visual.transformer", "transformer")
    heads = {tower: model.get_submodule(tower).resblocks[0].attn.num_heads for tower in towers}
    del model
    try:
        # OpenAI's blocks have MLPs of 4 x width: built with stand-ins of that shape, then
        # given the model's own (ViT-bigG-14, ViT-g-14: other ratios)
        mlps = {k: v for k, v in state_dict.items() if ".mlp.c_" in k}
        clip_model = build({**state_dict, **_mlp_stand_ins(mlps)})
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        raise UserError(
            not_openai_shaped_message(spec.name, f"its weights do not fit OpenAI's CLIP ({e})")
        ) from None
    for tower in towers:
        for i, block in enumerate(clip_model.get_submodule(tower).resblocks):
            # OpenAI's CLIP derives width // 64 heads; open_clip's models set their own
            # (ViT-H-14: 16 of width 80)
            block.attn.num_heads = heads[tower]
            block.attn.head_dim = block.attn.embed_dim // heads[tower]
            if not spec.model_cfg.get("quick_gelu", False):
                block.mlp.gelu = nn.GELU()
            for name in ("c_fc", "c_proj"):
                weight = mlps[f"{tower}.resblocks.{i}.mlp.{name}.weight"]
                bias = mlps[f"{tower}.resblocks.{i}.mlp.{name}.bias"]
                with torch.device("meta"):
                    linear = nn.Linear(weight.shape[1], weight.shape[0])
                linear.weight, linear.bias = nn.Parameter(weight), nn.Parameter(bias)
                setattr(block.mlp, name, linear)
    clip_model.visual.image_mean, clip_model.visual.image_std = spec.mean, spec.std
    return clip_model.float().eval()


def _mlp_stand_ins(mlps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Meta tensors of the shapes OpenAI's blocks give ``mlps`` (hidden width 4 x width)."""
    out = {}
    for key in mlps:
        block = key.rsplit(".mlp.", 1)[0]
        width = mlps[f"{block}.mlp.c_proj.bias"].shape[0]
        shape = {"c_fc.weight": (4 * width, width), "c_fc.bias": (4 * width,),
                 "c_proj.weight": (width, 4 * width), "c_proj.bias": (width,)}  # fmt: skip
        out[key] = torch.empty(shape[key.rsplit(".mlp.", 1)[1]], device="meta")
    return out


def not_openai_shaped_message(name: str, issue: str) -> str:
    return (
        f"{name} is not an OpenAI-shaped ViT CLIP ({issue}), so only ZeroshotCLIP, "
        "ZeroshotCLIP2 and a zero-shot PromptKD teacher (TRAINER.PROMPTKD.TEACHER_TRAINER "
        "ZeroshotCLIP) use it; CoOp, CoCoOp, IVLP, MaPLe, PromptSRC and the PromptKD student "
        f"need an OpenAI-shaped open_clip ViT (e.g. {PREFIX}ViT-B-16:laion2b_s34b_b88k)."
    )


class OpenClipNative(nn.Module):
    """An open_clip model run by open_clip itself (any architecture): ``visual`` (the image
    tower: unnormalised pooled features, as open_clip's ``encode_image``), ``text`` (open_clip's
    ``encode_text`` of strings, with the model's own tokenizer and context length),
    ``logit_scale`` / ``logit_bias`` (raw), and the model's input (``input_resolution``,
    ``image_mean``, ``image_std``)."""

    def __init__(self, model: nn.Module, tokenizer, spec: OpenClipSpec):
        super().__init__()
        self.name = spec.name
        self.input_resolution = spec.resolution
        self.image_mean, self.image_std = spec.mean, spec.std
        self.logit_scale = model.logit_scale
        self.logit_bias = getattr(model, "logit_bias", None)
        self.visual = model.visual
        if getattr(self.visual, "output_tokens", False):  # CoCa: pooled features only, as
            self.visual.output_tokens = False  # its encode_image (the tokens feed its decoder)
        model.visual = None  # the text side keeps the rest (encode_text never reads visual)
        self.text = _OpenClipText(model, tokenizer)


class _OpenClipText(nn.Module):
    def __init__(self, model: nn.Module, tokenizer):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer

    def forward(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return self.model.encode_text(self.tokenizer(prompts).to(device))


def open_clip_tokenizer(spec: OpenClipSpec):
    """The model's own tokenizer: open_clip's choice for its own names; for a config file,
    its ``hf_tokenizer_name`` (Hugging Face) or CLIP's BPE, at its context length."""
    open_clip = require_open_clip()
    text = spec.model_cfg.get("text_cfg", {})
    context_length = text.get("context_length", OPENAI_CONTEXT_LENGTH)
    try:
        if spec.builtin:
            return open_clip.get_tokenizer(spec.model.replace("/", "-"), context_length)
        kwargs = dict(text.get("tokenizer_kwargs") or {})
        if text.get("hf_tokenizer_name"):
            return open_clip.tokenizer.HFTokenizer(
                text["hf_tokenizer_name"], context_length=context_length,
                tokenizer_mode=text.get("tokenizer_mode"), **kwargs,
            )  # fmt: skip
        return open_clip.tokenizer.SimpleTokenizer(context_length=context_length, **kwargs)
    except Exception as e:  # a Hugging Face tokenizer offline, transformers missing ...
        raise UserError(
            f"Cannot build the tokenizer of {spec.name} ({_reason(e)}); "
            "fetch it where the network allows (Hugging Face's cache) or install what it names."
        ) from None


def load_open_clip_native(spec: OpenClipSpec, weights: str) -> OpenClipNative:
    """Any open_clip model of ``spec`` with ``weights``, run by open_clip (fp32, eval, CPU)."""
    return OpenClipNative(create_open_clip(spec, weights), open_clip_tokenizer(spec), spec).eval()


def renormalize(
    images: torch.Tensor,
    from_mean: tuple[float, ...],
    from_std: tuple[float, ...],
    to_mean: tuple[float, ...],
    to_std: tuple[float, ...],
) -> torch.Tensor:
    """``images`` (B, 3, H, W) normalised with ``from_*`` as if normalised with ``to_*``
    (exact: one affine map per channel); ``images`` itself when they are equal."""
    if tuple(from_mean) == tuple(to_mean) and tuple(from_std) == tuple(to_std):
        return images

    def col(v) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)

    scale = col(from_std) / col(to_std)  # x_to = (x_from * s_from + m_from - m_to) / s_to
    shift = (col(from_mean) - col(to_mean)) / col(to_std)
    return (images.float() * scale + shift).to(images.dtype)
