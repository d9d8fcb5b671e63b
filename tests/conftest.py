"""Shared pytest configuration: the harness fixtures (tests/harness/fixtures.py) and the
event-loop rule (tests/harness/loop_scope.py), checked when the tests are collected.

The event-loop rule: one loop per test. A test and every async fixture it uses, directly or
through other fixtures, run in the same event loop.

* A package that shares a cluster across its tests runs them in the loop of that shared
  fixture: the bridge and replayer packages in the session's loop, broadcaster and ops in
  their package's loop. Each of its test modules says so with
  `pytestmark = pytest.mark.asyncio(loop_scope=...)`, and every async fixture in the package
  names the same loop with `@pytest_asyncio.fixture(loop_scope=...)`.
* A module that shares a module-scoped fixture uses `loop_scope="module"` the same way.
* Anything else runs in its own function loop (the default).

A test that mixes loops is refused at collection with one line naming the test, its loop
and its fixtures' loops (docs/DESIGN.md §10).

`no_retry_waits`: the test switch of every retry policy (shared/retry.py, docs/DESIGN.md §5c).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.retry import set_waits

pytest_plugins = ["pytester", "tests.harness.fixtures", "tests.harness.loop_scope"]


@pytest.fixture
def no_retry_waits() -> Iterator[None]:
    """Every retry wait is 0 while the test runs (the test switch of shared/retry.py)."""
    set_waits(False)
    try:
        yield
    finally:
        set_waits(True)
