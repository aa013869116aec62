"""DistributedDataParallel for registered models, and BatchNorm over the global batch.

Under ``torchrun`` every trained model's training forward runs in DistributedDataParallel,
which averages the gradients of its trainable parameters; BatchNorm layers become
:class:`SyncBatchNorm`, so that N processes compute what one process computes on the same
global batch.
"""

from __future__ import annotations

import inspect

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from dassl_ext.utils.distributed import is_distributed


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the batches of all processes; unlike ``torch.nn.SyncBatchNorm`` on any
    device and backend (gloo on the CPU included). Statistics in fp32, in two passes; running
    statistics as ``nn.BatchNorm`` (unbiased variance over the global count). In eval mode or
    in one process it is ``BatchNorm``; its state-dict keys are BatchNorm's.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_distributed()):
            return super().forward(x)
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        total = _AllReduceSum.apply(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centered = xf - mean.view(shape)
        var = _AllReduceSum.apply((centered * centered).sum(dims)) / n
        y = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.float().view(shape) + self.bias.float().view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum
                if momentum is None:  # cumulative moving average, as nn.BatchNorm
                    momentum = 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by a :class:`SyncBatchNorm` that holds the
    SAME parameter and buffer objects (an optimizer built before still updates them).
    Children are replaced in place; the returned module is ``module`` unless it is itself a
    BatchNorm."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            device="meta",  # placeholders, replaced by the originals below
        )
        for name, p in module.named_parameters(recurse=False):
            setattr(new, name, p)
        for name, b in module.named_buffers(recurse=False):
            setattr(new, name, b)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _is_bn_buffer(module: nn.Module, name: str) -> bool:
    owner = module.get_submodule(name.rpartition(".")[0]) if "." in name else module
    return isinstance(owner, _BatchNorm)


def wrap_ddp(model: nn.Module) -> DistributedDataParallel:
    """``model`` (on its device, trainable parameters chosen, BatchNorm converted) in
    DistributedDataParallel. Frozen parameters and other buffers than BatchNorm's are built
    identically on every process and not synchronised; the trainable parameters and BatchNorm
    statistics start as rank 0's (not re-sent: :class:`SyncBatchNorm` keeps them equal)."""
    ignore = [n for n, p in model.named_parameters() if not p.requires_grad]
    ignore += [n for n, _ in model.named_buffers() if not _is_bn_buffer(model, n)]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignore)
    device = next(p for p in model.parameters() if p.requires_grad).device
    # torch >= 2.14 names the switch forward_sync_buffers (broadcast_buffers is deprecated)
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **{no_sync: False}
    )


def trainable(model: nn.Module | None) -> bool:
    """True if ``model`` has a parameter that requires a gradient."""
    return model is not None and any(p.requires_grad for p in model.parameters())
