"""The suite's event-loop rule, checked when the tests are collected (a pytest plugin that
tests/conftest.py loads).

One loop per test: a test and every async fixture it uses, directly or through other
fixtures, run in the same event loop. Objects made in one loop (connections, servers, tasks)
cannot be awaited from another, so a mismatch shows up later as a hang or "attached to a
different loop"; here it is one clear error at collection instead.

pytest-asyncio gives each test the loop of its closest `asyncio` mark (`loop_scope`, default
"function") and each async fixture the loop of its `loop_scope` (default
`asyncio_default_fixture_loop_scope`). A package that shares a cluster across its tests
declares that loop once per module (`pytestmark = pytest.mark.asyncio(loop_scope=...)`) and on
every async fixture of its conftest (`@pytest_asyncio.fixture(loop_scope=...)`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pytest
from pytest_asyncio.plugin import PytestAsyncioFunction

__all__ = ["AsyncFixture", "loop_problems", "pytest_collection_modifyitems"]


@dataclass(frozen=True)
class AsyncFixture:
    name: str
    loop_scope: str  # the loop it runs in


def loop_problems(test: str, test_loop: str | None, fixtures: list[AsyncFixture]) -> list[str]:
    """What breaks the rule for one test; `test_loop` is None for a test that is not async."""
    loops = {f.loop_scope for f in fixtures} | ({test_loop} if test_loop else set())
    if len(loops) <= 1:
        return []
    runs = f"runs in the {test_loop!r} loop" if test_loop else "is not async"
    where = ", ".join(f"{f.name} in {f.loop_scope!r}" for f in fixtures)
    return [
        f"{test}: the test {runs}, its async fixtures run {where}. One test, one loop: "
        "mark the module `pytestmark = pytest.mark.asyncio(loop_scope=...)` and give the "
        "package's async fixtures the same `loop_scope`"
    ]


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    problems = [
        problem
        for item in items
        if isinstance(item, pytest.Function)
        for problem in loop_problems(item.nodeid, _test_loop(item), _async_fixtures(item))
    ]
    if problems:
        # A usage error stops the run before any test: one clear report, nothing half-run.
        raise pytest.UsageError("event-loop scopes (tests/conftest.py):\n" + "\n".join(problems))


def _test_loop(item: pytest.Function) -> str | None:
    if not isinstance(item, PytestAsyncioFunction):
        return None
    marker = item.get_closest_marker("asyncio")
    chosen = marker.kwargs.get("loop_scope") if marker else None
    return str(chosen or item.config.getini("asyncio_default_test_loop_scope") or "function")


def _async_fixtures(item: pytest.Function) -> list[AsyncFixture]:
    default = item.config.getini("asyncio_default_fixture_loop_scope")
    found = []
    for name in item.fixturenames:
        definitions = item._fixtureinfo.name2fixturedefs.get(name)
        if not definitions:
            continue  # a parameter, or a fixture pytest reports as missing by itself
        definition = definitions[-1]  # the one that applies here (overrides come last)
        func = definition.func
        if not (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)):
            continue
        loop = getattr(func, "_loop_scope", None) or default or definition.scope
        found.append(AsyncFixture(name, str(loop)))
    return found
