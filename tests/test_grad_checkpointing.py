"""MODEL.GRAD_CHECKPOINTING: the prompted encoders recompute their blocks in the backward,
keep less for it, and every trainer ends with the same weights as without."""

from __future__ import annotations

import logging

import pytest
import torch
from test_promptkd import student_argv
from test_trainer_all import CONFIGS, argv
from torch import nn
from torch.utils.checkpoint import checkpoint

import train
from dassl_ext.engine.trainer import TrainerBase, enable_grad_checkpointing
from dassl_ext.modeling import (
    PromptedImageEncoder,
    PromptedTextEncoder,
    build_prompt_buffers,
    init_ctx_from_words,
    load_clip,
    prompted,
)


def _saved_bytes(fn) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages autograd keeps for the backward of ``fn()``."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("tower", ["image", "text"])
def test_encoders_keep_less_and_give_the_same_gradients(tower, tiny_clip_root):
    torch.manual_seed(0)
    clip_model = load_clip("tiny-teacher", tiny_clip_root)
    clip_model.requires_grad_(False)
    if tower == "image":
        encoder = PromptedImageEncoder(clip_model.visual, n_ctx=2, depth=3)
        images = torch.randn(4, 3, 32, 32)

        def run():
            return encoder(images)
    else:
        encoder = PromptedTextEncoder(clip_model, n_ctx=2, depth=3)
        ctx, prefix = init_ctx_from_words(clip_model, "a photo of", n_ctx=2)
        tokenized, sos, suffix = build_prompt_buffers(clip_model, ["cat", "dog"], prefix, 2)
        ctx = nn.Parameter(ctx)

        def run():
            prompts = torch.cat([sos, ctx.expand(2, -1, -1), suffix], dim=1)
            return encoder(prompts, tokenized)

    grads = {}
    kept = {}
    for on in (False, True):
        encoder.grad_checkpointing = on
        params = [p for p in encoder.parameters() if p.requires_grad]
        params += [ctx] if tower == "text" else []
        for p in params:
            p.grad = None
        kept[on], out = _saved_bytes(run)
        out.square().sum().backward()
        grads[on] = [p.grad.clone() for p in params]
        with torch.no_grad():  # and no recomputation where nothing is recorded
            torch.testing.assert_close(run(), out.detach(), rtol=0, atol=0)
    assert len(grads[True]) >= 3
    for a, b in zip(grads[False], grads[True]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert kept[True] < 0.5 * kept[False], kept


@pytest.mark.parametrize("name", ["CoOp", "PromptSRC", "MaPLe", "PromptKD"])
def test_trainers_end_with_the_same_weights(
    name, digits_root, tiny_clip_root, tmp_path, caplog, monkeypatch
):
    """CoOp trains through the whole CLIP (its forward module), PromptSRC both prompted
    towers, MaPLe's prompts come from its coupling functions, PromptKD's student alone."""
    weights, recomputed = {}, []

    def counting(block, *args, **kwargs):
        recomputed.append(block)
        return checkpoint(block, *args, **kwargs)

    monkeypatch.setattr(prompted, "run_checkpointed", counting)
    for on in ("False", "True"):
        assert not recomputed  # none without the option
        out = tmp_path / on
        opts = ("MODEL.GRAD_CHECKPOINTING", on, "OPTIM.WARMUP_EPOCH", "0")
        if name == "PromptKD":
            kd = ("TRAINER.PROMPTKD.TEACHER_TRAINER", "ZeroshotCLIP")
            kd += ("TRAINER.PROMPTKD.KD_WEIGHT", "1")
            args = student_argv(digits_root, tiny_clip_root, out, "", *kd, *opts)
            model = "VLPromptLearner"
        else:
            args, model = argv(name, out, digits_root, tiny_clip_root, *opts), CONFIGS[name][1]
        with caplog.at_level(logging.WARNING):
            assert train.main(args) == 0
        (path,) = (out / model).glob("model.pth.tar-*")
        weights[on] = torch.load(path, weights_only=True)["state_dict"]
    assert recomputed and "GRAD_CHECKPOINTING has no effect" not in caplog.text
    assert weights["True"].keys() == weights["False"].keys()
    for k, v in weights["False"].items():
        torch.testing.assert_close(weights["True"][k], v, rtol=0, atol=1e-6, msg=k)


def test_a_model_without_checkpointable_blocks_says_so(caplog):
    trainer = TrainerBase()
    trainer.grad_checkpointing = True
    model = nn.Linear(2, 2)
    assert enable_grad_checkpointing(model) == 0
    with caplog.at_level(logging.WARNING):
        trainer.register_model("head", model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert "MODEL.GRAD_CHECKPOINTING has no effect on 'head'" in caplog.text
