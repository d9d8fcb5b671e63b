"""Fixtures of the broadcaster tests.

The integration modules share one package-wide 3-region super-cluster with the fault proxy on
its gateways (`bc_cluster`, every region provisioned with the test settings) and run in the
package's event loop (`pytestmark = pytest.mark.asyncio(loop_scope="package")`). Each test
isolates its events by service names of its own and leaves no pause, cut or delay behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable

import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from services.xregion.local.supercluster import SuperCluster, with_free_ports
from services.xregion.natsconf import build_topology
from shared.natsconn import NatsConnection
from shared.regions import broadcast_consumer, events_stream
from tests.broadcaster.helpers import REGIONS, bc_settings, provision_all
from tests.harness.wait import wait_until

# How long a test's own tasks may take to unwind once it is over.
_UNWIND_S = 10.0


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def bc_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SuperCluster]:
    """3 regions x 1 server, fault proxy on, every region provisioned; stopped at the end."""
    workdir = tmp_path_factory.mktemp("broadcaster-nats")
    cluster = SuperCluster(with_free_ports(build_topology(REGIONS)), workdir, fault_proxy=True)
    await cluster.start(90)  # stops what it started if it fails
    try:
        await provision_all(cluster)
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture(loop_scope="package")
async def cluster(bc_cluster: SuperCluster) -> AsyncIterator[SuperCluster]:
    """The shared cluster, with every fault healed after the test, and the test failed if it
    left a task running in the shared loop: a leftover broadcaster part would go on taking the
    package's consumers' events and break the tests after it."""
    before = asyncio.all_tasks()
    try:
        yield bc_cluster
    finally:
        await bc_cluster.faults.heal_all()
    await _no_task_left(before)
    await _nobody_pulling(bc_cluster)


async def _no_task_left(before: set[asyncio.Task[object]]) -> None:
    me = asyncio.current_task()

    def leftovers() -> list[asyncio.Task[object]]:
        tasks = asyncio.all_tasks() - before
        return [t for t in tasks if t is not me and not t.done() and not _the_clusters(t)]

    try:
        await wait_until(lambda: not leftovers(), _UNWIND_S, message="the test's tasks ended")
    except TimeoutError:
        left = leftovers()
        for task in left:
            task.cancel("left behind by a test")
        await asyncio.wait(left, timeout=_UNWIND_S)
        pytest.fail("tasks left running: " + ", ".join(sorted(_named(t) for t in left)))


@pytest_asyncio.fixture(loop_scope="package")
async def conn(cluster: SuperCluster) -> AsyncIterator[NatsConnection]:
    """A NATS connection to the origin region (us-east)."""
    async with NatsConnection(bc_settings(cluster).nats, service="test") as connection:
        yield connection


@pytest_asyncio.fixture(loop_scope="package")
async def js(conn: NatsConnection) -> JetStreamContext:
    """JetStream through `conn`."""
    return conn.jetstream()


def _named(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return f"{task.get_name()} ({getattr(coro, '__qualname__', coro)})"


async def _nobody_pulling(cluster: SuperCluster) -> None:
    """Fail the test that leaves a broadcaster (a process, or a pull request) on the package's
    consumers: it would take the next tests' events."""
    async with NatsConnection(bc_settings(cluster).nats, service="test-pullers") as conn:
        js = conn.jetstream()

        async def waiting() -> dict[str, int]:
            counts = {}
            for origin in REGIONS:
                for target in (r for r in REGIONS if r != origin):
                    info = await js.consumer_info(events_stream(origin), broadcast_consumer(target))
                    counts[f"{origin}->{target}"] = info.num_waiting or 0
            return {path: n for path, n in counts.items() if n}

        try:
            await wait_until(lambda: _none(waiting()), _UNWIND_S, message="no pull request left")
        except TimeoutError:
            pytest.fail(f"pull requests still waiting after the test: {await waiting()}")


async def _none(counts: Awaitable[dict[str, int]]) -> bool:
    return not await counts


def _the_clusters(task: asyncio.Task[object]) -> bool:
    """The fault proxy's own tasks: gateways reconnect through it whenever they like."""
    return getattr(task.get_coro(), "__qualname__", "").startswith(
        ("GatewayProxy.", "_write_from", "_sniff")
    )
