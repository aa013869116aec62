"""An evaluation batch that does not fit in memory: one sentence naming the batch size.

Evaluation runs after all the training, so running out of memory there must not look like
a crash that lost the run: the checkpoints are on disk and only the evaluation is redone.
"""

from __future__ import annotations

import torch

from dassl_ext.errors import UserError, first_line

# What the CPU allocator says (a plain RuntimeError) when an allocation fails
_CPU_OOM_SIGNS = ("can't allocate memory", "not enough memory", "out of memory")


def is_out_of_memory(e: BaseException) -> bool:
    """True for a CUDA ``torch.OutOfMemoryError``, a ``MemoryError`` or the CPU allocator's
    RuntimeError ("DefaultCPUAllocator: can't allocate memory" / "not enough memory")."""
    if isinstance(e, UserError):  # our own sentences, whatever they mention
        return False
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _CPU_OOM_SIGNS)


def evaluation_memory_error(e: BaseException, cfg, split: str) -> UserError:
    """The sentence for running out of memory while evaluating ``split``."""
    batch = int(cfg.DATALOADER.TEST.BATCH_SIZE)
    out = cfg.OUTPUT_DIR
    first = first_line(e, 120)
    where = "GPU" if isinstance(e, torch.OutOfMemoryError) else "CPU"
    return UserError(
        f"Evaluating the {split} split ran out of {where} memory with "
        f"DATALOADER.TEST.BATCH_SIZE {batch} ({type(e).__name__}: {first}); set "
        f"DATALOADER.TEST.BATCH_SIZE {max(1, batch // 2)} (half) and evaluate again: the "
        f"checkpoints already saved in {out} are kept, and `python train.py --eval-only "
        f"--model-dir {out} <the same arguments> DATALOADER.TEST.BATCH_SIZE "
        f"{max(1, batch // 2)}` evaluates them without training again."
    )
