"""Shared pytest fixtures. Append new fixtures at the end; keep them cheap."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip_root(tmp_path_factory) -> str:
    """A folder holding tiny-teacher.pt and tiny-student.pt (OpenAI state-dict format)."""
    from dassl_ext.modeling import TINY_SPECS, save_tiny_clip

    root = tmp_path_factory.mktemp("clip")
    for name in TINY_SPECS:
        save_tiny_clip(str(root / f"{name}.pt"), name)
    return str(root)


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    """A DATASET.ROOT holding the Digits dataset (written once per test session)."""
    from datasets.digits import write_digits

    root = tmp_path_factory.mktemp("data")
    write_digits(str(root))
    return root


@pytest.fixture
def cpu_fp16(monkeypatch) -> None:
    """fp16 / amp keep fp16 weights, autocast and the gradient scaler on the CPU for this test
    (the test-only switch DASSL_CPU_FP16=1 of dassl_ext.engine.precision), with fresh
    once-only warnings."""
    from dassl_ext.engine import precision

    monkeypatch.setenv(precision.CPU_FP16_ENV, "1")
    monkeypatch.setattr(precision, "_warned", set())
