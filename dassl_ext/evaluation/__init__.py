"""Evaluation: the classification evaluator, results.json, and seed aggregation."""

from dassl_ext.evaluation.evaluator import Classification, build_evaluator
from dassl_ext.evaluation.results import config_hash, read_results, write_results

__all__ = ["Classification", "build_evaluator", "config_hash", "read_results", "write_results"]
