"""A deployable PromptKD student: one file, no teacher, no other weight files.

The file (``torch.save`` of tensors, strings and numbers only, so it loads with
``weights_only=True``) holds the student's state dict (prompted image encoder, prompts,
projector, logit scale, the teacher's class text features), the arguments that rebuild its
modules (``architecture``), the class names in label order and the test-time preprocessing.
Files of the first format (``promptkd-student/1``) lack the architecture; theirs is read
from the tensor shapes, with CLIP's head count ``width // 64``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dassl_ext.config import get_cfg_default
from dassl_ext.data.transforms import build_transform
from dassl_ext.modeling import PromptedImageEncoder, clip
from dassl_ext.utils.atomic import write_torch_atomic
from dassl_ext.utils.checkpoint import load_checkpoint
from trainers.promptkd_student import PromptKDStudent

FORMAT = "promptkd-student/2"
FORMAT_V1 = "promptkd-student/1"  # no "architecture"; still loads
PREPROCESS_KEYS = ("SIZE", "INTERPOLATION", "PIXEL_MEAN", "PIXEL_STD", "TRANSFORMS")


def export_student(trainer, path: str) -> str:
    """Write the (loaded) student of a PromptKD ``trainer`` to ``path``; returns ``path``."""
    model = trainer.model
    if model.class_text_features.numel() == 0:
        raise RuntimeError("The student has no class text features to export.")
    state = {
        k: (v.float() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()
    }
    cfg = trainer.cfg
    obj = {
        "format": FORMAT,
        "architecture": student_architecture(model),
        "state_dict": state,
        "classnames": list(trainer.classnames),
        "preprocess": {k: _plain(cfg.INPUT[k]) for k in PREPROCESS_KEYS},
        "source": {
            "dataset": cfg.DATASET.NAME,
            "backbone": cfg.MODEL.BACKBONE.NAME,
            "teacher": cfg.TRAINER.PROMPTKD.TEACHER_NAME,
            "output_dir": cfg.OUTPUT_DIR,
        },
    }
    return write_torch_atomic(path, obj)


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def student_architecture(model: PromptKDStudent) -> dict[str, int]:
    """The arguments that rebuild ``model``'s modules (read from the modules themselves)."""
    encoder = model.image_encoder
    return {
        "input_resolution": encoder.input_resolution,
        "patch_size": encoder.conv1.kernel_size[0],
        "width": encoder.conv1.out_channels,
        "layers": len(encoder.transformer.resblocks),
        "heads": encoder.transformer.resblocks[0].attn.num_heads,
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
    encoder = PromptedImageEncoder(visual, arch["n_ctx"], arch["prompt_depth"])
    return PromptKDStudent(encoder, logit_scale, arch["output_dim"], arch["teacher_dim"])


def architecture_from_shapes(sd: dict[str, torch.Tensor]) -> dict[str, int]:
    """The architecture of a ``promptkd-student/1`` file, read from its tensor shapes."""
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


class ExportedStudent:
    """A loaded export: ``predict(paths, topk)`` -> one dict per image."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        obj = load_checkpoint(path)  # missing or corrupt: one sentence naming the file
        if not isinstance(obj, dict) or obj.get("format") not in (FORMAT, FORMAT_V1):
            raise ValueError(f"{path} is not a PromptKD student export ({FORMAT}).")
        self.device = torch.device(device)
        sd = obj["state_dict"]
        arch = obj.get("architecture") or architecture_from_shapes(sd)
        self.model = build_student(arch, sd["logit_scale"])
        self.model.load_state_dict(sd, strict=True)
        self.model.to(self.device).eval()
        self.classnames: list[str] = obj["classnames"]
        cfg = get_cfg_default()
        for k, v in obj["preprocess"].items():
            cfg.INPUT[k] = tuple(v) if k == "SIZE" else v
        self.transform = build_transform(cfg, is_train=False)

    @torch.no_grad()
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of preprocessed images (B, 3, H, W) over all classes."""
        return self.model(images.to(self.device), self.model.class_text_features).float()

    def predict(self, paths: Sequence[str], topk: int = 5, batch_size: int = 32) -> list[dict]:
        """Top-k classes with probabilities for each image file."""
        from PIL import Image

        out = []
        k = min(topk, len(self.classnames))
        for i in range(0, len(paths), batch_size):
            chunk = paths[i : i + batch_size]
            batch = torch.stack([self.transform(Image.open(p).convert("RGB")) for p in chunk])
            probs = F.softmax(self.logits(batch), dim=1)
            top_p, top_i = probs.topk(k, dim=1)
            for p, ps, ids in zip(chunk, top_p.tolist(), top_i.tolist()):
                out.append(
                    {
                        "image": p,
                        "top": [
                            {"class": self.classnames[j], "label": j, "prob": q}
                            for j, q in zip(ids, ps)
                        ],
                    }
                )
        return out
