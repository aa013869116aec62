"""Image transforms selected by Dassl's names in ``INPUT.TRANSFORMS``.

Train: the listed augmentations, then ToTensor and (if listed) Normalize.
Test: Resize(shorter side to max(INPUT.SIZE)) -> CenterCrop(INPUT.SIZE) -> ToTensor -> Normalize.
``INPUT.BACKEND tensor`` builds the same crops with torchvision's v2 transforms on uint8
tensors (decoded by ``tensor_transforms.read_image_tensor``), cropped before they become float.
"""

from __future__ import annotations

import torch
import torchvision.transforms as T
from torchvision.transforms import InterpolationMode, v2

from dassl_ext.config.rules import OneOf, check_rules, register_config_rules
from dassl_ext.errors import UserError

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

AVAILABLE_TRANSFORMS = (
    "random_flip", "random_resized_crop", "random_crop", "random_translation", "center_crop",
    "colorjitter", "randomgrayscale", "gaussian_blur", "cutout", "normalize", "gaussian_noise",
    "instance_norm",
)  # fmt: skip
# What INPUT.BACKEND tensor implements: the transforms CLIP prompt learners use.
TENSOR_TRANSFORMS = (
    "random_resized_crop",
    "random_crop",
    "center_crop",
    "random_flip",
    "normalize",
)
_RULES = (
    OneOf("INPUT.INTERPOLATION", tuple(INTERPOLATION_MODES)),
    OneOf("INPUT.BACKEND", ("pil", "tensor")),
)
register_config_rules(*_RULES)


def build_transform(cfg, is_train: bool = True) -> T.Compose:
    """The train or test transform of Dassl for `cfg.INPUT` (names in INPUT.TRANSFORMS); it
    takes what ``image_reader(cfg)`` returns (a PIL image, or a uint8 tensor)."""
    check_rules(cfg, _RULES)  # also for a config that validate_config did not see
    choices = list(cfg.INPUT.TRANSFORMS)
    unknown = [c for c in choices if c not in AVAILABLE_TRANSFORMS]
    if unknown:
        raise UserError(
            f"INPUT.TRANSFORMS has unknown transform '{unknown[0]}'; "
            f"use names from: {', '.join(AVAILABLE_TRANSFORMS)}."
        )
    tensor = cfg.INPUT.BACKEND == "tensor"
    unsupported = [c for c in choices if c not in TENSOR_TRANSFORMS]
    if tensor and unsupported:
        raise UserError(
            f"INPUT.BACKEND tensor does not implement the transform '{unsupported[0]}'; "
            f"use INPUT.BACKEND pil or only: {', '.join(TENSOR_TRANSFORMS)}."
        )
    tv = v2 if tensor else T  # the same classes, for uint8 tensors or PIL images
    interp = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    size = cfg.INPUT.SIZE
    size = (size, size) if isinstance(size, int) else tuple(size)
    if cfg.INPUT.NO_TRANSFORM:
        tfms = [tv.Resize(size, interpolation=interp)]
    elif is_train:
        tfms = _train_transforms(tv, cfg, choices, size, interp)
    else:
        # Resize the shorter side, then crop, as Dassl and CLIP's own preprocessing do.
        tfms = [tv.Resize(max(size), interpolation=interp), tv.CenterCrop(size)]
    tfms.append(v2.ToDtype(torch.float32, scale=True) if tensor else T.ToTensor())
    if is_train and "cutout" in choices:
        tfms.append(Cutout(cfg.INPUT.CUTOUT_N, cfg.INPUT.CUTOUT_LEN))
    if "normalize" in choices:
        tfms.append(tv.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
    if is_train and "gaussian_noise" in choices:
        tfms.append(GaussianNoise(cfg.INPUT.GN_MEAN, cfg.INPUT.GN_STD))
    if "instance_norm" in choices:
        tfms.append(InstanceNormalization())
    return tv.Compose(tfms)


class Cutout:
    """Zero `n_holes` random `length` x `length` squares of a (C, H, W) tensor (Dassl's)."""

    def __init__(self, n_holes: int = 1, length: int = 16) -> None:
        self.n_holes, self.length = n_holes, length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        mask = torch.ones(h, w)
        for _ in range(self.n_holes):
            y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
            half = self.length // 2
            mask[max(y - half, 0) : y + half, max(x - half, 0) : x + half] = 0
        return img * mask


class GaussianNoise:
    """Add N(mean, std) noise to half of the images (Dassl's GaussianNoise, p=0.5)."""

    def __init__(self, mean: float = 0.0, std: float = 0.15, p: float = 0.5) -> None:
        self.mean, self.std, self.p = mean, std, p

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) > self.p:
            return img
        return img + torch.randn_like(img) * self.std + self.mean


class InstanceNormalization:
    """Normalise each channel of one image to zero mean and unit std."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        flat = img.flatten(1)
        mean, std = flat.mean(1), flat.std(1).clamp_min(1e-8)
        return (img - mean[:, None, None]) / std[:, None, None]


def _train_transforms(tv, cfg, choices: list[str], size: tuple[int, int], interp) -> list:
    tfms = []
    if "random_crop" not in choices and "random_resized_crop" not in choices:
        tfms.append(tv.Resize(size, interpolation=interp))  # make sure the size matches
    if "random_translation" in choices:
        # Dassl's Random2DTranslation: upscale by 1/8 half of the time, then crop.
        big = tuple(round(s * 1.125) for s in size)
        grow = T.Compose([T.Resize(big, interpolation=interp), T.RandomCrop(size)])
        tfms.append(T.RandomApply([grow], p=0.5))
    if "random_crop" in choices:
        tfms.append(tv.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
    if "random_resized_crop" in choices:
        scale = tuple(cfg.INPUT.RRCROP_SCALE)
        tfms.append(tv.RandomResizedCrop(size, scale=scale, interpolation=interp))
    if "center_crop" in choices:
        tfms.append(tv.CenterCrop(size))
    if "random_flip" in choices:
        tfms.append(tv.RandomHorizontalFlip())
    i = cfg.INPUT
    if "colorjitter" in choices:
        tfms.append(
            T.ColorJitter(i.COLORJITTER_B, i.COLORJITTER_C, i.COLORJITTER_S, i.COLORJITTER_H)
        )
    if "randomgrayscale" in choices:
        tfms.append(T.RandomGrayscale(p=i.RGS_P))
    if "gaussian_blur" in choices:
        tfms.append(T.RandomApply([T.GaussianBlur(i.GB_K)], p=i.GB_P))
    return tfms
