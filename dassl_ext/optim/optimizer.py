"""Optimizer construction from Dassl's ``OPTIM`` config keys, and their rules."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dassl_ext.config.rules import Check, OneOf, Range, register_config_rules
from dassl_ext.errors import UserError

AVAI_OPTIMS = ("sgd", "adam", "amsgrad", "adamw", "rmsprop", "radam")
_NAME = OneOf("OPTIM.NAME", AVAI_OPTIMS, ignore_case=True)
register_config_rules(
    _NAME,
    Range("OPTIM.LR", 0, low_open=True),
    *(Range(f"OPTIM.{k}", 0)
      for k in ("WEIGHT_DECAY", "BASE_LR_MULT", "SGD_DAMPNING", "RMSPROP_ALPHA", "MOMENTUM")),
    *(Check(f"OPTIM.ADAM_BETA{i}", lambda v: 0 <= v < 1, "use a number >= 0 and < 1")
      for i in (1, 2)),
)  # fmt: skip


def _staged_groups(model: nn.Module, optim_cfg: Any) -> list[dict]:
    """Dassl's STAGED_LR: children named in NEW_LAYERS get LR, the others LR * BASE_LR_MULT."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    new_layers = optim_cfg.NEW_LAYERS
    new_layers = [new_layers] if isinstance(new_layers, str) else new_layers
    if not new_layers:
        raise UserError("OPTIM.STAGED_LR is True but OPTIM.NEW_LAYERS is empty: name the layers.")
    children = dict(model.named_children())
    missing = [n for n in new_layers if n not in children]
    if missing:
        raise UserError(
            f"OPTIM.NEW_LAYERS names {missing}, which are not children of the model "
            f"(children: {sorted(children)})."
        )
    base = [p for n, m in children.items() if n not in new_layers for p in m.parameters()]
    new = [p for n, m in children.items() if n in new_layers for p in m.parameters()]
    return [{"params": base, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT}, {"params": new}]


def _param_groups(model_or_params: Any, optim_cfg: Any) -> list[dict]:
    """The groups to optimize, each with its parameters that require a gradient."""
    if optim_cfg.STAGED_LR:
        if not isinstance(model_or_params, nn.Module):
            raise UserError("OPTIM.STAGED_LR needs an nn.Module, not a list of parameters.")
        groups = _staged_groups(model_or_params, optim_cfg)
    elif isinstance(model_or_params, nn.Module):
        groups = [{"params": model_or_params.parameters()}]
    else:
        groups = [{"params": model_or_params}]
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise UserError(
            "build_optimizer got no parameter with requires_grad=True: "
            "check which parameters the trainer unfreezes."
        )
    return groups


def build_optimizer(
    model_or_params: nn.Module | Iterable[nn.Parameter], optim_cfg: Any
) -> torch.optim.Optimizer:
    """The optimizer named by ``OPTIM.NAME`` (Dassl's keys and defaults) over the parameters
    with ``requires_grad``."""
    _NAME.check(optim_cfg.NAME)
    name = optim_cfg.NAME.lower()
    groups = _param_groups(model_or_params, optim_cfg)
    common = {"lr": float(optim_cfg.LR), "weight_decay": float(optim_cfg.WEIGHT_DECAY)}
    betas = (float(optim_cfg.ADAM_BETA1), float(optim_cfg.ADAM_BETA2))
    momentum = float(optim_cfg.MOMENTUM)
    if name == "sgd":
        dampening, nesterov = float(optim_cfg.SGD_DAMPNING), bool(optim_cfg.SGD_NESTEROV)
        return torch.optim.SGD(
            groups, momentum=momentum, dampening=dampening, nesterov=nesterov, **common
        )
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(groups, betas=betas, amsgrad=name == "amsgrad", **common)
    if name == "rmsprop":
        alpha = float(optim_cfg.RMSPROP_ALPHA)
        return torch.optim.RMSprop(groups, momentum=momentum, alpha=alpha, **common)
    optimizer = torch.optim.AdamW if name == "adamw" else torch.optim.RAdam
    return optimizer(groups, betas=betas, **common)
