"""Trainers: one module per method; importing this package registers them all."""

from trainers import cocoop, coop, ivlp, maple, promptkd, promptsrc, zsclip  # noqa: F401
