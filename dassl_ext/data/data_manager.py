"""DataManager: dataset -> wrapped datasets -> samplers -> DataLoaders (Dassl's surface)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from dassl_ext.data.base_dataset import DatasetBase
from dassl_ext.data.splits import Datum
from dassl_ext.data.tensor_transforms import read_image_tensor
from dassl_ext.data.transforms import build_transform
from dassl_ext.errors import UserError
from dassl_ext.registry import DATASET_REGISTRY
from dassl_ext.utils.distributed import get_rank, get_world_size

logger = logging.getLogger(__name__)


def build_dataset(cfg) -> DatasetBase:
    """The dataset registered as ``cfg.DATASET.NAME``, constructed from `cfg`."""
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


def read_image(path: str) -> Image.Image:
    """Open an image as RGB; a missing or unreadable file is a UserError naming it (the
    dataset checks that its images exist when it is built, so a missing one went away)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise UserError(
            f"Image {path} no longer exists; restore it (or the whole dataset folder), then "
            "run again."
        ) from None
    except (OSError, UnidentifiedImageError, SyntaxError) as e:
        raise UserError(
            f"Cannot decode image {path} ({e}); replace or re-download the file."
        ) from None


def image_reader(cfg) -> Callable[[str], Image.Image | torch.Tensor]:
    """How ``INPUT.BACKEND`` reads an image file: a PIL image, or a uint8 (3, H, W) tensor."""
    return read_image_tensor if cfg.INPUT.BACKEND == "tensor" else read_image


class DatasetWrapper(Dataset):
    """Items as Dassl batch dicts: ``img, label, impath, index, domain``."""

    def __init__(
        self, data: list[Datum], transform: Callable, reader: Callable = read_image
    ) -> None:
        self.data = data
        self.transform = transform
        self.reader = reader

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> dict:
        item = self.data[idx]
        return {
            "img": self.transform(self.reader(item.impath)),
            "label": item.label,
            "impath": item.impath,
            "index": idx,
            "domain": item.domain,
        }


class RankStridedSampler(Sampler[int]):
    """Every `world_size`-th index from `rank` on, without padding (no image counts twice)."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class _CleanErrorIter:
    """Re-raises a worker's UserError with its own message, not the worker traceback."""

    def __init__(self, inner: Iterator) -> None:
        self.inner = inner

    def __iter__(self) -> _CleanErrorIter:
        return self

    def __len__(self) -> int:
        return len(self.inner)

    def __next__(self):
        try:
            return next(self.inner)
        except UserError as e:
            message = str(e).strip().rsplit("UserError: ", 1)[-1]
            shutdown = getattr(self.inner, "_shutdown_workers", None)
            if shutdown is not None:  # stop the workers now, not when the traceback is freed
                shutdown()
            raise UserError(message) from None


class Loader(DataLoader):
    """DataLoader whose iterator reports a worker's UserError as one clean sentence."""

    def __iter__(self) -> _CleanErrorIter:
        return _CleanErrorIter(super().__iter__())


class DataManager:
    """Builds the dataset (unless given) and its train, val and evaluation loaders.

    Attributes: `dataset`, `train_loader_x`, `val_loader` (None without val images),
    `eval_loaders` ({split name: loader}, the reported splits), `test_loader` (the
    first reported split), `num_classes`, `classnames`, `lab2cname`.
    Call `set_epoch(epoch)` before each training epoch to fix its shuffling order.
    """

    def __init__(
        self,
        cfg,
        dataset: DatasetBase | None = None,
        custom_tfm_train: Callable | None = None,
        custom_tfm_test: Callable | None = None,
    ) -> None:
        self.cfg = cfg
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        self.tfm_train = custom_tfm_train or build_transform(cfg, is_train=True)
        self.tfm_test = custom_tfm_test or build_transform(cfg, is_train=False)
        self.rank, self.world_size = get_rank(), get_world_size()
        self.seed = cfg.SEED
        # Seeded per epoch by set_epoch, so a resumed run sees the same order.
        self.generator = torch.Generator()
        self.generator.manual_seed(max(cfg.SEED, 0))

        ds = self.dataset
        self.train_loader_x = self._train_loader(ds.train_x)
        self.val_loader = self._eval_loader(ds.val) if ds.val else None
        self.eval_loaders = {name: self._eval_loader(s.items) for name, s in ds.eval_splits.items()}
        self.test_loader = next(iter(self.eval_loaders.values()))
        self.train_loader_u = None  # Dassl attribute; unlabeled source data is unused here

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def classnames(self) -> list[str]:
        return self.dataset.classnames

    @property
    def lab2cname(self) -> dict[int, str]:
        return self.dataset.lab2cname

    def set_epoch(self, epoch: int) -> None:
        """Reseed the train shuffling for `epoch` (from cfg.SEED + epoch; DDP: sampler epoch)."""
        sampler = self.train_loader_x.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        elif self.seed >= 0:
            self.generator.manual_seed(self.seed + epoch)

    def _loader_kwargs(self) -> dict:
        cfg = self.cfg
        return {
            "num_workers": cfg.DATALOADER.NUM_WORKERS,
            "pin_memory": torch.cuda.is_available() and cfg.USE_CUDA,
        }

    def _train_loader(self, data: list[Datum]) -> Loader:
        batch_size = self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        generator = None
        if self.world_size > 1:
            seed = max(self.seed, 0)
            sampler = DistributedSampler(data, self.world_size, self.rank, shuffle=True, seed=seed)
        elif self.cfg.DATALOADER.TRAIN_X.SAMPLER == "SequentialSampler":
            sampler = SequentialSampler(data)
        else:
            generator = self.generator if self.seed >= 0 else None
            sampler = RandomSampler(data, generator=generator)
        return Loader(
            DatasetWrapper(data, self.tfm_train, image_reader(self.cfg)),
            batch_size=batch_size,
            sampler=sampler,
            generator=generator,  # also seeds the workers' base seed
            drop_last=len(sampler) >= batch_size,  # Dassl: never drop the only batch
            **self._loader_kwargs(),
        )

    def _eval_loader(self, data: list[Datum]) -> Loader:
        if self.world_size > 1:
            sampler = RankStridedSampler(len(data), self.rank, self.world_size)
        else:
            sampler = SequentialSampler(data)
        return Loader(
            DatasetWrapper(data, self.tfm_test, image_reader(self.cfg)),
            batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE,
            sampler=sampler,
            **self._loader_kwargs(),
        )

    def show_dataset_summary(self) -> None:
        """Log a table of classes and images per split (Dassl prints the same)."""
        ds = self.dataset
        rows = [("Dataset", ds.name), ("# classes", f"{ds.num_classes:,}")]
        rows += [("# train_x", f"{len(ds.train_x):,}"), ("# val", f"{len(ds.val):,}")]
        rows += [(f"# {name}", f"{len(s.items):,}") for name, s in ds.eval_splits.items()]
        rows += [("Protocol", ds.protocol)]
        width = max(len(k) for k, _ in rows)
        logger.info("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
