"""Optimizer construction from Dassl's ``OPTIM`` config keys."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from dassl_ext.errors import UserError

logger = logging.getLogger(__name__)

AVAI_OPTIMS = ("sgd", "adam", "amsgrad", "adamw", "rmsprop", "radam")


def _trainable(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p for p in params if p.requires_grad]


def _staged_groups(model: nn.Module, optim_cfg: Any) -> list[dict]:
    """Dassl's STAGED_LR: children named in NEW_LAYERS get LR, the others LR * BASE_LR_MULT."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    new_layers = optim_cfg.NEW_LAYERS
    if isinstance(new_layers, str):
        new_layers = [new_layers]
    if not new_layers:
        raise UserError("OPTIM.STAGED_LR is True but OPTIM.NEW_LAYERS is empty: name the layers.")
    names = {name for name, _ in model.named_children()}
    missing = [n for n in new_layers if n not in names]
    if missing:
        raise UserError(
            f"OPTIM.NEW_LAYERS names {missing}, which are not children of the model "
            f"(children: {sorted(names)})."
        )
    base_params: list[torch.Tensor] = []
    new_params: list[torch.Tensor] = []
    for name, module in model.named_children():
        (new_params if name in new_layers else base_params).extend(module.parameters())
    return [
        {"params": _trainable(base_params), "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT},
        {"params": _trainable(new_params)},
    ]


def _param_groups(model_or_params: Any, optim_cfg: Any, param_groups: Any) -> list[dict]:
    if param_groups is not None:
        if optim_cfg.STAGED_LR:
            logger.warning("OPTIM.STAGED_LR is ignored because param_groups were given.")
        groups = [dict(g) for g in param_groups]
    elif optim_cfg.STAGED_LR:
        if not isinstance(model_or_params, nn.Module):
            raise UserError("OPTIM.STAGED_LR needs an nn.Module, not a list of parameters.")
        groups = _staged_groups(model_or_params, optim_cfg)
    elif isinstance(model_or_params, nn.Module):
        groups = [{"params": list(model_or_params.parameters())}]
    else:
        items = list(model_or_params)
        if items and isinstance(items[0], dict):
            groups = [dict(g) for g in items]
        else:
            groups = [{"params": items}]
    for g in groups:
        g["params"] = _trainable(
            [g["params"]] if isinstance(g["params"], torch.Tensor) else g["params"]
        )
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
    """Build the optimizer named by ``OPTIM.NAME`` (Dassl's keys and defaults).

    Only parameters with ``requires_grad`` are handed to the optimizer. ``param_groups``
    (a list of dicts with ``params``) overrides the groups derived from the model.
    """
    name = str(optim_cfg.NAME).lower()
    if name not in AVAI_OPTIMS:
        raise UserError(f"OPTIM.NAME is {optim_cfg.NAME!r}; use one of {list(AVAI_OPTIMS)}.")
    groups = _param_groups(model_or_params, optim_cfg, param_groups)
    lr, wd = float(optim_cfg.LR), float(optim_cfg.WEIGHT_DECAY)
    betas = (float(optim_cfg.ADAM_BETA1), float(optim_cfg.ADAM_BETA2))
    if name == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=float(optim_cfg.MOMENTUM),
            weight_decay=wd,
            dampening=float(optim_cfg.SGD_DAMPNING),
            nesterov=bool(optim_cfg.SGD_NESTEROV),
        )
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(
            groups, lr=lr, weight_decay=wd, betas=betas, amsgrad=name == "amsgrad"
        )
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=wd, betas=betas)
    if name == "rmsprop":
        return torch.optim.RMSprop(
            groups,
            lr=lr,
            momentum=float(optim_cfg.MOMENTUM),
            weight_decay=wd,
            alpha=float(optim_cfg.RMSPROP_ALPHA),
        )
    return torch.optim.RAdam(groups, lr=lr, weight_decay=wd, betas=betas)
