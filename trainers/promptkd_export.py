"""A deployable PromptKD student: one file, no teacher, no other weight files.

The file (``torch.save`` of tensors, strings and numbers only, so it loads with
``weights_only=True``) holds the student's state dict (prompted image encoder, prompts,
projector, logit scale, the teacher's class text features), the class names in label order
and the test-time preprocessing. The architecture is read back from the tensor shapes, as
``clip.model.build_model`` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dassl_ext.config import get_cfg_default
from dassl_ext.data.transforms import build_transform
from dassl_ext.modeling import PromptedImageEncoder, clip
from dassl_ext.utils.atomic import write_torch_atomic
from trainers.promptkd_student import PromptKDStudent

FORMAT = "promptkd-student/1"
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


def _student_from_state_dict(sd: dict[str, torch.Tensor]) -> PromptKDStudent:
    """Rebuild the student's modules from the shapes of its state dict."""
    width, _, patch, _ = sd["image_encoder.conv1.weight"].shape
    grid = round((sd["image_encoder.positional_embedding"].shape[0] - 1) ** 0.5)
    layers = len({k.split(".")[3] for k in sd if k.startswith("image_encoder.transformer.")})
    output_dim = sd["image_encoder.proj"].shape[1]
    n_ctx = sd["image_encoder.VPT"].shape[0] if "image_encoder.VPT" in sd else 0
    depth = (n_ctx > 0) + sum(k.endswith(".VPT_shallow") for k in sd)
    teacher_dim = sd["VPT_image_trans.conv1.3.weight"].shape[0]
    visual = clip.model.VisionTransformer(
        patch * grid, patch, width, layers, width // 64, output_dim
    )
    encoder = PromptedImageEncoder(visual, n_ctx, depth)
    return PromptKDStudent(encoder, sd["logit_scale"], output_dim, teacher_dim)


class ExportedStudent:
    """A loaded export: ``predict(paths, topk)`` -> one dict per image."""

    def __init__(self, path: str, device: str = "cpu") -> None:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ValueError(f"{path} is not a PromptKD student export ({FORMAT}).")
        self.device = torch.device(device)
        self.model = _student_from_state_dict(obj["state_dict"])
        self.model.load_state_dict(obj["state_dict"], strict=True)
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
