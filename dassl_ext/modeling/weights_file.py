"""Reading a CLIP weights file whatever its format: OpenAI's TorchScript archives, plain
``torch.save`` state dicts (read with ``weights_only=True``: no pickled code runs) and
``.safetensors`` files (open_clip's Hugging Face downloads). Shared by the OpenAI loader
(``loading.py``) and the open_clip one (``openclip.py``)."""

from __future__ import annotations

import warnings
import zipfile

import torch

from dassl_ext.errors import UserError


def _reason(e: BaseException) -> str:
    """``Type: first line`` of an error (torch's load errors run over many lines)."""
    if isinstance(e, EOFError) or not str(e).strip():
        kind = "the file is empty or cut short" if isinstance(e, EOFError) else ""
        return f"{type(e).__name__}{': ' + kind if kind else ''}"
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return f"{type(e).__name__}: {text[:200]}"


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def read_clip_state_dict(path: str, mmap: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (any of the module docstring's formats). ``mmap`` maps a plain
    file, for a look at shapes or a few tensors; ``load_clip`` reads (one mapping would keep
    every page of the fp32 tensors it keeps resident, while read tensors are freed as cast)."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        if _is_torchscript(path):
            with warnings.catch_warnings():
                # OpenAI ships TorchScript; torch's "use torch.export" advice is not for users.
                warnings.simplefilter("ignore", FutureWarning)
                return dict(torch.jit.load(path, map_location="cpu").state_dict())
        mmap = mmap and zipfile.is_zipfile(path)  # torch's legacy format cannot be mapped
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise UserError(
            f"Cannot read CLIP weights '{path}' ({_reason(e)}); delete or replace it."
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"CLIP weights '{path}' hold a {type(obj).__name__}, not a state dict.")
    return obj
