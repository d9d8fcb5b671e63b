"""Fixtures of the bridge tests.

Integration modules that only read and write through a bridge share one session-wide
3-region super-cluster (`bridge_cluster`, us-east provisioned) and run in the session's event
loop (`pytestmark = pytest.mark.asyncio(loop_scope="session")`); each test isolates its events
by using service names of its own. Tests that stop NATS servers start their own cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from services.xregion.local.supercluster import SuperCluster, with_free_ports
from services.xregion.natsconf import build_topology
from shared.natsconn import NatsConnection
from tests.bridge.helpers import REGION, REGIONS, provision_region, write_region_file
from tests.bridge.upstream_app import TestUpstream


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def bridge_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SuperCluster]:
    """3 regions x 1 server, us-east's streams provisioned; stopped at the end of the session."""
    workdir = tmp_path_factory.mktemp("bridge-nats")
    cluster = SuperCluster(with_free_ports(build_topology(REGIONS)), workdir)
    await cluster.start(90)  # stops what it started if it fails
    try:
        settings = write_region_file(
            workdir / "provision.toml",
            nats_urls=cluster.client_urls(REGION),
            data_dir=workdir / "data",
            services={},
        )
        await provision_region(settings)
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def reader(bridge_cluster: SuperCluster, tmp_path: Path) -> AsyncIterator[NatsConnection]:
    """A NATS connection to us-east, to read what the bridge published."""
    settings = write_region_file(
        tmp_path / "reader.toml",
        nats_urls=bridge_cluster.client_urls(REGION),
        data_dir=tmp_path,
        services={},
    )
    async with NatsConnection(settings.nats, service="test-reader") as conn:
        yield conn


@pytest_asyncio.fixture(loop_scope="session")
async def js(reader: NatsConnection) -> JetStreamContext:
    return reader.jetstream()


@pytest_asyncio.fixture(loop_scope="session")
async def upstream() -> AsyncIterator[TestUpstream]:
    async with TestUpstream() as service:
        yield service
