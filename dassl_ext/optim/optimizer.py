"""Optimizer construction from Dassl's ``OPTIM`` config keys, and their rules."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dassl_ext.config.rules import Check, OneOf, Range, register_config_rules
from dassl_ext.errors import UserError

logger = logging.getLogger(__name__)

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


def _param_groups(model_or_params: Any, optim_cfg: Any, param_groups: Any) -> list[dict]:
    """The groups to optimize, each with its parameters that require a gradient."""
    if param_groups is not None:
        if optim_cfg.STAGED_LR:
            logger.warning("OPTIM.STAGED_LR is ignored because param_groups were given.")
        groups = [dict(g) for g in param_groups]
    elif optim_cfg.STAGED_LR:
        if not isinstance(model_or_params, nn.Module):
            raise UserError("OPTIM.STAGED_LR needs an nn.Module, not a list of parameters.")
        groups = _staged_groups(model_or_params, optim_cfg)
    elif isinstance(model_or_params, nn.Module):
        groups = [{"params": model_or_params.parameters()}]
    else:
        items = list(model_or_params)
        groups = (
            [dict(g) for g in items]
            if items and isinstance(items[0], dict)
            else [{"params": items}]
        )
    for g in groups:
        params = [g["params"]] if isinstance(g["params"], torch.Tensor) else g["params"]
        g["params"] = [p for p in params if p.requires_grad]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise UserError(
            "build_optimizer got no parameter with requires_grad=True: "
            "check which parameters the trainer unfreezes."
        )
    return groups


def build_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    optim_cfg: Any,
    param_groups: Iterable[dict] | None = None,
) -> torch.optim.Optimizer:
    """The optimizer named by ``OPTIM.NAME`` (Dassl's keys and defaults) over the parameters
    with ``requires_grad``; ``param_groups`` (dicts with ``params``) overrides the groups
    derived from the model."""
    _NAME.check(optim_cfg.NAME)
    name = optim_cfg.NAME.lower()
    groups = _param_groups(model_or_params, optim_cfg, param_groups)
    lr, wd = float(optim_cfg.LR), float(optim_cfg.WEIGHT_DECAY)
    betas = (float(optim_cfg.ADAM_BETA1), float(optim_cfg.ADAM_BETA2))
    momentum = float(optim_cfg.MOMENTUM)
    if name == "sgd":
        dampening, nesterov = float(optim_cfg.SGD_DAMPNING), bool(optim_cfg.SGD_NESTEROV)
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=momentum,
            weight_decay=wd,
            dampening=dampening,
            nesterov=nesterov,
        )
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(
            groups, lr=lr, weight_decay=wd, betas=betas, amsgrad=name == "amsgrad"
        )
    if name == "rmsprop":
        alpha = float(optim_cfg.RMSPROP_ALPHA)
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, weight_decay=wd, alpha=alpha)
    optimizer = torch.optim.AdamW if name == "adamw" else torch.optim.RAdam
    return optimizer(groups, lr=lr, weight_decay=wd, betas=betas)
