"""``INPUT.BACKEND tensor``: torchvision's image decoders and v2 transforms on uint8 tensors.

The same crops as the PIL path (Dassl's), several times faster per data-loader worker:
decoding by ``torchvision.io`` (libjpeg-turbo), cropping and resizing the uint8 image
before it becomes float. Supports the transforms CLIP prompt learners use:
``random_resized_crop``, ``random_crop``, ``center_crop``, ``random_flip`` and ``normalize``.
(torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work.)
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torchvision.io as tvio
from torchvision.transforms import InterpolationMode, v2

from dassl_ext.data.images import check_pixels, read_image
from dassl_ext.errors import UserError

TENSOR_TRANSFORMS = (
    "random_resized_crop",
    "random_crop",
    "center_crop",
    "random_flip",
    "normalize",
)


def read_image_tensor(path: str) -> torch.Tensor:
    """Decode an image file to a (3, H, W) uint8 RGB tensor; unreadable files: UserError.

    16-bit PNGs, which torchvision decodes to uint16, become 8-bit by ``value >> 8``, as
    :func:`dassl_ext.data.images.read_image` does. Formats torchvision cannot decode (TIFF,
    BMP, ...) are read by that PIL reader, so both backends read the same files alike: the
    first frame of an animated GIF / WebP (torchvision decodes every frame), and an image
    over PIL's decompression-bomb limit is refused (torchvision would decode it).
    """
    check_pixels(path)  # a header read (~0.1 ms; page-cached for the decoder)
    try:
        with warnings.catch_warnings():  # the deprecation notice, once per image otherwise
            warnings.simplefilter("ignore", DeprecationWarning)
            img = tvio.decode_image(tvio.read_file(path), mode=tvio.ImageReadMode.RGB)
    except FileNotFoundError:
        return _pil_tensor(path)  # the PIL reader's sentence for a file that went away
    except (RuntimeError, OSError):
        return _pil_tensor(path)  # not a format torchvision decodes, or a broken file
    if img.ndim == 4:  # (frames, 3, H, W): an animated GIF / WebP
        img = img[0]
    if img.dtype == torch.uint16:
        img = (img.view(torch.int16).to(torch.int32) & 0xFFFF) >> 8
    return img.to(torch.uint8)


def _pil_tensor(path: str) -> torch.Tensor:
    rgb = np.asarray(read_image(path), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def build_tensor_transform(
    cfg, is_train: bool, choices: list[str], size: tuple[int, int], interp: InterpolationMode
) -> v2.Compose:
    """The train / test transform of ``build_transform`` for uint8 (3, H, W) tensors."""
    unsupported = [c for c in choices if c not in TENSOR_TRANSFORMS]
    if unsupported:
        raise UserError(
            f"INPUT.BACKEND tensor does not implement the transform '{unsupported[0]}'; "
            f"use INPUT.BACKEND pil or only: {', '.join(TENSOR_TRANSFORMS)}."
        )
    if cfg.INPUT.NO_TRANSFORM:
        tfms = [v2.Resize(size, interpolation=interp, antialias=True)]
    elif is_train:
        tfms = []
        if "random_crop" not in choices and "random_resized_crop" not in choices:
            tfms.append(v2.Resize(size, interpolation=interp, antialias=True))
        if "random_crop" in choices:
            tfms.append(v2.RandomCrop(size, padding=cfg.INPUT.CROP_PADDING))
        if "random_resized_crop" in choices:
            scale = tuple(cfg.INPUT.RRCROP_SCALE)
            tfms.append(v2.RandomResizedCrop(size, scale, interpolation=interp, antialias=True))
        if "center_crop" in choices:
            tfms.append(v2.CenterCrop(size))
        if "random_flip" in choices:
            tfms.append(v2.RandomHorizontalFlip())
    else:
        tfms = [v2.Resize(max(size), interpolation=interp, antialias=True), v2.CenterCrop(size)]
    tfms.append(v2.ToDtype(torch.float32, scale=True))  # uint8 -> [0, 1], as ToTensor
    if "normalize" in choices:
        tfms.append(v2.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD))
    return v2.Compose(tfms)
