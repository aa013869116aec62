"""Find and load CLIP weights by model name, offline-first.

Folders searched, in order: ``root`` (config ``MODEL.CLIP_ROOT``), the environment variable
``CLIP_ROOT``, OpenAI's ``~/.cache/clip``. A missing OpenAI model is downloaded into the
first (checksum verified) when the network allows, a missing tiny model built there; the
pretrained stand-ins are read from the repository's own copy. ``open_clip:<model>:<weights>``
names an open_clip model (``dassl_ext.modeling.openclip``): its weights file is found the
same way, and an OpenAI-shaped one loads as the same CLIP class.
"""

import contextlib
import contextvars
import logging
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass

import torch

from dassl_ext.errors import UserError
from dassl_ext.modeling import openclip
from dassl_ext.modeling._clip import clip
from dassl_ext.modeling.prompted import clip_weight_tensors
from dassl_ext.modeling.standins import STANDIN_NAMES, standin_path
from dassl_ext.modeling.tiny import TINY_SPECS, save_tiny_clip, tiny_file_matches
from dassl_ext.modeling.weights_file import _reason, read_clip_state_dict
from dassl_ext.utils.atomic import atomic_write

logger = logging.getLogger(__name__)

OPENAI_CACHE = os.path.join("~", ".cache", "clip")
DOWNLOAD_TIMEOUT_S = 30


def clip_filename(name: str) -> str:
    """File name of a model: OpenAI's own (``ViT-L/14@336px`` -> ``ViT-L-14-336px.pt``),
    else ``name`` with ``/`` -> ``-`` and ``.pt`` appended (``tiny-student.pt``)."""
    if name in clip.clip._MODELS:
        return os.path.basename(clip.clip._MODELS[name])
    return name if name.endswith(".pt") else name.replace("/", "-") + ".pt"


def clip_search_dirs(root: str | None = None) -> list[str]:
    """The folders searched for weights, most specific first, without duplicates."""
    dirs = (root, os.environ.get("CLIP_ROOT"), OPENAI_CACHE)
    return list(dict.fromkeys(os.path.abspath(os.path.expanduser(d)) for d in dirs if d))


def clip_root_from_cfg(cfg) -> str:
    """The primary weights folder for a config: ``MODEL.CLIP_ROOT``, else env ``CLIP_ROOT``,
    else ``~/.cache/clip``."""
    return clip_search_dirs(getattr(cfg.MODEL, "CLIP_ROOT", "") or None)[0]


def find_clip_file(name: str, root: str | None = None, download: bool = True) -> str:
    """Path of the weights of ``name`` (or ``name``, a file's path); builds tiny models and
    downloads OpenAI ones if missing; an ``open_clip:`` name's weights file."""
    if openclip.is_open_clip_name(name):
        return openclip.find_open_clip_weights(name, clip_search_dirs(root), download)
    if os.path.isfile(name):
        return name
    if not name.strip():
        raise UserError(
            "The CLIP model name is empty (MODEL.BACKBONE.NAME ''); use an OpenAI name such as "
            f"ViT-B/16 ({', '.join(clip.clip._MODELS)}), a tiny model or a weights file's path."
        )
    filename = clip_filename(name)
    dirs = clip_search_dirs(root)
    for d in dirs:
        path = os.path.join(d, filename)
        if os.path.isdir(path):  # else "not found" (or a failed write) while it is there
            raise UserError(
                f"CLIP weights {path} is a folder, not a weights file; move it away and put the "
                "weights file there (or set MODEL.CLIP_ROOT to another folder)."
            )
        if os.path.isfile(path):
            if name in TINY_SPECS and not tiny_file_matches(path, name):
                logger.warning("%s does not match the tiny spec %r; rebuilding it", path, name)
                return save_tiny_clip(path, name)
            return path
    if name in STANDIN_NAMES and os.path.isfile(standin_path(name)):
        return standin_path(name)
    target = os.path.join(dirs[0], filename)
    if name in TINY_SPECS:
        logger.info("Writing tiny CLIP %r to %s", name, target)
        return save_tiny_clip(target, name)
    url = clip.clip._MODELS.get(name)
    reason = "downloads are disabled"
    if url is None:
        reason = f"'{name}' is not an OpenAI model name ({', '.join(clip.clip._MODELS)})"
    elif download:
        try:
            return _download(url, target)
        except (OSError, RuntimeError) as e:  # URLError is an OSError; bad checksum a RuntimeError
            reason = f"download failed: {e}"
    where = f"download it from {url}" if url else "put a CLIP state dict there"
    raise UserError(
        f"CLIP weights '{filename}' not found in {', '.join(dirs)} ({reason}); {where} "
        "into one of these folders (set MODEL.CLIP_ROOT or the environment variable CLIP_ROOT)."
    )


def _download(url: str, target: str) -> str:
    """Download ``url`` to ``target`` via OpenAI's checksummed downloader, atomically."""
    folder = os.path.dirname(target)  # atomic_write creates it before it calls download
    logger.info("Downloading %s to %s", url, target)

    def download(tmp_file: str) -> None:
        # OpenAI's downloader names the file itself: into a private folder, then moved
        old_timeout = socket.getdefaulttimeout()
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # no network should fail, not hang
            try:
                os.replace(clip.clip._download(url, tmp), tmp_file)
            finally:
                socket.setdefaulttimeout(old_timeout)

    return atomic_write(target, download)


_WEIGHT_DTYPE: contextvars.ContextVar[torch.dtype] = contextvars.ContextVar(
    "clip_weight_dtype", default=torch.float32
)


@contextlib.contextmanager
def clip_weight_dtype(dtype: torch.dtype):
    """Within this context ``load_clip`` returns the CLIP weights that ``cast_frozen_weights``
    casts (conv / linear / projections) in ``dtype``, converted straight from the file, so a
    frozen model in bf16 or fp16 never exists in fp32 (half the peak memory of loading)."""
    token = _WEIGHT_DTYPE.set(dtype)
    try:
        yield
    finally:
        _WEIGHT_DTYPE.reset(token)


@dataclass(frozen=True)
class ClipSizes:
    """What a config must agree with, read from the shapes in a CLIP weights file."""

    name: str  # the model name (or path) it was asked for by
    input_resolution: int  # pixels per side
    vision_layers: int | None  # transformer blocks of a ViT image tower; None for a ResNet
    text_layers: int
    # open_clip models: why it is not OpenAI-shaped (None: it is, or an OpenAI model) and its
    # own normalisation (None: OpenAI's, which the configs set in INPUT.PIXEL_MEAN / STD)
    openai_shape_issue: str | None = None
    image_mean: tuple[float, ...] | None = None
    image_std: tuple[float, ...] | None = None
    embed_dim: int | None = None  # width of the joint image-text embedding


def clip_sizes(name: str, root: str | None = None) -> ClipSizes:
    """The sizes of CLIP ``name`` (found as :func:`find_clip_file` does) from its tensor
    shapes, as ``clip.model.build_model`` derives them (an open_clip model's from its model
    config); builds no model."""
    path = find_clip_file(name, root)
    if openclip.is_open_clip_name(name):
        return ClipSizes(name, **openclip.open_clip_sizes(name))
    sd = read_clip_state_dict(path, mmap=True)

    def blocks(prefix: str) -> int:
        depth = prefix.count(".")
        return len({k.split(".")[depth] for k in sd if k.startswith(prefix)})

    try:
        if "visual.proj" in sd:  # ViT: patch size x grid of patches
            grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
            resolution = sd["visual.conv1.weight"].shape[-1] * grid
            vision_layers = blocks("visual.transformer.resblocks.")
        else:  # ResNet: the attention pool sees a 32x downsampled grid
            grid = round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5)
            resolution, vision_layers = 32 * grid, None
    except KeyError as e:
        raise UserError(
            f"'{path}' is not a CLIP checkpoint (no tensor {e}); replace it with OpenAI's file."
        ) from None
    text_layers = blocks("transformer.resblocks.")
    embed_dim = int(sd["text_projection"].shape[1]) if "text_projection" in sd else None
    return ClipSizes(name, int(resolution), vision_layers, text_layers, embed_dim=embed_dim)


def load_clip(name: str, root: str | None = None, download: bool = True) -> "clip.model.CLIP":
    """Load CLIP ``name`` (OpenAI name, tiny name or file path; see ``find_clip_file``): fp32,
    eval mode, on the CPU (conv / linear weights in another dtype inside ``clip_weight_dtype``).
    Any CLIP-shaped state dict works: ``clip.model.build_model`` reads the architecture; an
    OpenAI-shaped open_clip model loads as the same class (else one sentence naming the
    trainers that take it: :func:`load_zero_shot_clip`)."""
    path = find_clip_file(name, root, download)
    if openclip.is_open_clip_name(name):
        spec = openclip.open_clip_spec(name)
        model = openclip.load_open_clip_as_openai(spec, path, build_clip_from_state_dict)
        return _cast_weights(model)
    state_dict = read_clip_state_dict(path)
    # NaN weights would surface as a NaN loss ("lower OPTIM.LR") or NaN logits much later;
    # one pass over the tensors (0.8 s for ViT-B/16 measured on 2 busy cores) names the file.
    bad = next(
        (k for k, t in state_dict.items() if t.is_floating_point() and not t.isfinite().all()),
        None,
    )
    if bad is not None:
        raise UserError(
            f"CLIP weights '{path}' hold NaN or infinite values (tensor '{bad}'); the file is "
            "damaged: replace it with OpenAI's (or the stand-in's) file."
        )
    try:
        model = build_clip_from_state_dict(state_dict)
    except (KeyError, RuntimeError, ValueError, AssertionError) as e:
        raise UserError(
            f"'{path}' is not a CLIP checkpoint that clip.model.build_model can read "
            f"({_reason(e)}); replace it with OpenAI's file."
        ) from None
    del state_dict  # the model now holds the only references: each cast below frees its source
    return _cast_weights(model)


def load_zero_shot_clip(
    name: str, root: str | None = None, download: bool = True
) -> "clip.model.CLIP | openclip.OpenClipNative":
    """As :func:`load_clip`, except that an open_clip model that is not OpenAI-shaped loads as
    :class:`~dassl_ext.modeling.openclip.OpenClipNative` (run by open_clip, zero-shot only)."""
    if openclip.is_open_clip_name(name):
        spec = openclip.open_clip_spec(name)
        if openclip.openai_shape_issue(spec.model_cfg) is not None:
            path = find_clip_file(name, root, download)
            return _cast_weights(openclip.load_open_clip_native(spec, path))
    return load_clip(name, root, download)


def _cast_weights(model: torch.nn.Module) -> torch.nn.Module:
    """fp32, the ``clip_weight_tensors`` in the ``clip_weight_dtype`` of the context; eval."""
    weights = {id(t) for t in clip_weight_tensors(model)}
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.data = t.data.to(_WEIGHT_DTYPE.get() if id(t) in weights else torch.float32)
    return model.eval()


def build_clip_from_state_dict(state_dict: dict[str, torch.Tensor]) -> "clip.model.CLIP":
    """``clip.model.build_model(state_dict)`` without its random initialisation and copy: the
    model is built on the meta device and takes the tensors of ``state_dict`` as its weights
    (their dtypes), so loading holds one copy of the weights, not two."""
    with torch.device("meta"), warnings.catch_warnings():
        # build_model copies the weights into the meta model: a no-op that warns per tensor
        warnings.simplefilter("ignore", UserWarning)
        model = clip.model.build_model(state_dict)  # also drops its non-weight keys
    model.load_state_dict(state_dict, assign=True)
    mask = model.build_attention_mask()  # the text tower's causal mask, built on meta above
    for block in model.transformer.resblocks:
        block.attn_mask = mask
    return model.eval()
