"""The package's import graph: no circles (function-level and ``TYPE_CHECKING`` imports count:
a lazy import only hides a circle), and lower layers never import higher ones.

Read from the source with :mod:`ast`, so the graph is what the files say, not what one import
order happened to load.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dockplug

ROOT = Path(dockplug.__file__).parent

#: layer -> the layers it must never import
FORBIDDEN: dict[str, set[str]] = {
    "facts": {
        "protocol",
        "server",
        "observe",
        "state",
        "drivers",
        "packaging",
        "conformance",
        "cli",
        "testing",
    },
    "observe": {
        "protocol",
        "server",
        "state",
        "drivers",
        "packaging",
        "conformance",
        "cli",
        "testing",
    },
    "state": {"server", "drivers", "packaging", "conformance", "cli", "testing"},
    "protocol": {"server", "drivers", "packaging", "conformance", "cli", "testing"},
    "server": {"drivers", "packaging", "conformance", "cli", "testing"},
    "drivers": {"server", "packaging", "conformance", "cli", "testing"},
    "packaging": {"cli", "testing"},
    "conformance": {"cli", "testing"},
    "testing": {"cli"},
}

#: (importing layer, imported module) edges that break a rule for now, each with the reason
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _own(name: str, modules: dict[str, Path]) -> str | None:
    """The dockplug module NAME refers to (a module, or the package holding the name)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the dockplug modules it imports anywhere in its body."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                # ``from pkg import mod`` imports the module pkg.mod, ``from mod import x`` mod
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            for target in targets:
                own = _own(target, modules) if target.startswith("dockplug") else None
                if own is not None and own != name:
                    graph[name].add(own)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = import_graph()


def test_the_graph_sees_every_kind_of_import() -> None:
    """The walk must find top-level, function-level, TYPE_CHECKING and relative imports, or
    the tests below could pass on a graph with holes."""
    assert "dockplug.packaging.engine" in GRAPH["dockplug.packaging.doctor"]  # top level
    assert "dockplug.drivers.registry" in GRAPH["dockplug.packaging.doctor_devices"]  # in _needs
    assert "dockplug.packaging.verbs" in GRAPH["dockplug.cli.plugin"]  # in a command
    assert "dockplug.conformance.report" in GRAPH["dockplug.conformance"]  # a package
    assert len(GRAPH) > 60


def test_cycles_are_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles() -> None:
    found = cycles(GRAPH)
    detail = "\n".join(
        " <-> ".join(c) + "\n  " + "\n  ".join(f"{m} -> {sorted(GRAPH[m] & set(c))}" for m in c)
        for c in found
    )
    assert not found, f"import circles (make the dependency flow one way):\n{detail}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(layer: str) -> None:
    bad = sorted(
        (module, target)
        for module, targets in GRAPH.items()
        if _layer(module) == layer
        for target in targets
        if _layer(target) in FORBIDDEN[layer] and (layer, target) not in KNOWN_EXCEPTIONS
    )
    assert not bad, "\n".join(f"{m} imports {t}" for m, t in bad)


def test_known_exceptions_still_exist() -> None:
    """An exception nobody needs any more is removed, so it cannot hide a new edge."""
    stale = [
        (layer, target)
        for layer, target in KNOWN_EXCEPTIONS
        if not any(_layer(m) == layer and target in ts for m, ts in GRAPH.items())
    ]
    assert not stale, f"drop from KNOWN_EXCEPTIONS: {stale}"
