"""What the reports compare with and how they read official logs, from a yaml file (the
PromptKD paper's: ``configs/reporting/promptkd.yaml``): row order, published base / new / HM
per trainer and dataset, which official runs log base and new in one ``log.txt``, and the
official scripts' dataset folder names. All keys are optional; an empty :class:`Reference`
(the default everywhere) means none of this.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import yaml

from dassl_ext.errors import UserError

Numbers = dict[str, tuple[float, float, float]]  # dataset -> (base, new, HM) in %
KEYS = ("DATASETS", "PUBLISHED", "DEFAULT_METHOD", "BASE_NEW_IN_ONE_LOG", "DATASET_DIRS")


@dataclass(frozen=True)
class Reference:
    """Outside knowledge for the reports (see the module docstring)."""

    datasets: tuple[str, ...] = ()  # row order; other datasets follow by name
    published: dict[str, Numbers] = field(default_factory=dict)  # trainer -> numbers
    default_method: str | None = None  # compared with when a trainer has no numbers
    # config values (dotted keys) of official runs whose one log holds base and new
    base_new_in_one_log: tuple[dict[str, str], ...] = ()
    dataset_dirs: dict[str, str] = field(default_factory=dict)  # official folder -> name

    def numbers_for(self, trainer: str) -> tuple[str, Numbers] | None:
        """(method, numbers): the trainer's own published row, else the default method's;
        None when there is neither."""
        method = trainer if trainer in self.published else self.default_method
        return (method, self.published[method]) if method in self.published else None

    def dataset_order(self, name: str) -> tuple:
        """Sort key of a dataset row: the reference's order first, then by name."""
        known = name in self.datasets
        return (self.datasets.index(name) if known else len(self.datasets), name)

    def logs_base_and_new(self, config: dict[str, str]) -> bool:
        """Whether a Dassl log with this (flattened) config reports base and new at once."""
        return any(
            all(config.get(k) == str(v) for k, v in rule.items())
            for rule in self.base_new_in_one_log
        )


def add_reference_options(
    parser: argparse.ArgumentParser, paper_help: str, default_reference: str
) -> None:
    """``--paper`` and ``--reference FILE``, the options the reporting scripts share."""
    parser.add_argument("--paper", action="store_true", help=paper_help)
    parser.add_argument(
        "--reference",
        default=default_reference,
        metavar="FILE",
        help="published numbers, row order and official-log rules (default: %(default)s)",
    )


def load_reference(path: str) -> Reference:
    """Read a reference yaml file (keys: see ``KEYS``); a malformed file is a UserError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"Cannot read the reference file {path} ({e}); pass a yaml file.") from None
    unknown = sorted(set(data) - set(KEYS)) if isinstance(data, dict) else ["(not a mapping)"]
    if unknown:
        raise UserError(f"Reference file {path} has unknown keys {unknown}; use {list(KEYS)}.")
    try:
        published = {
            str(method): {str(ds): tuple(float(x) for x in v) for ds, v in rows.items()}
            for method, rows in (data.get("PUBLISHED") or {}).items()
        }
        bad = [m for m, rows in published.items() for v in rows.values() if len(v) != 3]
        if bad:
            raise ValueError(f"{bad[0]} has a row that is not [base, new, HM]")
        return Reference(
            datasets=tuple(str(d) for d in data.get("DATASETS") or ()),
            published=published,
            default_method=data.get("DEFAULT_METHOD"),
            base_new_in_one_log=tuple(
                {str(k): str(v) for k, v in rule.items()}
                for rule in data.get("BASE_NEW_IN_ONE_LOG") or ()
            ),
            dataset_dirs={str(k): str(v) for k, v in (data.get("DATASET_DIRS") or {}).items()},
        )
    except (AttributeError, TypeError, ValueError) as e:
        raise UserError(f"Reference file {path} is malformed ({e}); see its keys {KEYS}.") from None
