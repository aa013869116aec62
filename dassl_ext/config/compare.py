"""Which differences between two configurations change a run's results: a run continued
with ``--resume``, or a folder that holds a ``results.json``, must keep the configuration its
record describes, less :data:`RESULT_NEUTRAL_KEYS` (where a run is, how it reports, how it
uses this machine)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import yaml

from dassl_ext.config.defaults import ADDED, RETIRED
from dassl_ext.errors import UserError

# Where a run is and how it reports (the config hash of results.json leaves them out too)
PLACE_KEYS = (
    "OUTPUT_DIR", "RESUME", "DATASET.ROOT", "MODEL.CLIP_ROOT", "TRAIN.PRINT_FREQ",
    "TEST.SAVE_LOGITS", "TEST.PER_CLASS_RESULT", "TEST.COMPUTE_CMAT",
    "MODEL.GRAD_CHECKPOINTING",  # memory only: the same results
    "DATASET.CHECK_IMAGES",  # which input checks run before training, not what is trained
)  # fmt: skip
# ... plus how the run uses the machine it is on. The same experiment, though with another
# DATALOADER.NUM_WORKERS the random augmentations are drawn by other worker processes
RESULT_NEUTRAL_KEYS = (
    *PLACE_KEYS, "DATALOADER.NUM_WORKERS", "DIST.TIMEOUT",
    "DATALOADER.TEST.BATCH_SIZE",  # evaluation batches: the same predictions
    "USE_CUDA",  # a preference: the device is the machine's, as the number of processes
    "TRAIN.CHECKPOINT_FREQ",  # which epochs are saved, not what is trained
)  # fmt: skip

ABSENT = "(absent)"
# From this many keys missing in a saved config, say that the record itself may be damaged
MANY_ABSENT = 5


def flatten(node: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"OPTIM.LR": 0.1, ...}``: the leaves of a nested mapping by dotted key; tuples
    become lists (as in a yaml file)."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = plain(value)
    return flat


def plain(value: Any) -> Any:
    """Mappings (a CfgNode) and tuples as plain dicts and lists, as in a yaml file."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def config_differences(saved: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    """``[(key, old value, new value), ...]`` for every key (sorted) whose value differs
    between ``saved`` and ``new``, less :data:`RESULT_NEUTRAL_KEYS`; a key only one side has
    shows :data:`ABSENT` on the other."""
    old = {k: v for k, v in flatten(saved).items() if k not in RETIRED}  # never read
    cur = flatten(new)
    old.update({k: plain(v) for k, v in ADDED.items() if k not in old and k in cur})
    pairs = [(k, old.get(k, ABSENT), cur.get(k, ABSENT)) for k in sorted(set(old) | set(cur))]
    return [(k, a, b) for k, a, b in pairs if k not in RESULT_NEUTRAL_KEYS and a != b]


def format_differences(diffs: list[tuple[str, Any, Any]], most: int = 8) -> str:
    """``KEY: old -> new; KEY: old -> new`` (at most ``most``, then how many more)."""

    def show(v: Any) -> str:
        return repr(v) if isinstance(v, str) and v != ABSENT else str(v)

    shown = "; ".join(f"{k}: {show(a)} -> {show(b)}" for k, a, b in diffs[:most])
    shown += f"; and {len(diffs) - most} more" if len(diffs) > most else ""
    lacking = sum(a == ABSENT for _, a, _ in diffs)
    if lacking >= MANY_ABSENT:  # not another experiment, but a record that lost its tail
        shown += (
            f" (the saved config lacks {lacking} keys: a config.yaml cut short or damaged, "
            "or one written by an older version of this code)"
        )
    return shown


def read_saved_config(path: str) -> dict | None:
    """The mapping in a run's ``config.yaml``; None if there is none. A file that cannot be
    read as such is a UserError naming it."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        bad = None if isinstance(data, dict) else "not a mapping of keys"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        bad = getattr(e, "strerror", None) or type(e).__name__
    if bad:
        raise UserError(
            f"Cannot read the configuration of the run in {os.path.dirname(path)} from {path} "
            f"({bad}); restore that file, or use another --output-dir."
        )
    return data
