"""Errors that carry a message meant for the user, not a traceback."""


class UserError(RuntimeError):
    """Bad input from the user: one sentence naming the offending thing and what to do
    (``train.py`` prints it and exits with status 1)."""


def first_line(e: BaseException, limit: int | None = 160) -> str:
    """The first line of an error's text, cut at ``limit`` characters ("" for an empty text):
    the part of a long library error (torch, onnxruntime) that goes into a sentence."""
    lines = str(e).strip().splitlines()
    return lines[0][:limit] if lines else ""
