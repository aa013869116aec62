"""Name -> object registries (datasets, trainers), keyed by class name. Register with
``@TRAINER_REGISTRY.register()``; registered objects are called with the frozen cfg:
``TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg)``, ``DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)``.
"""

from __future__ import annotations

import difflib
from typing import Any

from tabulate import tabulate


class RegistryKeyError(KeyError):
    """A name that is not registered; the message lists the names that are."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class Registry:
    """A name -> object map filled by a decorator; the key is the object's ``__name__``."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._obj_map: dict[str, Any] = {}

    def register(self, obj: Any = None) -> Any:
        """Register ``obj``; without it, return the decorator that registers (this method)."""
        if obj is None:
            return self.register
        name = obj.__name__
        if self._obj_map.get(name, obj) is not obj:
            raise KeyError(f"An object named {name!r} is already registered in {self._name!r}.")
        self._obj_map[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register throw-away objects clean up with this)."""
        self._obj_map.pop(name, None)

    def get(self, name: str) -> Any:
        """The object registered as ``name``; a clear error listing the known names if absent."""
        if name in self._obj_map:
            return self._obj_map[name]
        names = self.registered_names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RegistryKeyError(
            f"No object named {name!r} in the {self._name} registry.{hint} "
            f"Registered names: {', '.join(names) if names else '(none)'}."
        )

    def registered_names(self) -> list[str]:
        return sorted(self._obj_map)

    def __contains__(self, name: object) -> bool:
        return name in self._obj_map

    def __iter__(self):
        return iter(sorted(self._obj_map.items()))

    def __len__(self) -> int:
        return len(self._obj_map)

    def __repr__(self) -> str:
        rows = [(k, f"{getattr(v, '__module__', '?')}.{v.__name__}") for k, v in self]
        table = tabulate(rows, headers=["Names", "Objects"], tablefmt="fancy_grid")
        return f"Registry of {self._name}:\n{table}"


DATASET_REGISTRY = Registry("DATASET")
TRAINER_REGISTRY = Registry("TRAINER")
