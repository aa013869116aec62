"""DataManager: dataset -> wrapped datasets -> samplers -> DataLoaders (Dassl's surface)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dassl_ext.data.base_dataset import DatasetBase
from dassl_ext.data.images import read_image, too_large
from dassl_ext.data.samplers import GlobalBatchSampler
from dassl_ext.data.splits import Datum
from dassl_ext.data.tensor_transforms import read_image_tensor
from dassl_ext.data.transforms import build_transform
from dassl_ext.errors import UserError
from dassl_ext.registry import DATASET_REGISTRY
from dassl_ext.utils.distributed import broadcast_object, get_rank, get_world_size

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainBatch:
    """What ``DATALOADER.TRAIN_X.BATCH_SIZE`` means under ``world_size`` processes, decided
    here once: by default the global batch of a step, split over the processes (the same
    optimisation on any number); with ``BATCH_SIZE_PER_RANK`` each process reads that many,
    so the global batch and ``OPTIM.LR`` (``lr_factor``: linear scaling) grow with them."""

    global_batch: int
    lr_factor: int

    @classmethod
    def of(cls, cfg, world_size: int) -> TrainBatch:
        batch = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        if cfg.DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK:
            return cls(batch * world_size, world_size)
        if batch % world_size:
            raise UserError(
                f"DATALOADER.TRAIN_X.BATCH_SIZE {batch} is the global batch and does not split "
                f"over {world_size} processes; use a multiple of {world_size}, or set "
                "DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK True (each process reads BATCH_SIZE "
                "images and OPTIM.LR is scaled by the number of processes)."
            )
        return cls(batch, 1)


def build_dataset(cfg) -> DatasetBase:
    """The dataset registered as ``cfg.DATASET.NAME``, constructed from `cfg`."""
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


def image_reader(cfg) -> Callable[[str], Image.Image | torch.Tensor]:
    """How ``INPUT.BACKEND`` reads an image file: a PIL image, or a uint8 (3, H, W) tensor."""
    return read_image_tensor if cfg.INPUT.BACKEND == "tensor" else read_image


class DatasetWrapper(Dataset):
    """Items as Dassl batch dicts: ``img, label, impath, index, domain``."""

    def __init__(
        self, data: list[Datum], transform: Callable, reader: Callable = read_image
    ) -> None:
        self.data, self.transform, self.reader = data, transform, reader

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> dict:
        return self.item(idx, self.transform(self.read(idx)))

    def read(self, idx: int) -> Image.Image | torch.Tensor:
        """The image of item ``idx`` as ``reader`` returns it."""
        path = self.data[idx].impath
        try:
            return self.reader(path)
        except Image.DecompressionBombError as e:  # not an OSError: it escaped as a traceback
            raise too_large(path, e) from None

    def item(self, idx: int, img: torch.Tensor) -> dict:
        """The batch dict of item ``idx`` with its transformed image ``img``."""
        d = self.data[idx]
        return {"img": img, "label": d.label, "impath": d.impath, "index": idx, "domain": d.domain}


def _clean_errors(batches: Iterator) -> Iterator:
    """``batches``, with a worker's UserError re-raised as its own message (no traceback)."""
    try:
        yield from batches
    except UserError as e:
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:  # stop the workers now, not when the traceback is freed
            shutdown()
        raise UserError(str(e).strip().rsplit("UserError: ", 1)[-1]) from None


class Loader(DataLoader):
    """DataLoader whose iterator reports a worker's UserError as one clean sentence."""

    def __iter__(self) -> Iterator:
        return _clean_errors(super().__iter__())  # created now: the RNG draws stay in place


class DataManager:
    """Builds the dataset (unless given) and its train, val and evaluation loaders.

    Attributes: `dataset`, `train_loader_x`, `val_loader` (None without val images),
    `eval_loaders` ({split name: loader}, the reported splits), `test_loader` (the
    first reported split), `global_batch`, `num_classes`, `classnames`, `lab2cname`.
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
        self.dataset = ds = dataset if dataset is not None else build_dataset(cfg)
        self.num_classes, self.classnames = ds.num_classes, ds.classnames
        self.lab2cname = ds.lab2cname
        self.tfm_train = custom_tfm_train or build_transform(cfg, is_train=True)
        self.tfm_test = custom_tfm_test or build_transform(cfg, is_train=False)
        self.rank, self.world_size = get_rank(), get_world_size()
        self.global_batch = TrainBatch.of(cfg, self.world_size).global_batch
        # Seeded per epoch by set_epoch, so every process and a resumed run see the same
        # order; without a seed (SEED < 0) from rank 0's random seed.
        self.seed = cfg.SEED if cfg.SEED >= 0 else broadcast_object(random.randrange(2**31))
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self._loader_kwargs = {
            "num_workers": cfg.DATALOADER.NUM_WORKERS,
            "pin_memory": torch.cuda.is_available() and cfg.USE_CUDA,
        }
        self.train_loader_x = self._train_loader(ds.train_x)
        self.val_loader = self._eval_loader(ds.val) if ds.val else None
        self.eval_loaders = {name: self._eval_loader(s.items) for name, s in ds.eval_splits.items()}
        self.test_loader = next(iter(self.eval_loaders.values()))

    def set_epoch(self, epoch: int) -> None:
        """Reseed the train shuffling for `epoch` (from cfg.SEED + epoch: the same order on
        every process, and after a resume), and tell the train loader's batch sampler the
        epoch when it takes one (a stored-view loader picks each image's view by epoch)."""
        self.generator.manual_seed(self.seed + epoch)
        sampler = getattr(self.train_loader_x, "batch_sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)

    def _train_loader(self, data: list[Datum]) -> Loader:
        """Each step reads one global batch, split over the processes
        (:class:`GlobalBatchSampler`); the incomplete last batch is dropped unless it is the
        only one (as Dassl)."""
        shuffle = self.cfg.DATALOADER.TRAIN_X.SAMPLER != "SequentialSampler"
        sampler = GlobalBatchSampler(
            len(data),
            self.global_batch,
            self.rank,
            self.world_size,
            generator=self.generator if shuffle else None,
            shuffle=shuffle,
            drop_last=len(data) >= self.global_batch,
        )
        return Loader(
            DatasetWrapper(data, self.tfm_train, image_reader(self.cfg)),
            batch_sampler=sampler,
            generator=self.generator,  # also seeds the workers' base seed
            **self._loader_kwargs,
        )

    def _eval_loader(self, data: list[Datum]) -> Loader:
        return Loader(
            DatasetWrapper(data, self.tfm_test, image_reader(self.cfg)),
            batch_size=self.cfg.DATALOADER.TEST.BATCH_SIZE,
            # Every world_size-th image from rank on: each image on exactly one rank, no padding.
            sampler=range(self.rank, len(data), self.world_size),
            **self._loader_kwargs,
        )

    def show_dataset_summary(self) -> None:
        """Log a table of classes and images per split (Dassl prints the same)."""
        ds = self.dataset
        rows = [("Dataset", ds.name), ("# classes", f"{ds.num_classes:,}")]
        rows += [("# train_x", f"{len(ds.train_x):,}")]
        if ds.nothing_to_evaluate:  # its val/test lists are stand-ins, never evaluated
            rows += [("Evaluation", f"none: {ds.nothing_to_evaluate}")]
        else:
            rows += [("# val", f"{len(ds.val):,}")]
            rows += [(f"# {name}", f"{len(s.items):,}") for name, s in ds.eval_splits.items()]
        rows += [("Protocol", ds.protocol)]
        width = max(len(k) for k, _ in rows)
        logger.info("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
