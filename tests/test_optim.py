"""Optimizers and LR schedules: Dassl's per-epoch sequences and state round trips."""

import io
import math
import warnings

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR
from yacs.config import CfgNode as CN

from dassl_ext.errors import UserError
from dassl_ext.optim import build_lr_scheduler, build_optimizer


def optim_cfg(**kw) -> CN:
    """Dassl's OPTIM defaults, overridden by ``kw``."""
    c = CN()
    c.NAME = "sgd"
    c.LR = 0.005
    c.WEIGHT_DECAY = 5e-4
    c.MOMENTUM = 0.9
    c.SGD_DAMPNING = 0.0
    c.SGD_NESTEROV = False
    c.RMSPROP_ALPHA = 0.99
    c.ADAM_BETA1 = 0.9
    c.ADAM_BETA2 = 0.999
    c.STAGED_LR = False
    c.NEW_LAYERS = ()
    c.BASE_LR_MULT = 0.1
    c.LR_SCHEDULER = "cosine"
    c.STEPSIZE = (-1,)
    c.GAMMA = 0.1
    c.MAX_EPOCH = 20
    c.WARMUP_EPOCH = 1
    c.WARMUP_TYPE = "constant"
    c.WARMUP_CONS_LR = 1e-5
    c.WARMUP_MIN_LR = 1e-5
    c.WARMUP_RECOUNT = True
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def lr_sequence(cfg: CN, epochs: int | None = None) -> list[float]:
    """LR in effect during each epoch, stepping once per epoch as the engine does."""
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    out = []
    for _ in range(epochs or cfg.MAX_EPOCH):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


class _DasslWarmup(LRScheduler):
    """Dassl's chained warm-up wrapper re-stated (minus the positional ``verbose``)."""

    def __init__(self, opt, successor, warmup_epoch, kind, value):
        self.successor, self.warmup_epoch, self.kind, self.value = (
            successor,
            warmup_epoch,
            kind,
            value,
        )
        super().__init__(opt)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.kind == "constant" or self.last_epoch == 0:
            return [self.value for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()


def dassl_sequence(cfg: CN) -> list[float]:
    """The sequence Dassl's torch-chained schedulers produce for ``cfg``."""
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=cfg.LR)
    if cfg.LR_SCHEDULER == "cosine":
        sched = CosineAnnealingLR(opt, float(cfg.MAX_EPOCH))
    elif cfg.LR_SCHEDULER == "single_step":
        sched = StepLR(opt, step_size=cfg.STEPSIZE, gamma=cfg.GAMMA)
    else:
        sched = MultiStepLR(opt, milestones=list(cfg.STEPSIZE), gamma=cfg.GAMMA)
    if cfg.WARMUP_EPOCH > 0:
        if not cfg.WARMUP_RECOUNT:
            sched.last_epoch = cfg.WARMUP_EPOCH
        value = cfg.WARMUP_CONS_LR if cfg.WARMUP_TYPE == "constant" else cfg.WARMUP_MIN_LR
        sched = _DasslWarmup(opt, sched, cfg.WARMUP_EPOCH, cfg.WARMUP_TYPE, value)
    out = []
    for _ in range(cfg.MAX_EPOCH):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def test_promptkd_sequence_spec_5_3():
    seq = lr_sequence(optim_cfg())
    assert len(seq) == 20
    assert seq[0] == pytest.approx(1e-5, rel=1e-9)
    assert seq[1] == pytest.approx(0.005, rel=1e-9)
    assert seq[2] == pytest.approx(0.0049692, rel=1e-5)
    assert seq[3] == pytest.approx(0.0048776, rel=1e-5)
    assert seq[18] == pytest.approx(2.7248e-4, rel=1e-4)
    assert seq[19] == pytest.approx(1.2236e-4, rel=1e-4)
    for e in range(1, 20):
        assert seq[e] == pytest.approx(0.005 * (1 + math.cos(math.pi * (e - 1) / 20)) / 2, rel=1e-7)


def test_maple_cross_sequence():
    assert lr_sequence(optim_cfg(LR=0.0026, MAX_EPOCH=2)) == pytest.approx([1e-5, 0.0026])


@pytest.mark.parametrize("sched", ["cosine", "single_step", "multi_step"])
@pytest.mark.parametrize(
    "warmup", [(0, "constant"), (1, "constant"), (3, "constant"), (3, "linear")]
)
@pytest.mark.parametrize("recount", [True, False])
def test_matches_dassl_chained_schedulers(sched, warmup, recount):
    stepsize = {"cosine": (-1,), "single_step": 4, "multi_step": (2, 5, 9)}[sched]
    cfg = optim_cfg(
        LR_SCHEDULER=sched,
        STEPSIZE=stepsize,
        MAX_EPOCH=12,
        WARMUP_EPOCH=warmup[0],
        WARMUP_TYPE=warmup[1],
        WARMUP_RECOUNT=recount,
        WARMUP_MIN_LR=2e-5,
    )
    assert lr_sequence(cfg) == pytest.approx(dassl_sequence(cfg), rel=1e-7, abs=1e-12)


def test_linear_warmup_values():
    seq = lr_sequence(optim_cfg(WARMUP_EPOCH=4, WARMUP_TYPE="linear", WARMUP_MIN_LR=1e-6))
    assert seq[:5] == pytest.approx([1e-6, 0.005 / 4, 0.005 * 2 / 4, 0.005 * 3 / 4, 0.005])


def test_single_step_default_stepsize_is_max_epoch():
    seq = lr_sequence(optim_cfg(LR_SCHEDULER="single_step", WARMUP_EPOCH=0, MAX_EPOCH=5), 7)
    assert seq == pytest.approx([0.005] * 5 + [0.0005] * 2)


def test_state_dict_round_trip_weights_only():
    cfg = optim_cfg()
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, cfg)
    sched = build_lr_scheduler(opt, cfg)
    for _ in range(7):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)

    model2 = nn.Linear(3, 2)
    model2.load_state_dict(model.state_dict())
    opt2 = build_optimizer(model2, cfg)
    sched2 = build_lr_scheduler(opt2, cfg)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    for _ in range(5):
        sched.step()
        sched2.step()
        assert sched2.get_last_lr() == pytest.approx(sched.get_last_lr(), rel=1e-12)
    full = lr_sequence(cfg)
    assert sched2.get_last_lr()[0] == pytest.approx(full[12], rel=1e-9)


def test_optimizer_keys_and_trainable_only():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, optim_cfg(SGD_NESTEROV=True, SGD_DAMPNING=0.0))
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert len(g["params"]) == 3
    assert (g["momentum"], g["weight_decay"], g["nesterov"]) == (0.9, 5e-4, True)
    adam = build_optimizer(model.parameters(), optim_cfg(NAME="adam", ADAM_BETA2=0.98))
    assert adam.param_groups[0]["betas"] == (0.9, 0.98)
    assert isinstance(build_optimizer(model, optim_cfg(NAME="adamw")), torch.optim.AdamW)
    rms = build_optimizer(model, optim_cfg(NAME="rmsprop", RMSPROP_ALPHA=0.9))
    assert rms.param_groups[0]["alpha"] == 0.9


def test_staged_lr():
    model = nn.Sequential()
    model.add_module("backbone", nn.Linear(2, 2))
    model.add_module("head", nn.Linear(2, 2))
    opt = build_optimizer(model, optim_cfg(STAGED_LR=True, NEW_LAYERS=("head",)))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0005, 0.005])


def test_bad_input_is_user_error():
    model = nn.Linear(2, 2)
    with pytest.raises(UserError, match="OPTIM.NAME"):
        build_optimizer(model, optim_cfg(NAME="lion"))
    with pytest.raises(UserError, match="requires_grad"):
        build_optimizer(model.requires_grad_(False), optim_cfg())
    opt = build_optimizer(nn.Linear(2, 2), optim_cfg())
    with pytest.raises(UserError, match="LR_SCHEDULER"):
        build_lr_scheduler(opt, optim_cfg(LR_SCHEDULER="poly"))
    with pytest.raises(UserError, match="STEPSIZE"):
        build_lr_scheduler(opt, optim_cfg(LR_SCHEDULER="multi_step", STEPSIZE=3))
