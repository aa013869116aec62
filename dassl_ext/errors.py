"""Errors that carry a message meant for the user, not a traceback."""


class UserError(RuntimeError):
    """Bad input from the user (missing file, wrong key, ...).

    The message is one sentence that names the offending thing and what to do.
    ``train.py`` prints it and exits with status 1.
    """
