"""Registry: decorator registration by class name, lookups, clear errors."""

import pytest

from dassl_ext.data import DATASET_REGISTRY as DATA_REEXPORT
from dassl_ext.engine import TRAINER_REGISTRY as ENGINE_REEXPORT
from dassl_ext.registry import DATASET_REGISTRY, TRAINER_REGISTRY, Registry, RegistryKeyError


def test_register_decorator_and_call():
    reg = Registry("THING")

    @reg.register()
    class PromptLearner:
        pass

    def helper():
        return 1

    assert reg.register(helper) is helper
    assert reg.get("PromptLearner") is PromptLearner
    assert "helper" in reg and "nope" not in reg
    assert reg.registered_names() == ["PromptLearner", "helper"]
    assert "PromptLearner" in repr(reg) and "THING" in repr(reg)
    reg.unregister("helper")
    assert "helper" not in reg and len(reg) == 1


def test_missing_name_lists_names_and_closest_match():
    reg = Registry("TRAINER")
    for name in ("PromptKD", "PromptSRC", "CoOp"):
        reg.register(type(name, (), {}))
    with pytest.raises(KeyError) as e:
        reg.get("PromptKd")
    msg = str(e.value)
    assert isinstance(e.value, RegistryKeyError)
    assert "Did you mean 'PromptKD'?" in msg and "CoOp, PromptKD, PromptSRC" in msg


def test_duplicate_name_is_rejected():
    reg = Registry("X")
    reg.register(type("A", (), {}))
    with pytest.raises(KeyError, match="already registered"):
        reg.register(type("A", (), {}))


def test_shared_instances_are_reexported():
    assert DATA_REEXPORT is DATASET_REGISTRY and ENGINE_REEXPORT is TRAINER_REGISTRY
