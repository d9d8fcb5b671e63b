"""The import graph of `shared/` and `services/`, read with ast (nothing is imported).

No module may take part in an import cycle, lazy imports included: a cycle is a layering
mistake even when the import order happens to work. The three services import only `shared`
(docs/DESIGN.md §2), the standard library and third-party packages.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("shared", "services")
SERVICES = ("bridge", "broadcaster", "replayer")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


MODULES = _modules()


def _imported(path: Path) -> Iterator[str]:
    """Every absolute module name `path` imports, at any depth (function bodies included).

    `from pkg import name` imports the module `pkg.name` when there is one, else `pkg`
    (a package's `__init__`); a module's parent packages, always run first, are not counted.
    """
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                yield submodule if submodule in MODULES else node.module


def _graph() -> dict[str, set[str]]:
    return {
        name: {dep for dep in _imported(path) if dep in MODULES and dep != name}
        for name, path in MODULES.items()
    }


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in sorted(graph[node]):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            component.append(node)
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One cycle inside `component`, as `a -> b -> ... -> a`, to name in a failure."""
    start, members = component[0], set(component)
    trail, seen = [start], {start}
    while True:
        step = min(d for d in graph[trail[-1]] if d in members)
        if step in seen:
            return [*trail[trail.index(step) :], step]
        trail.append(step)
        seen.add(step)


def test_the_walk_sees_every_package() -> None:
    assert "shared.settings" in MODULES
    assert "services.xregion.cli.main" in MODULES
    assert all(f"services.{s}.main" in MODULES for s in SERVICES)


def test_no_import_cycles() -> None:
    graph = _graph()
    cycles = [
        f"{' -> '.join(_path_through(graph, c))} (one of {len(c)} modules: {', '.join(c)})"
        for c in _cycles(graph)
    ]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_cycle_finder_names_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _path_through(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_imports_only_shared(service: str) -> None:
    own = f"services.{service}"
    wrong = sorted(
        f"{name} imports {dep}"
        for name, path in MODULES.items()
        if name == own or name.startswith(own + ".")
        for dep in _imported(path)
        if _first_party(dep) and not _allowed(dep, own)
    )
    assert not wrong, "\n".join(wrong)


def _first_party(name: str) -> bool:
    return name.split(".")[0] in (*PACKAGES, "tests", "bench")


def _allowed(name: str, own: str) -> bool:
    return name == "shared" or name.startswith(("shared.", own + ".")) or name == own


def test_third_party_is_not_mistaken_for_ours() -> None:
    assert not _first_party("nats.js")
    assert not _first_party("asyncio")
    assert _first_party("services.xregion.natsconf")
