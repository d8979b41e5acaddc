"""The package's architecture, checked: imports go one way only.

Every ``import`` in ``src/clippo`` counts (module level, inside functions, under ``TYPE_CHECKING``).
Subpackages are layered (``LAYERS``, lowest first): a module may import its own subpackage and
those below it, never one above. With that, and no cycles between the files inside a
subpackage, the import graph has no cycle at all.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"

#: Lowest first. A subpackage imports only its own layer and the ones before it.
LAYERS = ("core", "envs", "config", "networks", "rollout", "fastpath", "training", "agent", "multiagent", "tools")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The clippo modules ``path`` imports (``from clippo.x import y`` counts ``clippo.x.y`` if that
    is a module, else ``clippo.x``)."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
    return {name for name in found if name in modules}


@functools.cache  # parsed once per session: every parametrized test reads the same graph
def graph() -> dict[str, set[str]]:
    paths = sorted(SRC.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) - {module_name(p)} for p in paths}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_is_in_a_layer():
    stray = [m for m in graph() if m not in ("clippo", "clippo.__main__") and layer(m) is None]
    assert not stray, f"modules outside the layered subpackages: {stray}"


def test_no_import_cycle_between_files():
    edges = graph()
    # A package's __init__ may re-export its modules; it is not a file the modules depend on.
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(graph()))
def test_imports_go_down_the_layers(module):
    own = layer(module)
    if own is None:
        return
    upward = sorted(m for m in graph()[module] if (other := layer(m)) and LAYERS.index(other) > LAYERS.index(own))
    assert not upward, f"{module} ({own}) imports from a higher layer: {upward}"
