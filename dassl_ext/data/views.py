"""Replayable train augmentations: random views as stored parameters, applied again later.

A view of an image is what the train transform of ``cfg.INPUT`` makes of it for one set of
random draws. :class:`ReplayTransform` splits that transform in two: ``draw`` (the random
draws, from a given generator) and ``apply`` (the same torchvision functional ops for given
draws, bit for bit). The draws of view ``v`` of image ``i`` come from
:func:`view_generator` ``(seed, i, v)`` alone, so any process may draw any view (a sharded
build, a resumed one). Whatever was computed from a view (a frozen model's features) can be
stored beside its parameters, and a later run reads both instead of recomputing:
:class:`StoredViewDataset` replays the crop and flip and hands over the stored values, and
:func:`view_for_epoch` decides which of the ``k`` stored views an image uses in an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as F1
from PIL import Image
from torch.utils.data import Sampler
from torchvision.transforms import v2

from dassl_ext.data.data_manager import DataManager, DatasetWrapper, Loader, image_reader
from dassl_ext.data.splits import Datum
from dassl_ext.data.transforms import INTERPOLATION_MODES, TENSOR_TRANSFORMS, build_transform
from dassl_ext.errors import UserError

F2 = v2.functional

# What ReplayTransform.apply replays (a fact of its own, not the tensor backend's list).
REPLAYABLE_TRANSFORMS = ("random_resized_crop", "random_crop", "center_crop", "random_flip", "normalize")
# int32: top, left, height, width (of the crop box in the (padded) source), flip (0/1)
PARAMS_PER_VIEW = 5
RRCROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision's default, as build_transform uses it
_PIPELINE = ("random_crop", "random_resized_crop", "center_crop", "random_flip", "normalize")
_FORMAT = 1  # of draw()'s parameters; part of settings(): a change makes new cache keys


class ReplayTransform:
    """The train transform of cfg.INPUT as per-view parameters: draw() draws what its random
    transforms would, apply() applies given draws with build_transform's own torchvision ops,
    interpolation and antialias, bit for bit (to what image_reader(cfg) returns).

    ``random_crop`` with ``random_resized_crop`` (both listed) is one box: the resized crop's
    box inside the random crop, shifted into the padded source (cropping twice selects the
    same pixels as cropping once)."""

    def __init__(
        self,
        transforms: Sequence[str],
        size: tuple[int, int],
        interpolation: str = "bilinear",
        scale: tuple[float, float] = (0.08, 1.0),
        padding: int = 4,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        backend: str = "pil",
    ) -> None:
        self.transforms = tuple(t for t in _PIPELINE if t in transforms)  # applied in this order
        self.size = (int(size[0]), int(size[1]))
        self.interpolation, self.interp = interpolation, INTERPOLATION_MODES[interpolation]
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), RRCROP_RATIO
        self.padding = int(padding)
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.backend = backend

    @classmethod
    def from_cfg(cls, cfg) -> ReplayTransform:
        """The replayable form of ``build_transform(cfg, is_train=True)``; a transform that
        cannot be replayed is a UserError naming it."""
        build_transform(cfg, is_train=True)  # its checks: known names, interpolation, backend
        i = cfg.INPUT
        if i.NO_TRANSFORM:
            raise UserError(
                "Stored views replay only random train augmentations, and INPUT.NO_TRANSFORM "
                f"is True; set it False and use INPUT.TRANSFORMS from: "
                f"{', '.join(REPLAYABLE_TRANSFORMS)}."
            )
        bad = [t for t in i.TRANSFORMS if t not in REPLAYABLE_TRANSFORMS]
        if bad:
            raise UserError(
                f"Stored views replay only {', '.join(REPLAYABLE_TRANSFORMS)}, and "
                f"INPUT.TRANSFORMS lists '{bad[0]}'; remove it from INPUT.TRANSFORMS, or do "
                "not use stored views."
            )
        size = (i.SIZE, i.SIZE) if isinstance(i.SIZE, int) else tuple(i.SIZE)
        return cls(
            i.TRANSFORMS, size, i.INTERPOLATION, tuple(i.RRCROP_SCALE), i.CROP_PADDING,
            i.PIXEL_MEAN, i.PIXEL_STD, i.BACKEND,
        )  # fmt: skip

    def settings(self) -> dict:
        """Everything apply()'s output and draw()'s distribution depend on (for cache keys)."""
        return {
            "format": _FORMAT,
            "transforms": list(self.transforms),
            "size": list(self.size),
            "interpolation": self.interpolation,
            "rrcrop_scale": list(self.scale),
            "rrcrop_ratio": list(self.ratio),
            "crop_padding": self.padding,
            "pixel_mean": self.mean,
            "pixel_std": self.std,
            "backend": self.backend,
        }

    def draw(self, width: int, height: int, generator: torch.Generator) -> torch.Tensor:
        """The random draws for one view of a ``width`` x ``height`` image, in torchvision's
        order and way (RandomCrop.get_params, RandomResizedCrop.get_params, the flip's
        ``rand < 0.5``), from ``generator``: (PARAMS_PER_VIEW,) int32."""
        g = generator
        grow = 2 * self.padding if "random_crop" in self.transforms else 0
        width, height = width + grow, height + grow
        top, left, h, w = 0, 0, height, width
        if "random_crop" in self.transforms:
            th, tw = self.size
            if h < th or w < tw:
                raise UserError(
                    f"An image of {width}x{height} pixels (padded by INPUT.CROP_PADDING) is "
                    f"smaller than the random_crop size {tw}x{th}; raise INPUT.CROP_PADDING or "
                    "use random_resized_crop."
                )
            if (h, w) != (th, tw):
                top = int(torch.randint(0, h - th + 1, size=(1,), generator=g).item())
                left = int(torch.randint(0, w - tw + 1, size=(1,), generator=g).item())
                h, w = th, tw
        if "random_resized_crop" in self.transforms:
            i, j, h, w = self._resized_crop_box(h, w, g)
            top, left = top + i, left + j
        flip = 0
        if "random_flip" in self.transforms:
            flip = int(bool(torch.rand(1, generator=g) < 0.5))
        return torch.tensor([top, left, h, w, flip], dtype=torch.int32)

    def _resized_crop_box(self, height: int, width: int, g: torch.Generator) -> tuple:
        """torchvision's RandomResizedCrop.get_params, drawing from ``g``."""
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(*self.scale, generator=g).item()
            aspect = torch.exp(
                torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)
            ).item()
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
                j = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
                return i, j, h, w
        in_ratio = float(width) / float(height)  # fallback: the central crop
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, img: Image.Image | torch.Tensor, params) -> torch.Tensor:
        """The view of ``img`` (as image_reader(cfg) returns it) for the draws ``params``
        (PARAMS_PER_VIEW ints): (3, H, W) float32 at INPUT.SIZE, normalised if listed."""
        top, left, h, w, flip = (int(v) for v in params)
        t, tensor = self.transforms, self.backend == "tensor"
        F = F2 if tensor else F1
        cropped = "random_crop" in t or "random_resized_crop" in t
        if "random_crop" in t and (self.padding or not tensor):  # T pads by 0 too; v2 does not
            img = F.pad(img, [self.padding] * 4 if tensor else self.padding, fill=0)
        if tensor:
            height, width = img.shape[-2:]
        else:
            width, height = img.size
        box = (top, left, h, w)
        fits = min(h, w) > 0 and min(top, left) >= 0 and top + h <= height
        if not (fits and left + w <= width) or (not cropped and box != (0, 0, height, width)):
            raise UserError(
                f"Stored view parameters (top, left, height, width) = {box} do not fit an image "
                f"of {width}x{height} pixels; the image changed since they were drawn: build "
                "the stored views again."
            )
        if "random_resized_crop" in t:
            img = F.resized_crop(img, top, left, h, w, list(self.size), self.interp, antialias=True)
        elif "random_crop" in t:
            img = F.crop(img, top, left, h, w)
        else:
            img = F.resize(img, list(self.size), self.interp, antialias=True)
        if "center_crop" in t:
            img = F.center_crop(img, list(self.size))
        if flip:
            img = F2.horizontal_flip(img) if tensor else F1.hflip(img)
        img = F2.to_dtype(img, torch.float32, scale=True) if tensor else F1.to_tensor(img)
        if "normalize" in t:
            img = F.normalize(img, mean=self.mean, std=self.std)
        return img


# ---------------------------------------------------------------- seeded, order-free draws
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_TAG_DRAW, _TAG_ORDER = 1, 2


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (numpy's uint64 arithmetic wraps)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _key(*parts) -> np.ndarray:
    """A 64-bit hash of a tuple of integers (broadcast integer arrays, two's complement)."""
    h = np.asarray(_GOLDEN, dtype=np.uint64)
    with np.errstate(over="ignore"):  # the wrap-around is the point (numpy scalars warn)
        for p in parts:
            p = np.asarray(p)
            p = p.astype(np.int64).astype(np.uint64) if p.dtype.kind == "i" else p.astype(np.uint64)
            h = _mix((h ^ p) + np.uint64(_GOLDEN))
    return h


def view_generator(seed: int, index: int, view: int) -> torch.Generator:
    """The generator of the draws of view ``view`` of image ``index`` in a bank seeded
    ``seed``: the same in any process and any order."""
    return torch.Generator().manual_seed(int(_key(_TAG_DRAW, seed & _MASK, index, view)))


def draw_views(
    replay: ReplayTransform, width: int, height: int, seed: int, index: int, k: int
) -> torch.Tensor:
    """The parameters of the ``k`` views of image ``index`` (``width`` x ``height``):
    (k, PARAMS_PER_VIEW) int32."""
    views = [replay.draw(width, height, view_generator(seed, index, v)) for v in range(k)]
    return torch.stack(views) if views else torch.zeros(0, PARAMS_PER_VIEW, dtype=torch.int32)


def views_for_epoch(seed: int, epoch: int, indices: Sequence[int], k: int) -> np.ndarray:
    """:func:`view_for_epoch` for many images at once: int64 array like ``indices``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    cycle, pos = divmod(int(epoch), k)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1, 1)
    keys = _key(_TAG_ORDER, seed & _MASK, cycle, idx, np.arange(k, dtype=np.int64))
    return np.argsort(keys, axis=1, kind="stable")[:, pos]  # this cycle's order, position pos


def view_for_epoch(seed: int, epoch: int, index: int, k: int) -> int:
    """Which of the k stored views image `index` uses in `epoch` of a run seeded `seed`: every
    cycle of k epochs (0..k-1, k..2k-1, ...) visits all k views once, in an order of its own
    per (seed, cycle, index); epochs beyond k reuse views (a new cycle, a new order)."""
    return int(views_for_epoch(seed, epoch, [index], k)[0])


# ---------------------------------------------------------------- loading stored views
class ViewBatchSampler(Sampler[list[tuple[int, int]]]):
    """Wraps a batch sampler of indices (GlobalBatchSampler): yields [(index, view), ...] with
    view = view_for_epoch(seed, epoch, index, k); set_epoch(epoch)."""

    def __init__(self, batch_sampler, k: int, seed: int) -> None:
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        self.batch_sampler, self.k, self.seed, self.epoch = batch_sampler, k, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.batch_sampler:
            views = views_for_epoch(self.seed, self.epoch, batch, self.k).tolist()
            yield list(zip(batch, views))


def _view_of(array, index: int, view: int) -> torch.Tensor:
    """``array[index][view]`` as a tensor; an array with a shape (numpy, torch, ShardedArray)
    is indexed at once, so only that view is read."""
    value = array[index, view] if hasattr(array, "shape") else array[index][view]
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.array(value))


class StoredViewDataset(DatasetWrapper):
    """Items for (index, view) pairs: the image read and replayed with the stored parameters,
    plus the stored features of that view when given: dict with img, label, impath, index, domain,
    view, and "view_features" (E,) (only when features is not None; in their stored dtype)."""

    def __init__(
        self,
        data: list[Datum],
        replay: ReplayTransform,
        reader: Callable,
        params,
        features=None,
    ) -> None:
        super().__init__(data, replay.apply, reader)
        self.params, self.features = params, features

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, view = (int(k) for k in key)
        img = self.read(index)
        try:
            img = self.transform(img, _view_of(self.params, index, view))
        except UserError as e:
            raise UserError(f"Image {self.data[index].impath}: {e}") from None
        out = {**self.item(index, img), "view": view}
        if self.features is not None:
            out["view_features"] = _view_of(self.features, index, view)
        return out


def stored_view_loader(
    dm: DataManager, replay: ReplayTransform, params, features, k: int
) -> Loader:
    """A train Loader like ``dm.train_loader_x`` (its GlobalBatchSampler, ``dm.generator``,
    workers, pin_memory) over :class:`StoredViewDataset` with ``ViewBatchSampler(seed=dm.seed)``;
    the caller assigns it to ``dm.train_loader_x`` (``dm.set_epoch`` then reaches it)."""
    base = dm.train_loader_x
    sampler = base.batch_sampler
    if isinstance(sampler, ViewBatchSampler):  # a stored-view loader already: its indices
        sampler = sampler.batch_sampler
    data = getattr(base.dataset, "data", dm.dataset.train_x)
    shape = tuple(getattr(params, "shape", (len(params), k)))
    if shape[0] != len(data) or shape[1] < k:
        raise UserError(
            f"The stored views hold {shape[1]} views of {shape[0]} images, but training reads "
            f"{k} views of {len(data)} images; build the stored views again for this split."
        )
    return Loader(
        StoredViewDataset(data, replay, image_reader(dm.cfg), params, features),
        batch_sampler=ViewBatchSampler(sampler, k, dm.seed),
        generator=dm.generator,
        num_workers=base.num_workers,
        pin_memory=base.pin_memory,
    )
