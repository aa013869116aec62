"""Build the run configuration: defaults <- extensions <- dataset yaml <- method yaml <- CLI.

Yaml files may inherit with ``_BASE_: relative/or/absolute.yaml`` (a string or a list);
the child's keys override the base's. Files are read strictly (``yaml_file.py``: duplicated
keys, encodings ...). Unknown keys, and values that do not fit the default's type, are a
:class:`UserError` of one sentence naming the key and where it was set.
"""

from __future__ import annotations

import copy
import difflib
import functools
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

from yacs.config import CfgNode

from dassl_ext.config.defaults import _C, is_retired
from dassl_ext.config.rules import short_repr as _shown
from dassl_ext.config.yaml_file import read_yaml_file
from dassl_ext.errors import UserError

BASE_KEY = "_BASE_"
NO_SEED = -1  # the documented "no fixed seed" (Dassl's default)
MAX_SEED = 2**32 - 1  # numpy's largest seed
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
    """Read a yaml file (strictly: :func:`read_yaml_file`) into a dict, resolving ``_BASE_``
    recursively (relative to the file)."""
    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise UserError(f"Config file {path} does not exist; check the path you passed.")
    if path in _stack:
        raise UserError(f"Config file {path} inherits from itself through _BASE_; break the cycle.")
    data = read_yaml_file(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"the single value {_shown(data)}"
        raise UserError(
            f"Config file {path} holds {kind} at its top level; it must hold "
            "sections of keys (e.g. OPTIM: followed by indented LR: 0.002)."
        )
    bases = data.pop(BASE_KEY, None)
    merged: dict[str, Any] = {}
    for base in _base_paths(path, bases) if bases is not None else []:
        if not os.path.exists(base):
            raise UserError(
                f"Config file {path} inherits from {base} (_BASE_), which does not exist; "
                "fix the path (relative to the inheriting file's folder)."
            )
        _deep_update(merged, load_yaml_with_base(base, (*_stack, path)))
    _deep_update(merged, data)
    return merged


def _base_paths(path: str, bases: Any) -> list[str]:
    """``_BASE_`` (a path or a list of paths, relative to ``path``'s folder) as paths."""
    items = [bases] if isinstance(bases, str) else bases
    if not isinstance(items, list) or not all(isinstance(b, str) and b for b in items):
        raise UserError(
            f"Config file {path}: _BASE_ is {_shown(bases)}; use the path of a yaml file, or a "
            "list of paths, relative to this file's folder."
        )
    return [os.path.join(os.path.dirname(path), b) for b in items]  # join keeps absolute b


def _deep_update(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep_update(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def _unknown_key_error(full_key: str, node: CfgNode, source: str) -> UserError:
    section, _, last = full_key.rpartition(".")
    upper = [k for k in node if k == last.upper()]  # 'optim': keys are upper case
    close = upper or difflib.get_close_matches(last, list(node.keys()), n=1)
    hint = f" (did you mean {section + '.' if section else ''}{close[0]}?)" if close else ""
    return UserError(
        f"Unknown config key {full_key} in {source}{hint}; remove it, or make sure the trainer "
        "that defines it is registered."
    )


_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def _kind(current: Any, value: Any) -> str:
    """What a key whose default is ``current`` takes ("use ...")."""
    for kind, text in ((bool, "True or False"), (int, "an integer"), (float, "a number")):
        if isinstance(current, kind):
            return text
    if isinstance(current, str):
        quote = " (quote yes, no, on, off: unquoted, yaml reads them as True / False)"
        return "text" + (quote if isinstance(value, bool) else "")
    n = len(current) or 1
    alien = bool(current) and not isinstance(value, type(current[0]))  # '32x32' for (224, 224)
    shown = [repr(v) for v in current] if alien else [repr(value)] * n
    return f"a list, e.g. [{', '.join(shown) if not isinstance(value, (dict, list)) else '...'}]"


def _conform(key: str, current: Any, value: Any, source: str) -> Any:
    """``value`` as the type of the default ``current``, or a UserError saying what to use:
    text is decoded as yacs does (``"1e-3"`` -> 0.001), integers widen to floats (official
    files write ``KD_WEIGHT 1000``), true/yes/on and false/no/off are booleans (as in yaml),
    a list fits a tuple key and the reverse."""
    if isinstance(current, CfgNode):
        first = next(iter(current.keys()), "KEY")
        shown = "empty" if value is None else _shown(value)
        section = "" if value is None else f", but {key} is a section"
        raise UserError(
            f"{key} is {shown} in {source}{section}; set its keys ({key}.{first}, ...) "
            "instead, or remove it."
        )
    if isinstance(value, dict):
        raise UserError(f"Config key {key} in {source} is a value, not a section.")
    if isinstance(value, str):
        decoded = CfgNode._decode_cfg_value(value)
        value = value if isinstance(current, str) and not isinstance(decoded, str) else decoded
    if value is None:
        raise UserError(
            f"{key} is empty in {source}; give it a value (the default is {_shown(current)}) "
            "or remove it."
        )
    if isinstance(current, bool) and isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    integer = isinstance(value, int) and not isinstance(value, bool)
    if isinstance(current, float) and integer:
        return float(value)
    if isinstance(current, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(current)(value)
    if type(value) is not type(current):
        raise UserError(
            f"{key} is {_shown(value)} in {source}; use {_kind(current, value)} (the default "
            f"is {_shown(current)})."
        )
    return value


def _conform_tree(data: dict, node: CfgNode, source: str, prefix: str = "") -> None:
    """Check every key of ``data`` against ``node`` and conform its value (in place)."""
    for k, v in list(data.items()):
        full_key = f"{prefix}{k}"
        if k not in node and is_retired(full_key):
            del data[k]  # accepted and ignored, as when the defaults held it
        elif k not in node and "." in str(k) and str(k).split(".")[0] in node:
            first, rest = str(k).split(".", 1)
            raise UserError(
                f"Config file {source} sets '{full_key}' as one key; in a yaml file write it "
                f"nested: {first}: on one line, then {rest}: {_shown(v)} indented below it."
            )
        elif k not in node:
            raise _unknown_key_error(full_key, node, source)
        elif isinstance(v, dict) and isinstance(node[k], CfgNode):
            _conform_tree(v, node[k], source, full_key + ".")
        else:
            data[k] = _conform(full_key, node[k], v, source)


def merge_from_file(cfg: CfgNode, path: str) -> CfgNode:
    """Merge a yaml file (with ``_BASE_`` inheritance) into ``cfg``; unknown keys and values
    of the wrong type -> UserError."""
    data = load_yaml_with_base(path)
    _conform_tree(data, cfg, path)
    _deep_update(cfg, data)  # not yacs' merge: it would decode text again ("123" -> 123)
    return cfg


def merge_from_list(cfg: CfgNode, opts: Sequence[str]) -> CfgNode:
    """Merge trailing ``KEY VALUE`` pairs; unknown keys and bad values -> UserError."""
    opts = list(opts or [])
    keys = opts if len(opts) % 2 else opts[0::2]
    flag = next((k for k in keys if re.fullmatch(r"--[a-z][a-z-]*", str(k))), None)
    if flag:  # argparse hands everything after the first KEY to the KEY VALUE list
        raise UserError(
            f"The flag {flag} comes after the KEY VALUE pairs, where it is read as a config key; "
            "put the flags (--seed, --eval-only, ...) before the first KEY VALUE pair."
        )
    if len(opts) % 2:
        raise UserError(f"Trailing options must be KEY VALUE pairs; got an odd list {opts}.")
    for key, value in zip(opts[0::2], opts[1::2]):
        parts = str(key).split(".")
        if "" in parts:
            raise UserError(
                f"Command-line key {key!r} has an empty part; write a full dotted name such "
                "as OPTIM.LR."
            )
        if is_retired(".".join(parts)):
            continue
        node = cfg
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if part not in node:
                raise _unknown_key_error(where, node, "the command line")
            if not isinstance(node[part], CfgNode):
                raise UserError(
                    f"Unknown config key {key} in the command line: {where} is a value, not a "
                    "section."
                )
            node = node[part]
        if parts[-1] not in node:
            raise _unknown_key_error(key, node, "the command line")
        node[parts[-1]] = _conform(key, node[parts[-1]], value, "the command line")
    return cfg


# Dassl's command-line flags and the keys they set when given (--resume and --seed: below)
_FLAG_KEYS = {
    "root": "DATASET.ROOT", "output_dir": "OUTPUT_DIR", "source_domains": "DATASET.SOURCE_DOMAINS",
    "target_domains": "DATASET.TARGET_DOMAINS", "transforms": "INPUT.TRANSFORMS",
    "trainer": "TRAINER.NAME", "backbone": "MODEL.BACKBONE.NAME",
}  # fmt: skip


def reset_cfg(cfg: CfgNode, args: Any) -> None:
    """Apply Dassl's CLI flags (``--root``, ``--seed`` ...) to ``cfg``; ``--seed 0`` counts."""
    arg = lambda name: getattr(args, name, None)  # noqa: E731
    for flag, key in _FLAG_KEYS.items():
        if arg(flag):
            *section, name = key.split(".")
            setattr(functools.reduce(getattr, section, cfg), name, arg(flag))
    if arg("resume"):
        cfg.RESUME = arg("resume")
        if not arg("output_dir"):  # continue writing where the run was
            cfg.OUTPUT_DIR = arg("resume")
    seed = arg("seed")
    if seed is not None and seed != NO_SEED:  # -1 is also argparse's "not given"
        if not 0 <= seed <= MAX_SEED:
            raise UserError(
                f"--seed {seed} is not a seed; use {NO_SEED} (no fixed seed, the default) or a "
                f"seed from 0 to {MAX_SEED}."
            )
        cfg.SEED = seed


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
