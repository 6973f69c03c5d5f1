"""The package reads one way: spec -> zoo -> predict -> rank -> planning ->
result -> host -> views. A module imports only from its own layer or the layers
before it, and no import circle exists (function-level imports included)."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "playground"
LAYERS = ("spec", "zoo", "predict", "rank", "planning", "result", "host", "views")
"""In order: each may import from those before it."""
LEAVES = {"playground.instrument": -1}
"""Below every layer: the hooks into torch's internals import nothing of the package."""
FACES = {"playground", "playground.__main__", "playground.cost"}
"""The package's public faces may import any layer."""


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every playground module ``path`` imports, at any depth of the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("playground")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("playground"):
                for a in node.names:  # a submodule imported from its package is that submodule
                    sub = f"{mod}.{a.name}"
                    found.add(sub if sub in MODULES else mod)
    return found


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    if module in LEAVES:
        return LEAVES[module]
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def test_every_module_lives_in_a_layer():
    loose = sorted(m for m in MODULES if layer(m) == len(LAYERS) and m not in FACES)
    assert loose == [], f"modules outside the layers: {loose}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m not in FACES))
def test_no_import_from_a_later_layer(module):
    mine = layer(module)
    later = sorted(m for m in _imports(MODULES[module]) if m != "playground" and layer(m) > mine)
    assert later == [], f"{module} (layer {LAYERS[mine] if mine >= 0 else 'leaf'}) imports {later}"


def test_no_import_circle():
    graph = {m: {i for i in _imports(p) if i in MODULES and i != m} for m, p in MODULES.items() if m not in FACES}
    seen, on_path = set(), []

    def visit(m):
        if m in on_path:
            raise AssertionError("import circle: " + " -> ".join(on_path[on_path.index(m):] + [m]))
        if m in seen:
            return
        on_path.append(m)
        for n in sorted(graph.get(m, ())):
            if not n.endswith("__init__") and n in graph:
                visit(n)
        on_path.pop()
        seen.add(m)

    for m in sorted(graph):
        visit(m)
