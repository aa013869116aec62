"""TrainerBase update path: zero_grad, backward, clipping, step, scheduler once per epoch."""

import pytest
import torch

from dassl_ext.engine import TrainerBase


def _trainer(clip: float = 0.0):
    t = TrainerBase()
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    optim = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=1, gamma=0.5)
    t.register_model("m", model, optim, sched)
    t.grad_clip_norm = clip
    return t, model


def test_update_zeroes_old_grads_and_clips():
    t, model = _trainer(clip=1.0)
    x = torch.tensor([[30.0, 40.0]])  # gradient (30, 40): norm 50 -> clipped to 1
    for _ in range(2):
        before = model.weight.detach().clone()
        t.model_backward_and_update(model(x).sum())
        step = before - model.weight.detach()
        torch.testing.assert_close(step, torch.tensor([[0.6, 0.8]]))  # no accumulation


def test_non_finite_loss_raises():
    t, model = _trainer()
    with pytest.raises(FloatingPointError):
        t.model_backward_and_update(model(torch.ones(1, 2)).sum() * float("nan"))


def test_update_lr_steps_every_registered_scheduler():
    t, model = _trainer()
    assert t.get_current_lr() == 1.0
    t.model_backward_and_update(model(torch.ones(1, 2)).sum())
    t.update_lr()
    assert t.get_current_lr() == 0.5
    with pytest.raises(KeyError, match="already registered"):
        t.register_model("m", torch.nn.Linear(1, 1))
