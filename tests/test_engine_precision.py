"""Precision names -> dtypes / autocast; fp16 on CPU warns once and runs fp32 (unless the
test-only switch DASSL_CPU_FP16=1 keeps it)."""

import logging

import pytest
import torch

from dassl_ext.engine import precision as precision_mod
from dassl_ext.engine import resolve_precision
from dassl_ext.errors import UserError


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
    monkeypatch.setattr(precision_mod, "_warned", set())
    monkeypatch.delenv(precision_mod.CPU_FP16_ENV, raising=False)  # the user's default


@pytest.mark.parametrize("name", ["fp16", "amp"])
def test_half_on_cpu_warns_once_and_runs_fp32(name, caplog):
    with caplog.at_level(logging.WARNING):
        p = resolve_precision(name, torch.device("cpu"))
        resolve_precision(name, "cpu")
    assert [r.getMessage() for r in caplog.records if "needs CUDA" in r.getMessage()] == [
        f"Precision {name} needs CUDA; running fp32 on cpu instead "
        "(results may differ slightly from a CUDA fp16 run)."
    ]
    assert (p.name, p.effective, p.weight_dtype, p.autocast_dtype, p.use_scaler) == (
        name, "fp32", torch.float32, None, False
    )  # fmt: skip
    x = torch.ones(2, 2)
    with p.autocast():
        assert (x @ x).dtype == torch.float32


def test_cuda_mapping_without_needing_a_gpu():
    cuda = torch.device("cuda")
    fp16, amp = resolve_precision("fp16", cuda), resolve_precision("amp", cuda)
    assert (fp16.weight_dtype, fp16.autocast_dtype, fp16.use_scaler) == (
        torch.float16, torch.float16, True
    )  # fmt: skip
    assert (amp.weight_dtype, amp.autocast_dtype, amp.use_scaler) == (
        torch.float32, torch.float16, True
    )  # fmt: skip
    fp32 = resolve_precision("FP32", cuda)
    assert fp32.autocast_dtype is None and fp32.weight_dtype == torch.float32


def test_bf16_runs_autocast_on_cpu():
    p = resolve_precision("bf16", "cpu")
    assert p.effective == "bf16" and p.weight_dtype == torch.bfloat16 and not p.use_scaler
    lin = torch.nn.Linear(4, 4)  # fp32 master weights
    with p.autocast():
        assert lin(torch.ones(1, 4)).dtype == torch.bfloat16


def test_unknown_precision_is_user_error():
    with pytest.raises(UserError, match="fp64"):
        resolve_precision("fp64", "cpu")


@pytest.mark.parametrize("name", ["fp16", "amp"])
def test_cpu_fp16_switch_keeps_half_precision_on_cpu(name, monkeypatch, caplog):
    """Under DASSL_CPU_FP16=1 the CPU gets what CUDA gets: fp16 autocast and a scaler."""
    monkeypatch.setenv(precision_mod.CPU_FP16_ENV, "1")
    with caplog.at_level(logging.WARNING):
        p = resolve_precision(name, "cpu")
    assert not caplog.records
    weights = torch.float16 if name == "fp16" else torch.float32
    assert (p.effective, p.device.type, p.weight_dtype, p.autocast_dtype, p.use_scaler) == (
        name, "cpu", weights, torch.float16, True
    )  # fmt: skip
    lin = torch.nn.Linear(4, 4)  # fp32 master weights
    with p.autocast():
        assert lin(torch.ones(1, 4)).dtype == torch.float16
    monkeypatch.setenv(precision_mod.CPU_FP16_ENV, "0")  # only "1" turns it on
    assert resolve_precision(name, "cpu").effective == "fp32"
