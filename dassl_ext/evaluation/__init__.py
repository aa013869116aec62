"""Evaluation during a run: the classification evaluator and results.json.

Names are imported on first use, so reading results.json (dassl_ext.reporting) needs no
torch.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Classification": "dassl_ext.evaluation.evaluator",
    "build_evaluator": "dassl_ext.evaluation.evaluator",
    "config_hash": "dassl_ext.evaluation.results",
    "read_results": "dassl_ext.evaluation.results",
    "write_results": "dassl_ext.evaluation.results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dassl_ext.evaluation' has no attribute {name!r}")
