"""torchrun support: process-group setup from the environment, rank helpers, collectives;
every helper also works in one process, without a process group."""

from __future__ import annotations

import datetime
import os
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


def init_distributed_from_env(use_cuda: bool = True, timeout_s: float = 1800) -> bool:
    """Join the process group of torchrun's env vars (nccl with CUDA, else gloo; a collective
    waits at most ``timeout_s`` seconds); True if running distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return False
    if dist.is_initialized():
        return True
    cuda = use_cuda and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(get_local_rank())
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout)
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
