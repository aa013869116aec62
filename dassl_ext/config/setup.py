"""Build the run configuration: defaults <- extensions <- dataset yaml <- method yaml <- CLI.

Yaml files may inherit with ``_BASE_: relative/or/absolute.yaml`` (a string or a list);
the child's keys override the base's. Unknown keys are a :class:`UserError`.
"""

from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Callable, Sequence
from typing import Any

import yaml
from yacs.config import CfgNode

from dassl_ext.config.defaults import _C
from dassl_ext.errors import UserError
from dassl_ext.utils.atomic import write_text_atomic

BASE_KEY = "_BASE_"
_EXTENSIONS: list[Callable[[CfgNode], None]] = []


def get_cfg_default() -> CfgNode:
    """A fresh copy of the defaults (without trainer extensions)."""
    return _C.clone()


def register_config_extension(fn: Callable[[CfgNode], None]) -> Callable[[CfgNode], None]:
    """Decorator: ``fn(cfg)`` adds a trainer's own section; applied by :func:`setup_cfg`."""
    key = (fn.__module__, fn.__qualname__)
    _EXTENSIONS[:] = [f for f in _EXTENSIONS if (f.__module__, f.__qualname__) != key]
    _EXTENSIONS.append(fn)
    return fn


def apply_config_extensions(cfg: CfgNode) -> CfgNode:
    """Run every registered extension on ``cfg`` (in registration order) and return it."""
    for fn in _EXTENSIONS:
        fn(cfg)
    return cfg


def load_yaml_with_base(path: str, _stack: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a yaml file into a dict, resolving ``_BASE_`` recursively (relative to the file)."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise UserError(f"Config file {path} does not exist; check the path you passed.")
    if path in _stack:
        raise UserError(f"Config file {path} inherits from itself through _BASE_; break the cycle.")
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise UserError(f"Config file {path} is not valid yaml: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"Config file {path} must hold a mapping of keys at its top level.")
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else list(bases):
        base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)
        _deep_update(merged, load_yaml_with_base(base_path, (*_stack, path)))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def _unknown_key_error(full_key: str, node: CfgNode, source: str) -> UserError:
    last = full_key.split(".")[-1]
    close = difflib.get_close_matches(last, list(node.keys()), n=1)
    hint = f" (did you mean {full_key.rsplit('.', 1)[0] + '.' if '.' in full_key else ''}"
    hint = f"{hint}{close[0]}?)" if close else ""
    return UserError(
        f"Unknown config key {full_key} in {source}{hint}; remove it, or make sure the trainer "
        "that defines it is registered."
    )


def _check_keys(data: dict, node: CfgNode, source: str, prefix: str = "") -> None:
    for k, v in data.items():
        full_key = f"{prefix}{k}"
        if k not in node:
            raise _unknown_key_error(full_key, node, source)
        if isinstance(v, dict):
            if not isinstance(node[k], CfgNode):
                raise UserError(f"Config key {full_key} in {source} is a value, not a section.")
            _check_keys(v, node[k], source, full_key + ".")


def _widen(current: Any, value: Any) -> Any:
    """An int where the default is a float becomes that float (yacs refuses the int, yet
    official files and scripts write ``KD_WEIGHT 1000`` or ``GPA_MEAN: 15``)."""
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _widen_tree(data: dict, node: CfgNode) -> None:
    for k, v in data.items():
        if isinstance(v, dict) and isinstance(node.get(k), CfgNode):
            _widen_tree(v, node[k])
        else:
            data[k] = _widen(node.get(k), v)


def merge_from_file(cfg: CfgNode, path: str) -> CfgNode:
    """Merge a yaml file (with ``_BASE_`` inheritance) into ``cfg``; unknown keys -> UserError."""
    data = load_yaml_with_base(path)
    _check_keys(data, cfg, path)
    _widen_tree(data, cfg)
    try:
        cfg.merge_from_other_cfg(CfgNode(data))
    except (ValueError, KeyError, AssertionError) as e:
        raise UserError(f"Config file {path}: {e}") from None
    return cfg


def merge_from_list(cfg: CfgNode, opts: Sequence[str]) -> CfgNode:
    """Merge trailing ``KEY VALUE`` pairs; unknown keys and bad values -> UserError."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise UserError(f"Trailing options must be KEY VALUE pairs; got an odd list {opts}.")
    for key, value in zip(opts[0::2], opts[1::2]):
        node = cfg
        parts = key.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, CfgNode) or part not in node:
                parent = node if isinstance(node, CfgNode) else CfgNode()
                raise _unknown_key_error(".".join(parts[: i + 1]), parent, "the command line")
            node = node[part]
        if isinstance(value, str):
            value = CfgNode._decode_cfg_value(value)
        try:
            cfg.merge_from_list([key, _widen(node, value)])
        except (ValueError, KeyError, AssertionError) as e:
            raise UserError(f"Command-line option {key} {value}: {e}") from None
    return cfg


def reset_cfg(cfg: CfgNode, args: Any) -> None:
    """Apply Dassl's CLI flags (``--root``, ``--seed`` ...) to ``cfg``; ``--seed 0`` counts."""
    arg = lambda name: getattr(args, name, None)  # noqa: E731
    if arg("root"):
        cfg.DATASET.ROOT = arg("root")
    if arg("output_dir"):
        cfg.OUTPUT_DIR = arg("output_dir")
    if arg("resume"):
        cfg.RESUME = arg("resume")
        if not arg("output_dir"):  # continue writing where the run was
            cfg.OUTPUT_DIR = arg("resume")
    if arg("seed") is not None and arg("seed") >= 0:
        cfg.SEED = arg("seed")
    if arg("source_domains"):
        cfg.DATASET.SOURCE_DOMAINS = arg("source_domains")
    if arg("target_domains"):
        cfg.DATASET.TARGET_DOMAINS = arg("target_domains")
    if arg("transforms"):
        cfg.INPUT.TRANSFORMS = arg("transforms")
    if arg("trainer"):
        cfg.TRAINER.NAME = arg("trainer")
    if arg("backbone"):
        cfg.MODEL.BACKBONE.NAME = arg("backbone")


def setup_cfg(args: Any) -> CfgNode:
    """Frozen cfg from defaults, registered extensions, yaml files, CLI flags and ``args.opts``."""
    cfg = apply_config_extensions(get_cfg_default())
    if getattr(args, "dataset_config_file", None):
        merge_from_file(cfg, args.dataset_config_file)
    if getattr(args, "config_file", None):
        merge_from_file(cfg, args.config_file)
    reset_cfg(cfg, args)
    merge_from_list(cfg, getattr(args, "opts", None) or [])
    cfg.freeze()
    return cfg


def write_config(cfg: CfgNode, output_dir: str) -> str:
    """Write ``cfg`` as ``<output_dir>/config.yaml`` (atomically) and return the path."""
    return write_text_atomic(os.path.join(output_dir, "config.yaml"), cfg.dump())


def scale_for_world_size(cfg: CfgNode, world_size: int) -> CfgNode:
    """With ``DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK`` the global batch grows with the number
    of processes, so ``OPTIM.LR`` is multiplied by it (the linear scaling rule); the config
    written to ``config.yaml`` holds the LR used. Otherwise nothing changes."""
    if cfg.DATALOADER.TRAIN_X.BATCH_SIZE_PER_RANK and world_size > 1:
        cfg.defrost()
        cfg.OPTIM.LR = float(cfg.OPTIM.LR) * world_size
        cfg.freeze()
    return cfg
