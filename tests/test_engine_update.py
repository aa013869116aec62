"""TrainerBase update path: zero_grad, backward, clipping, step, scheduler once per epoch."""

import pytest
import torch

from dassl_ext.engine import TrainerBase, resolve_precision


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


def test_fp16_scaler_skips_the_step_on_inf_gradients(cpu_fp16):
    """fp16 autocast + the trainer's gradient scaler on the CPU: an overflowing backward
    leaves the weights alone and halves the scale; the next finite one steps, unscaled."""
    t, model = _trainer()
    prec = resolve_precision("fp16", "cpu")
    t.scaler = torch.amp.GradScaler("cpu", enabled=prec.use_scaler)  # as SimpleTrainer does
    x = torch.tensor([[1.0, 2.0]])
    with prec.autocast():
        out = model(x)
    assert out.dtype == torch.float16
    # d(loss)/d(out) = 10 * 65536 overflows fp16 (max 65504) in the backward of the fp16 matmul
    t.model_backward_and_update(10.0 * out.float().sum())
    assert torch.equal(model.weight, torch.zeros(1, 2)) and t.scaler.get_scale() == 2.0**15
    with prec.autocast():
        loss = 1e-3 * model(x).float().sum()
    t.model_backward_and_update(loss)
    torch.testing.assert_close(model.weight.detach(), -1e-3 * x, rtol=1e-3, atol=0)
    assert t.scaler.get_scale() == 2.0**15  # grows only after 2000 good steps
