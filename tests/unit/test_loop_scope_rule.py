"""The event-loop rule (tests/harness/loop_scope.py) on a small suite of its own, collected
in-process by pytester: one shared session-loop fixture, and tests that keep or break the rule.
"""

from __future__ import annotations

import pytest

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

CONFTEST = """
import pytest_asyncio

pytest_plugins = ["tests.harness.loop_scope"]


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def cluster():
    yield "cluster"


@pytest_asyncio.fixture(loop_scope="session")
async def conn(cluster):
    return cluster + "-conn"


@pytest_asyncio.fixture
async def scratch():
    return "scratch"
"""

KEEPS_THE_RULE = """
import pytest

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_shares_the_cluster(conn):
    assert conn == "cluster-conn"


@pytest.mark.asyncio(loop_scope="function")
async def test_alone(scratch):
    assert scratch
"""

NOT_ASYNC = """
def test_uses_the_cluster(cluster, conn):
    assert cluster
"""

BREAKS_THE_RULE = """
import pytest


async def test_forgot_the_mark(conn):
    assert conn


@pytest.mark.asyncio(loop_scope="session")
async def test_mixes_fixtures(conn, scratch):
    assert conn and scratch


def test_not_async_mixes_fixtures(conn, scratch):
    assert conn and scratch
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_keeps=KEEPS_THE_RULE, test_not_async=NOT_ASYNC)
    return pytester


def test_a_suite_that_keeps_the_rule_runs(suite: pytest.Pytester) -> None:
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)


def test_every_test_that_mixes_loops_is_named_at_collection(suite: pytest.Pytester) -> None:
    suite.makepyfile(test_breaks=BREAKS_THE_RULE)
    result = suite.runpytest("--collect-only", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*event-loop scopes (tests/conftest.py):",
            "*test_breaks.py::test_forgot_the_mark: the test runs in the 'function' loop, its "
            "async fixtures run cluster in 'session', conn in 'session'. One test, one loop: "
            "mark the module `pytestmark = pytest.mark.asyncio(loop_scope=...)`*",
            "*test_breaks.py::test_mixes_fixtures: the test runs in the 'session' loop, "
            "*scratch in 'function'*",
            "*test_breaks.py::test_not_async_mixes_fixtures: the test is not async, *",
        ]
    )
    assert "test_keeps.py" not in result.stderr.str()  # only the offenders are named
    assert "test_not_async.py" not in result.stderr.str()
