"""``INPUT.BACKEND tensor``: decoding by ``torchvision.io`` (libjpeg-turbo) to uint8 tensors,
several times faster per data-loader worker than PIL (``transforms.build_transform`` crops
them with v2 transforms). torchvision 0.29 deprecates these decoders; they still work."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torchvision.io as tvio

from dassl_ext.data.images import check_pixels, read_image


def read_image_tensor(path: str) -> torch.Tensor:
    """Decode an image file to a (3, H, W) uint8 RGB tensor; unreadable files: UserError.

    As :func:`dassl_ext.data.images.read_image` does: 16-bit PNGs become 8-bit by
    ``value >> 8``, the first frame of an animated GIF / WebP is read, an image over PIL's
    decompression-bomb limit is refused, and what torchvision cannot decode (TIFF, BMP, a
    missing file) is read by that PIL reader.
    """
    check_pixels(path)  # a header read (~0.1 ms; page-cached for the decoder)
    try:
        with warnings.catch_warnings():  # the deprecation notice, once per image otherwise
            warnings.simplefilter("ignore", DeprecationWarning)
            img = tvio.decode_image(tvio.read_file(path), mode=tvio.ImageReadMode.RGB)
    except (RuntimeError, OSError):  # PIL's reader, and its sentence for a broken file
        rgb = np.asarray(read_image(path), dtype=np.uint8)
        return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()
    if img.ndim == 4:  # (frames, 3, H, W): an animated GIF / WebP
        img = img[0]
    if img.dtype == torch.uint16:
        img = (img.view(torch.int16).to(torch.int32) & 0xFFFF) >> 8
    return img.to(torch.uint8)
