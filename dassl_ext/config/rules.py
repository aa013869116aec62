"""Config rules: what each key allows, checked once before any work.

A **rule** (:class:`Range`, :class:`OneOf`, :class:`Check`) on one key is registered with
:func:`register_config_rules` by the module that defines the key's choices (the optimizers in
``dassl_ext/optim``, a trainer next to its config extension ...); ``*`` stands for any
section (``TRAINER.*.PREC``). A value outside gives one sentence::

    TRAINER.PROMPTKD.TEMPERATURE is 0.0; use a number > 0 (the softmax temperature).

What one key cannot say (keys that depend on each other, values that must fit a model's
sizes) is a registered trainer's or dataset's classmethod ``check_config(cfg)``, which may
pass rules built at run time to :func:`check_rules`. :func:`validate_config` runs both.
Config imports nothing of the project above it, so the rules are those of the modules
imported so far: ``import dassl_ext.engine`` registers the engine's, the data's, the
optimizers' and the evaluator's.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from yacs.config import CfgNode

from dassl_ext.errors import UserError
from dassl_ext.registry import DATASET_REGISTRY, TRAINER_REGISTRY

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
short_repr = _SHORT.repr  # repr, shortened: a value read from a file may be huge (yaml aliases)


class Rule:
    """One key and what it allows; ``note`` (what the key is) ends the sentence."""

    key: str
    note: str

    def allowed(self, value: Any) -> str | None:
        """None if ``value`` is allowed, else what is ("use ...")."""
        raise NotImplementedError

    def problem(self, key: str, value: Any) -> str | None:
        """The sentence for a value that is not allowed, else None."""
        allowed, note = self.allowed(value), f" ({self.note})" if self.note else ""
        return None if allowed is None else f"{key} is {short_repr(value)}; {allowed}{note}."

    def check(self, value: Any) -> None:
        """Raise the sentence for ``value`` unless allowed (for a config that was not
        validated, such as a library caller's)."""
        sentence = self.problem(self.key, value)
        if sentence:
            raise UserError(sentence)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


@dataclass(frozen=True)
class Range(Rule):
    """A number in ``[low, high]`` (``low_open``: above ``low``), or one of ``also``
    (values with a meaning of their own, such as -1 for "off")."""

    key: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    integer: bool = False
    also: tuple = ()
    note: str = ""

    def allowed(self, value: Any) -> str | None:
        kind = int if self.integer else (int, float)
        if isinstance(value, kind) and not isinstance(value, bool):
            low_ok = self.low is None or (value > self.low if self.low_open else value >= self.low)
            inside = math.isfinite(value) and low_ok and (self.high is None or value <= self.high)
            if inside or value in self.also:
                return None
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {_fmt(self.low)}"
        high = "" if self.high is None else f"<= {_fmt(self.high)}"
        bound = " and ".join(b for b in (low, high) if b)
        if low and high and not self.low_open:
            bound = f"from {_fmt(self.low)} to {_fmt(self.high)}"
        also = "".join(f"{_fmt(a)} or " for a in self.also)
        return f"use {also}{'an integer' if self.integer else 'a number'} {bound}".rstrip()


@dataclass(frozen=True)
class OneOf(Rule):
    """One of ``choices`` (a sequence, or a function returning one, for choices known
    only at run time such as registered names)."""

    key: str
    choices: Sequence | Callable[[], Sequence]
    ignore_case: bool = False
    note: str = ""

    def allowed(self, value: Any) -> str | None:
        choices = list(self.choices() if callable(self.choices) else self.choices)
        fold = self.ignore_case and isinstance(value, str)
        if value.lower() in [str(c).lower() for c in choices] if fold else value in choices:
            return None
        if len(choices) == 1:
            return f"use {choices[0]}"
        return f"use one of {', '.join(str(c) for c in choices)}"


@dataclass(frozen=True)
class Check(Rule):
    """Any other condition: ``test(value)`` is true for allowed values (an exception
    counts as false); ``allowed_text`` says what is allowed ("use ...")."""

    key: str
    test: Callable[[Any], bool]
    allowed_text: str
    note: str = ""

    def allowed(self, value: Any) -> str | None:
        try:
            ok = bool(self.test(value))
        except (TypeError, ValueError):
            ok = False
        return None if ok else self.allowed_text


_RULES: dict[str, Rule] = {}


def register_config_rules(*rules: Rule) -> None:
    """Register rules checked by :func:`validate_config`; a key registered again replaces
    its rule (a module imported twice registers the same rules again)."""
    for rule in rules:
        _RULES[rule.key] = rule


def _values(cfg: CfgNode, pattern: str) -> list[tuple[str, Any]]:
    """``(key, value)`` of every key matching ``pattern``; a key without ``*`` must exist."""
    found: list[tuple[str, Any]] = [("", cfg)]
    for part in pattern.split("."):
        nodes = [(prefix, node) for prefix, node in found if isinstance(node, CfgNode)]
        for prefix, node in nodes:
            if part != "*" and part not in node:
                raise KeyError(f"Config rule for {pattern}: no key {prefix}{part}")
        found = [(f"{p}{k}.", n[k]) for p, n in nodes for k in (n if part == "*" else [part])]
    return [(k[:-1], v) for k, v in found]


def _rule_problems(cfg: CfgNode, rules: Sequence[Rule]) -> list[tuple[str, str]]:
    """``(key, sentence)`` for each key whose value a rule does not allow."""
    found = [
        (key, rule.problem(key, value)) for rule in rules for key, value in _values(cfg, rule.key)
    ]
    return [(key, sentence) for key, sentence in found if sentence]


def _raise(problems: list[tuple[str, str]]) -> None:
    if problems:
        raise UserError("\n".join(sentence for _, sentence in problems))


def non_finite_problems(cfg: CfgNode, prefix: str = "") -> list[tuple[str, str]]:
    """``(key, sentence)`` for each key holding NaN or an infinity (alone or in a list):
    no key has a meaning for them, and keys without a range rule would pass them on."""
    problems = []
    for k, v in cfg.items():
        key, items = f"{prefix}{k}", v if isinstance(v, (list, tuple)) else [v]
        if isinstance(v, CfgNode):
            problems += non_finite_problems(v, key + ".")
        elif any(isinstance(x, float) and not math.isfinite(x) for x in items):
            problems.append((key, f"{key} is {short_repr(v)}; use finite numbers."))
    return problems


def check_rules(cfg: CfgNode, rules: Sequence[Rule]) -> None:
    """Raise one UserError with a sentence per key whose value a rule does not allow."""
    _raise(_rule_problems(cfg, rules))


def check_config_values(cfg: CfgNode) -> None:
    """:func:`config_rules`, and no NaN or infinity in any key (one sentence per key)."""
    problems = _rule_problems(cfg, config_rules())
    named = {key for key, _ in problems}
    _raise(problems + [p for p in non_finite_problems(cfg) if p[0] not in named])


def config_rules() -> list[Rule]:
    """The rules registered so far, in registration order."""
    return list(_RULES.values())


def validate_config(cfg: CfgNode, will_train: bool = False) -> None:
    """Check the config of a run before any work: :func:`check_config_values`, then the
    dataset (none yet: library use) and trainer it names (unknown: the registry's error,
    which lists the names), each one's ``check_config(cfg)`` if any, and, when the run
    ``will_train``, that the trainer has something to train."""
    check_config_values(cfg)
    no_checks = lambda cfg: None  # noqa: E731
    dataset = DATASET_REGISTRY.get(cfg.DATASET.NAME) if cfg.DATASET.NAME else None
    getattr(dataset, "check_config", no_checks)(cfg)
    trainer = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if will_train and getattr(trainer, "evaluation_only", False):
        raise UserError(f"{cfg.TRAINER.NAME} has nothing to train; run it with --eval-only.")
    getattr(trainer, "check_config", no_checks)(cfg)
