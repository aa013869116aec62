"""Errors that carry a message meant for the user, not a traceback."""


class UserError(RuntimeError):
    """Bad input from the user: one sentence naming the offending thing and what to do
    (``train.py`` prints it and exits with status 1)."""
