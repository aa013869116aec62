"""Pretrained CLIP stand-ins shipped with the repository (``digits-teacher``, ``digits-student``).

Small CLIP-shaped models pretrained contrastively by ``scripts/pretrain_clip.py`` on the
Digits train split, in OpenAI's state-dict layout (fp16). They let the offline demo and
the method-level tests measure accuracy without OpenAI's weights; each file has a
manifest (``<name>.json``: data, recipe, sha256, zero-shot accuracy) beside it.
``load_clip("digits-teacher")`` finds them after the usual folders.
"""

import os

STANDIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
STANDIN_NAMES = ("digits-teacher", "digits-student")


def standin_path(name: str) -> str:
    """Where the packaged weights of stand-in ``name`` live."""
    return os.path.join(STANDIN_DIR, f"{name}.pt")
