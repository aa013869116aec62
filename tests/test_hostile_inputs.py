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


# ---------------------------------------------------------------- class names and CLIP's tokens
LONG_NAME = "_".join(["very"] * 80) + "_long_aircraft"  # 82 words: over CLIP's 77 tokens


@pytest.fixture(scope="module")
def tiny_teacher(tiny_clip_root):
    from dassl_ext.modeling import load_clip

    return load_clip("tiny-teacher", tiny_clip_root)


def test_a_class_name_over_77_tokens_is_one_sentence_naming_it(tiny_teacher):
    """CoOp-family prompts, PromptSRC's and zero-shot CLIP's templates: the class, its
    token count and what to shorten, not the tokenizer's RuntimeError."""
    from dassl_ext.modeling import build_prompt_buffers
    from trainers.promptsrc import zero_shot_text_features
    from trainers.zsclip import ZeroshotModel

    names = ["cat", LONG_NAME]
    with pytest.raises(UserError) as e:
        build_prompt_buffers(tiny_teacher, names, "a photo of a", 4)
    message = str(e.value)
    assert message.startswith(f"Class 1 {LONG_NAME!r} is too long for CLIP: its prompt ")
    # 4 prefix words + 82 name words + "." + start/end tokens
    assert "is 89 tokens, and CLIP's text encoder reads at most 77 (7 of them" in message
    assert "shorten the name in the dataset's class names" in message and "classname_fixes" in (
        message
    )
    with pytest.raises(UserError, match="is too long for CLIP"):
        zero_shot_text_features(tiny_teacher, None, names, ["a photo of a {}."])
    with pytest.raises(UserError, match="is too long for CLIP"):
        ZeroshotModel(tiny_teacher, names, ["a photo of a {}."]).text_features()


def test_empty_class_name_is_refused_and_unusual_names_are_kept(tiny_teacher):
    """An empty name is refused; non-ASCII names (accents, CJK) reach the tokenizer as they
    are, and underscores become spaces (as CoOp)."""
    from dassl_ext.modeling import build_prompt_buffers, clip

    for empty in ("", "  ", "_"):
        with pytest.raises(UserError, match=r"Class 1 has an empty name .*classname_fixes"):
            build_prompt_buffers(tiny_teacher, ["cat", empty], "a photo of a", 4)
    names = ["café", "猫", "sea_lion"]
    tokens, _, _ = build_prompt_buffers(tiny_teacher, names, "a photo of a", 4)
    decoded = [
        clip.clip._tokenizer.decode([t for t in row.tolist() if t][1:-1]).strip() for row in tokens
    ]
    assert decoded == ["a photo of a café .", "a photo of a 猫 .", "a photo of a sea lion ."]


def test_ctx_init_over_77_tokens_is_one_sentence(tiny_teacher):
    from dassl_ext.modeling import word_ctx_or_random

    with pytest.raises(UserError, match=r"CTX_INIT .* is 102 tokens; CLIP's text encoder"):
        word_ctx_or_random(tiny_teacher, " ".join(["word"] * 100), 4)
