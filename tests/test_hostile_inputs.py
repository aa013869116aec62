"""Bad input and faults outside predict.py, each one sentence instead of a traceback: an
evaluation batch that does not fit in memory, class names CLIP cannot tokenize, corrupt
files of the project's own formats (teacher text-feature cache, CLIP weights, export)."""

from __future__ import annotations

import os

import pytest
import torch
from test_engine_tiny import TinyEngineTrainer, tiny, tiny_argv  # noqa: F401 (fixture)

import train
from dassl_ext.errors import UserError

CPU_OOM = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
MEMORY_ERRORS = {
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "cpu-memoryerror": lambda: MemoryError(),
    "cpu-allocator": lambda: RuntimeError(CPU_OOM + "you tried to allocate 8589934592 bytes."),
    "cpu-cant-allocate": lambda: RuntimeError("DefaultCPUAllocator: can't allocate memory"),
}


@pytest.mark.parametrize("kind", MEMORY_ERRORS)
def test_evaluation_out_of_memory_names_the_batch_size_and_keeps_checkpoints(
    kind, tiny, monkeypatch, capsys  # noqa: F811
):  # fmt: skip
    """Training ends, the test batch does not fit: one sentence naming
    DATALOADER.TEST.BATCH_SIZE (value, half) and --eval-only, and the checkpoint is kept."""
    root, out = tiny

    def no_memory(self, image):
        raise MEMORY_ERRORS[kind]()

    monkeypatch.setattr(TinyEngineTrainer, "model_inference", no_memory)
    assert train.main(tiny_argv(root, out, "DATALOADER.TEST.BATCH_SIZE", "6")) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.splitlines()[0]
    assert line.startswith("Error: Evaluating the test split ran out of ")
    assert "DATALOADER.TEST.BATCH_SIZE 6 " in line and "DATALOADER.TEST.BATCH_SIZE 3 (half)" in line
    assert f"--eval-only --model-dir {out}" in line
    assert os.path.isfile(os.path.join(out, "TinyNet", "model.pth.tar-2"))


def test_evaluation_error_that_is_not_memory_is_not_renamed(tiny, monkeypatch):  # noqa: F811
    root, out = tiny

    def broken(self, image):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(TinyEngineTrainer, "model_inference", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        train.main(tiny_argv(root, out))


def test_is_out_of_memory_ignores_our_own_sentences():
    from dassl_ext.evaluation.memory import is_out_of_memory

    assert not is_out_of_memory(UserError("The disk ran out of memory cards."))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory."))
