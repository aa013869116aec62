"""Samplers that make N processes read what one process reads.

:class:`GlobalBatchSampler` (training) orders the data once per epoch (seeded alike on every
process), cuts the order into GLOBAL batches and gives each rank its contiguous share of
each: with one process, a ``RandomSampler`` + ``BatchSampler`` with the same generator; with
N, the union of the ranks' batches at each step is that same batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from dassl_ext.errors import UserError


def rank_share(batch: list[int], rank: int, world_size: int) -> list[int]:
    """The ``rank``-th of ``world_size`` contiguous near-equal slices of ``batch`` (the first
    ``len % world_size`` slices one longer)."""
    base, extra = divmod(len(batch), world_size)
    start = rank * base + min(rank, extra)
    return batch[start : start + base + (rank < extra)]


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of each global batch of ``global_batch`` indices of ``range(length)``.

    ``shuffle``: a new order per epoch from ``generator`` (reseeded per epoch, alike on every
    rank), else ``0 .. length-1``; ``drop_last``: drop an incomplete last global batch.
    """

    def __init__(
        self,
        length: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        generator: torch.Generator | None = None,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        full, rest = divmod(length, global_batch)
        sizes = ([global_batch] if full else []) + ([rest] if rest and not drop_last else [])
        if world_size > 1 and sizes and min(sizes) < world_size:
            raise UserError(
                f"A batch of {min(sizes)} training images cannot be shared by {world_size} "
                "processes; run fewer processes or train on more images."
            )
        self.length, self.global_batch = length, global_batch
        self.rank, self.world_size = rank, world_size
        self.generator, self.shuffle = generator, shuffle
        self.batches = full + int(rest > 0 and not drop_last)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(self.length))
        if self.shuffle:
            order = torch.randperm(self.length, generator=self.generator).tolist()
        for k in range(self.batches):
            batch = order[k * self.global_batch : (k + 1) * self.global_batch]
            yield rank_share(batch, self.rank, self.world_size)
