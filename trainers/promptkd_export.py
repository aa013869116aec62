"""A deployable PromptKD student: one file, no teacher, no other weight files.

The file (tensors, strings and numbers only: it loads with ``weights_only=True``) holds the
student's state dict (class text features included), the arguments that rebuild its modules
(``architecture``), the class names in label order and the test-time preprocessing. Files of
the first format (``promptkd-student/1``) lack the architecture: it is read from the shapes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from dassl_ext.config import get_cfg_default
from dassl_ext.data import read_image
from dassl_ext.data.transforms import build_transform
from dassl_ext.errors import UserError, first_line
from dassl_ext.evaluation.memory import is_out_of_memory
from dassl_ext.modeling import PromptedImageEncoder, clip
from dassl_ext.utils.atomic import write_torch_atomic
from dassl_ext.utils.checkpoint import CorruptCheckpointError, load_checkpoint
from trainers.promptkd_student import PromptKDStudent

FORMAT = "promptkd-student/2"
FORMAT_V1 = "promptkd-student/1"  # no "architecture"; still loads
PREPROCESS_KEYS = ("SIZE", "INTERPOLATION", "PIXEL_MEAN", "PIXEL_STD", "TRANSFORMS")


def export_student(trainer, path: str) -> str:
    """Write the (loaded) student of a PromptKD ``trainer`` to ``path``; returns ``path``."""
    model = trainer.model
    if model.class_text_features.numel() == 0:
        raise UserError(
            "The student has no class text features to export: its checkpoint holds none and "
            "there is no teacher to compute them; pass TRAINER.PROMPTKD.TEACHER_CKPT <file> "
            "after RUN_DIR."
        )
    state = {
        k: (v.float() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()
    }
    cfg = trainer.cfg
    obj = {
        "format": FORMAT,
        "architecture": student_architecture(model),
        "state_dict": state,
        "classnames": list(trainer.classnames),
        "preprocess": {
            k: list(v) if isinstance(v := cfg.INPUT[k], (tuple, list)) else v
            for k in PREPROCESS_KEYS
        },
        "source": {
            "dataset": cfg.DATASET.NAME,
            "backbone": cfg.MODEL.BACKBONE.NAME,
            "teacher": cfg.TRAINER.PROMPTKD.TEACHER_NAME,
            "output_dir": cfg.OUTPUT_DIR,
        },
    }
    return write_torch_atomic(path, obj)


def student_architecture(model: PromptKDStudent) -> dict[str, int | str]:
    """The arguments that rebuild ``model``'s modules; ``activation`` / ``mlp_width`` only
    where they are not OpenAI's (QuickGELU, 4 x width): an open_clip backbone's."""
    encoder = model.image_encoder
    block = encoder.transformer.resblocks[0]
    extra: dict[str, int | str] = {}
    if isinstance(block.mlp.gelu, nn.GELU):
        extra["activation"] = "gelu"
    if block.mlp.c_fc.out_features != 4 * encoder.conv1.out_channels:
        extra["mlp_width"] = block.mlp.c_fc.out_features
    return {
        **extra,
        "input_resolution": encoder.input_resolution,
        "patch_size": encoder.conv1.kernel_size[0],
        "width": encoder.conv1.out_channels,
        "layers": len(encoder.transformer.resblocks),
        "heads": block.attn.num_heads,
        "output_dim": encoder.output_dim,
        "n_ctx": encoder.n_ctx,
        "prompt_depth": encoder.depth,
        "teacher_dim": model.VPT_image_trans.conv1[3].out_channels,
    }


def build_student(arch: dict[str, int], logit_scale: torch.Tensor) -> PromptKDStudent:
    """An (untrained) student with the modules ``arch`` describes."""
    visual = clip.model.VisionTransformer(
        arch["input_resolution"], arch["patch_size"], arch["width"], arch["layers"],
        arch["heads"], arch["output_dim"],
    )  # fmt: skip
    width, mlp = arch["width"], arch.get("mlp_width")
    for block in visual.transformer.resblocks:
        if arch.get("activation") == "gelu":
            block.mlp.gelu = nn.GELU()
        if mlp:
            block.mlp.c_fc, block.mlp.c_proj = nn.Linear(width, mlp), nn.Linear(mlp, width)
    encoder = PromptedImageEncoder(visual, arch["n_ctx"], arch["prompt_depth"])
    return PromptKDStudent(encoder, logit_scale, arch["output_dim"], arch["teacher_dim"])


def architecture_from_shapes(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    """The architecture of a ``promptkd-student/1`` file, from its tensor shapes."""
    width, _, patch, _ = sd["image_encoder.conv1.weight"].shape
    grid = round((sd["image_encoder.positional_embedding"].shape[0] - 1) ** 0.5)
    n_ctx = sd["image_encoder.VPT"].shape[0] if "image_encoder.VPT" in sd else 0
    return {
        "input_resolution": patch * grid,
        "patch_size": patch,
        "width": width,
        "layers": len({k.split(".")[3] for k in sd if k.startswith("image_encoder.transformer.")}),
        "heads": width // 64,  # CLIP's rule (clip.model.build_model); v1 did not store it
        "output_dim": sd["image_encoder.proj"].shape[1],
        "n_ctx": n_ctx,
        "prompt_depth": (n_ctx > 0) + sum(k.endswith(".VPT_shallow") for k in sd),
        "teacher_dim": sd["VPT_image_trans.conv1.3.weight"].shape[0],
    }


def preprocess_transform(preprocess: dict) -> Callable:
    """The test-time transform of an export's ``preprocess`` (INPUT keys)."""
    cfg = get_cfg_default()
    for k, v in preprocess.items():
        cfg.INPUT[k] = tuple(v) if k == "SIZE" else v
    return build_transform(cfg, is_train=False)


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` (``--device``), or a UserError if it does not exist here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(
            f"--device {name} is not a torch device; use cpu, cuda or cuda:<index>."
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise UserError(
                f"--device {name}: this machine has {count} CUDA device(s) that torch can use; "
                "use --device cpu" + (f" or cuda:0..cuda:{count - 1}." if count else ".")
            )
    return device


def _what_it_holds(obj: Any) -> str:
    """What a file that is not an export holds, in words, and what to do instead."""
    if isinstance(obj, dict) and "state_dict" in obj and "epoch" in obj:
        return (
            f"it is a training checkpoint (epoch {obj['epoch']}); export its run with "
            "python scripts/export_student.py RUN_DIR and pass the file it writes"
        )
    if isinstance(obj, dict) and "format" in obj:
        return f"its format is {obj['format']!r}; this version reads {FORMAT} and {FORMAT_V1}"
    if isinstance(obj, dict) and ("text_projection" in obj or "visual.proj" in obj):
        return "it holds CLIP weights; pass the file written by scripts/export_student.py"
    return (
        f"it holds a {type(obj).__name__}{' without a format key' if isinstance(obj, dict) else ''}"
        "; pass the file written by scripts/export_student.py"
    )


def require_export_file(path: str, what: str = "student export", suffix: str = "") -> None:
    """A UserError unless ``path`` is a file: a folder, or nothing there, is named with the
    command that writes the file (``suffix``: its extra flag, e.g. `` --onnx``)."""
    name = "student" + (".onnx" if suffix else ".pt")
    if os.path.isdir(path):
        raise UserError(
            f"{path} is a folder, not a {what}; pass the file written by "
            f"scripts/export_student.py RUN_DIR{suffix} (by default RUN_DIR/{name})."
        )
    if not os.path.isfile(path):
        raise UserError(
            f"{what[0].upper()}{what[1:]} {path} does not exist; write it with python "
            f"scripts/export_student.py RUN_DIR{suffix} (RUN_DIR/{name}), or check the path."
        )


def load_export(path: str) -> dict:
    """The contents of a student export file; a missing, corrupt or foreign one is a UserError
    naming it and what to pass instead."""
    require_export_file(path)
    try:
        obj = load_checkpoint(path)
    except CorruptCheckpointError as e:
        raise UserError(
            f"Checkpoint {path} is truncated or corrupt ({e.reason}); export the run again "
            "with scripts/export_student.py, or pass an intact copy."
        ) from None
    if not isinstance(obj, dict) or obj.get("format") not in (FORMAT, FORMAT_V1):
        raise UserError(f"{path} is not a PromptKD student export: {_what_it_holds(obj)}.")
    return obj


class ExportedStudent:
    """A loaded export: ``predict(paths, topk)`` -> one dict per image."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        obj = load_export(path)
        self.device = resolve_device(device)
        try:
            sd = obj["state_dict"]
            arch = obj.get("architecture") or architecture_from_shapes(sd)
            self.model = build_student(arch, sd["logit_scale"])
            self.model.load_state_dict(sd, strict=True)
            self.classnames: list[str] = [str(c) for c in obj["classnames"]]
            if len(self.classnames) != self.model.class_text_features.shape[0]:
                raise ValueError(
                    f"{len(self.classnames)} class names for "
                    f"{self.model.class_text_features.shape[0]} class text features"
                )
            size = tuple(obj["preprocess"]["SIZE"])
            if size != (arch["input_resolution"],) * 2:
                raise ValueError(
                    f"preprocess SIZE {list(size)} for a model of input resolution "
                    f"{arch['input_resolution']}"
                )
            self.transform = preprocess_transform(obj["preprocess"])
            bad = next((k for k, v in sd.items() if v.is_floating_point() and
                        not torch.isfinite(v).all()), None)  # fmt: skip
            if bad is not None:
                raise ValueError(f"tensor {bad!r} holds NaN or infinite values")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
            reason = first_line(e)
            raise UserError(
                f"{path} is a damaged PromptKD student export ({type(e).__name__}: {reason}); "
                "export the run again with scripts/export_student.py."
            ) from None
        self.model.to(self.device).eval()

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of preprocessed images (B, 3, H, W) over all classes."""
        return self.model(images.to(self.device), self.model.class_text_features).float()

    def load_image(self, path: str) -> torch.Tensor:
        """One preprocessed image (3, H, W), read as training reads it; an unusable file is a
        UserError naming it and why."""
        try:
            return self.transform(read_image(path))
        except (UserError, OSError, ValueError, RuntimeError, MemoryError, SyntaxError,
                Image.DecompressionBombError) as e:  # fmt: skip
            raise UserError(f"{path} {image_problem(path, e)}") from None

    def iter_predictions(
        self, paths: Sequence[str], topk: int = 5, batch_size: int = 32
    ) -> Iterator[dict]:
        """One dict per path, in order: ``{"image", "top": [{"class", "label", "prob"}]}``,
        or ``{"image", "error"}`` for a file that cannot be used (the others go on)."""
        k = min(topk, len(self.classnames))
        for i in range(0, len(paths), batch_size):
            chunk, images, errors = [], [], {}
            for p in paths[i : i + batch_size]:
                try:
                    images.append(self.load_image(p))
                    chunk.append(p)
                except UserError as e:
                    errors[p] = str(e)
            probs = self._probabilities(images) if images else None
            top = iter(zip(*probs.topk(k, dim=1))) if probs is not None else iter(())
            for p in paths[i : i + batch_size]:
                if p in errors:
                    yield {"image": p, "error": errors[p]}
                    continue
                ps, ids = next(top)
                yield {
                    "image": p,
                    "top": [
                        {"class": self.classnames[j], "label": j, "prob": q}
                        for j, q in zip(ids.tolist(), ps.tolist())
                    ],
                }

    def _probabilities(self, images: list[torch.Tensor]) -> torch.Tensor:
        try:
            return F.softmax(self.logits(torch.stack(images)), dim=1)
        except (MemoryError, RuntimeError) as e:
            if not is_out_of_memory(e):
                raise
            raise UserError(
                f"Classifying a batch of {len(images)} images ran out of memory "
                f"({type(e).__name__}); use a smaller --batch-size, e.g. "
                f"{max(1, len(images) // 2)}."
            ) from None

    def predict(self, paths: Sequence[str], topk: int = 5, batch_size: int = 32) -> list[dict]:
        """:meth:`iter_predictions` of the usable image files."""
        return [r for r in self.iter_predictions(paths, topk, batch_size) if "top" in r]


def image_problem(path: str, error: BaseException) -> str:
    """Why ``path`` cannot be classified, in words (after ``error`` reading it)."""
    if not os.path.exists(path):
        return "does not exist (any more)"
    if os.path.isdir(path):
        return "is a folder"
    try:
        with open(path, "rb") as f:
            f.read(1)
    except PermissionError:
        return "cannot be read (permission denied); make it readable"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if os.path.getsize(path) == 0:
        return "is empty (0 bytes)"
    if isinstance(error, Image.DecompressionBombError):
        return f"is too large to decode safely ({error})"
    if isinstance(error, UserError):  # read_image's sentence names the file: keep its reason
        text, marker = str(error), f"{path} ("
        reason = text.split(marker, 1)[1].rsplit(")", 1)[0] if marker in text else text
        return f"is not a readable image ({reason})"
    return f"is not a readable image ({type(error).__name__}: {error})"
