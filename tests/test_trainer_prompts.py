"""Prompt construction of the trainers on tiny CLIP: CoOp class-token positions, CSC,
word initialisation, MaPLe's frozen words in the suffix, CoCoOp's per-image context."""

from __future__ import annotations

import pytest
import torch

from dassl_ext.errors import UserError
from dassl_ext.modeling import clip, load_clip
from trainers import cocoop, coop, maple

NAMES = ["fire_truck", "cat"]


@pytest.fixture(scope="module")
def clip_model(tiny_clip_root):
    return load_clip("tiny-student", tiny_clip_root)


def _embed(clip_model, text: str) -> torch.Tensor:
    with torch.no_grad():
        return clip_model.token_embedding(clip.tokenize(text))[0]  # (77, D)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_class_token_position(clip_model, position):
    learner = coop.CoOpPromptLearner(clip_model, NAMES, 4, "", class_token_position=position)
    with torch.no_grad():
        prompts, tokens = learner()
    assert prompts.shape == (2, 77, clip_model.token_embedding.weight.shape[1])
    ref = _embed(clip_model, "X X X X fire truck.")  # SOS, 4 ctx, 2 name tokens, ".", EOT
    ctx, name = learner.ctx.detach(), ref[5:7]
    assert learner.name_lens == [2, 1]
    layout = {
        "end": [ctx, name],
        "middle": [ctx[:2], name, ctx[2:]],
        "front": [name, ctx],
    }[position]
    torch.testing.assert_close(prompts[0, 1:7], torch.cat(layout))
    torch.testing.assert_close(prompts[0, 7:], ref[7:])  # ".", EOT, padding
    assert torch.equal(tokens[0], clip.tokenize("X X X X fire truck.")[0])


def test_coop_word_init_and_csc(clip_model):
    words = coop.CoOpPromptLearner(clip_model, NAMES, 16, "a photo of a")
    torch.testing.assert_close(words.ctx.detach(), _embed(clip_model, "a photo of a")[1:5])
    csc = coop.CoOpPromptLearner(clip_model, NAMES, 3, "", csc=True)
    assert csc.ctx.shape[:2] == (2, 3)
    with torch.no_grad():
        prompts, _ = csc(torch.tensor([1]))
    torch.testing.assert_close(prompts[0, 1:4], csc.ctx[1].detach())
    with pytest.raises(UserError, match="CLASS_TOKEN_POSITION"):
        coop.CoOpPromptLearner(clip_model, NAMES, 4, "", class_token_position="left")


def test_maple_keeps_unused_init_words_frozen(clip_model):
    learner = maple.MultiModalPromptLearner(clip_model, NAMES, 2, "a photo of a", depth=3)
    ref = _embed(clip_model, "a photo of a cat.")
    torch.testing.assert_close(learner.ctx.detach(), ref[1:3])  # "a photo" is learnable
    torch.testing.assert_close(learner.token_suffix[1, :2], ref[3:5])  # "of a" stays frozen
    assert len(learner.compound_prompts_text) == 2
    w = [p.weight for p in learner.compound_prompt_projections]
    assert torch.equal(w[0], w[1]) and w[0] is not w[1]  # identical copies, as official
    with pytest.raises(UserError, match="PROMPT_DEPTH"):
        maple.MultiModalPromptLearner(clip_model, NAMES, 2, "a photo of a", depth=99)


def test_cocoop_context_depends_on_the_image(clip_model):
    model = cocoop.CoCoOpCLIP(clip_model, NAMES, 4, "a photo of a")
    feats = torch.nn.functional.normalize(torch.randn(3, clip_model.visual.output_dim), dim=-1)
    with torch.no_grad():
        prompts, tokens = model.prompt_learner(feats)
        logits = model(torch.randn(3, 3, 32, 32))
    assert prompts.shape[:2] == (3, 2) and tokens.shape == (2, 77)
    assert not torch.equal(prompts[0, :, 1:5], prompts[1, :, 1:5])
    torch.testing.assert_close(prompts[0, :, 5:], prompts[1, :, 5:])  # class tokens shared
    assert logits.shape == (3, 2)


def test_shared_trainer_parts_keep_names_and_inference():
    """PromptSRC is a VLPromptTrainer (its registered name and teacher support unchanged);
    CoCoOp and ZeroshotCLIP evaluate through one model_inference (the model's forward)."""
    from trainers.base import ForwardInference
    from trainers.ivlp import IVLP
    from trainers.promptsrc import PromptSRC
    from trainers.vl_prompts import VLPromptTrainer
    from trainers.zsclip import ZeroshotCLIP

    assert issubclass(PromptSRC, VLPromptTrainer) and PromptSRC.model_name == "VLPromptLearner"
    assert PromptSRC.frozen_teacher == IVLP.frozen_teacher
    assert PromptSRC.frozen_teacher.default_model_name == "VLPromptLearner"
    inference = ForwardInference.model_inference
    assert cocoop.CoCoOp.model_inference is inference is ZeroshotCLIP.model_inference
