"""Offline reporting on finished runs: seed aggregation into base / new / HM tables
(``aggregate``), Markdown and CSV (``tables``), plots (``plots``) and reading the logs of
runs made with Dassl / the official code (``dassl_log``).

It knows no method, paper or dataset by name: a ``reference.Reference`` (read from a yaml
file such as ``configs/reporting/promptkd.yaml``) brings the published numbers, the row
order and how official logs report. It needs no torch.
"""
