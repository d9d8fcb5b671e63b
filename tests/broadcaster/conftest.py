"""Fixtures of the broadcaster tests.

The integration modules share one package-wide 3-region super-cluster with the fault proxy on
its gateways (`bc_cluster`, every region provisioned with the test settings) and run in the
package's event loop (`pytestmark = pytest.mark.asyncio(loop_scope="package")`). Each test
isolates its events by service names of its own and leaves no pause, cut or delay behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from services.xregion.local.supercluster import SuperCluster, with_free_ports
from services.xregion.natsconf import build_topology
from shared.natsconn import NatsConnection
from tests.broadcaster.helpers import REGIONS, bc_settings, provision_all


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
    """The shared cluster, with every fault healed after the test."""
    try:
        yield bc_cluster
    finally:
        await bc_cluster.faults.heal_all()


@pytest_asyncio.fixture(loop_scope="package")
async def conn(cluster: SuperCluster) -> AsyncIterator[NatsConnection]:
    """A NATS connection to the origin region (us-east)."""
    async with NatsConnection(bc_settings(cluster).nats, service="test") as connection:
        yield connection


@pytest_asyncio.fixture(loop_scope="package")
async def js(conn: NatsConnection) -> JetStreamContext:
    """JetStream through `conn`."""
    return conn.jetstream()
