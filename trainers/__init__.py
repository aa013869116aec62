"""Trainers: one module per method; importing this package registers them all."""

from trainers import ivlp, promptkd, promptsrc  # noqa: F401
