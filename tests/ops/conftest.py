"""Fixtures of the operator-command tests.

`deployment`: one package-wide local deployment (3 regions x 1 NATS server, every region
provisioned, a demo upstream per region, and bridge + broadcaster + replayer of every region as
real processes, all ready). Tests that use it run in the package's event loop
(`pytest.mark.asyncio(loop_scope="package")`), so the upstreams keep answering.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from services.xregion.local.supercluster import SuperCluster, with_free_ports
from services.xregion.natsconf import build_topology
from tests.harness.wait import wait_until
from tests.ops.stack import REGIONS, LocalDeployment, RegionStack, Upstream, prepare_region

READY_TIMEOUT_S = 60.0


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def deployment(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalDeployment]:
    workdir = tmp_path_factory.mktemp("ops")
    cluster = SuperCluster(with_free_ports(build_topology(REGIONS)), workdir / "nats")
    await cluster.start(90)  # stops what it started if it fails
    stacks: dict[str, RegionStack] = {}
    try:
        async with contextlib.AsyncExitStack() as upstreams:
            for region in REGIONS:
                upstream = await upstreams.enter_async_context(Upstream())
                stacks[region] = await prepare_region(cluster, region, upstream, workdir)
            try:
                await _spawn_all(stacks)
                yield LocalDeployment(cluster, stacks, workdir)
            finally:
                processes = [p for s in stacks.values() for p in s.processes]
                await asyncio.gather(*(p.stop() for p in processes))
    finally:
        await cluster.stop()


async def _spawn_all(stacks: dict[str, RegionStack]) -> None:
    processes = [p for s in stacks.values() for p in s.processes]
    for process in processes:
        await process.spawn()
    async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:

        async def all_ready() -> bool:
            return all([await p.ready(http) for p in processes])

        await wait_until(all_ready, READY_TIMEOUT_S, interval=0.2, message="9 processes ready")
