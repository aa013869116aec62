"""Offline reporting on finished runs (no torch): seed aggregation into base / new / HM
tables (``aggregate``), Markdown and CSV (``tables``), plots, official Dassl logs
(``dassl_log``). It knows no method, paper or dataset by name: a ``reference.Reference``
yaml file (``configs/reporting/promptkd.yaml``) brings published numbers, row order and how
official logs report."""
