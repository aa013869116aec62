"""Evaluation during a run: the classification evaluator and results.json.

Names are imported on first use, so reading results.json (dassl_ext.reporting) needs no
torch.
"""

from dassl_ext.utils.lazy import lazy_exports

_EXPORTS = {
    "Classification": "dassl_ext.evaluation.evaluator",
    "build_evaluator": "dassl_ext.evaluation.evaluator",
    "config_hash": "dassl_ext.evaluation.results",
    "read_results": "dassl_ext.evaluation.results",
    "write_results": "dassl_ext.evaluation.results",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
