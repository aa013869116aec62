"""torchrun support: process-group setup from the environment, rank helpers, collectives.

One process is the default and needs none of this: every helper works uninitialised.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed_from_env(use_cuda: bool = True) -> bool:
    """Join the process group described by torchrun's env vars (RANK, WORLD_SIZE, MASTER_*).

    nccl when CUDA is used, gloo otherwise. Returns True if running distributed.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return False
    if dist.is_initialized():
        return True
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return True


def destroy_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; ``[obj]`` when not distributed."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce-average the gradients of ``params`` across ranks in one flat buffer
    (what DistributedDataParallel does after backward); no-op when not distributed."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    # one bucket per dtype/device so that mixed fp16/fp32 parameters are fine
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        buckets.setdefault((g.dtype, g.device), []).append(g)
    for group in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= get_world_size()
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_module(module: torch.nn.Module, src: int = 0, trainable_only: bool = True) -> None:
    """Copy ``module``'s trainable parameters (all with ``trainable_only=False``) and its
    BatchNorm statistics from rank ``src`` to every rank, as DDP does when it wraps a model.

    Frozen weights come from the same files on every rank and are not sent.
    """
    if not is_distributed():
        return
    tensors = [p for p in module.parameters() if p.requires_grad or not trainable_only]
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            tensors += [b for b in m.buffers()]
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=src)
