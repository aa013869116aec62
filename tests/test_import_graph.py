"""The import graph of dassl_ext, trainers and datasets: no cycle, and config/ at its foot.

Every ``import`` counts, at module level or inside a function (a lazy import still makes a
module depend on another); importing a package is an edge to its ``__init__``.
"""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOTS = ("dassl_ext", "trainers", "datasets")
# Top-level modules of dassl_ext that config/ may use (they import nothing of the project)
GROUND = ("dassl_ext.errors", "dassl_ext.registry")


def _modules() -> dict[str, str]:
    """``{dotted module name: path}`` of every .py file under ROOTS."""
    mods = {}
    for root in ROOTS:
        for folder, _, files in os.walk(os.path.join(REPO, root)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(folder, f)
                    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    mods[name.removesuffix(".__init__")] = path
    return mods


def import_graph() -> dict[str, set[str]]:
    """``{module: the project modules it imports}``."""
    mods = _modules()

    def known(name: str) -> str:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in mods.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(known(a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for a in node.names:  # `from pkg import module` is an edge to the module
                    full = f"{base}.{a.name}"
                    deps.add(full if full in mods else known(base))
        graph[name] = deps - {"", name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    assert "dassl_ext.config.rules" in graph["dassl_ext.config"]  # a package's __init__
    assert "dassl_ext.evaluation" in graph["dassl_ext.engine.simple"]  # inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_config_imports_nothing_above_it():
    upward = {
        (module, dep)
        for module, deps in import_graph().items()
        if module.startswith("dassl_ext.config")
        for dep in deps
        if dep.startswith("dassl_ext.")
        and not dep.startswith("dassl_ext.config")
        and dep not in GROUND
    }
    assert upward == set(), "dassl_ext/config must import only dassl_ext.errors / .registry"
