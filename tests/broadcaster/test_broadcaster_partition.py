"""Isolation under a partition: us-east and eu-west cut apart for 20 s (fault proxy on the
gateway) while writes keep coming. ap-south keeps receiving at full rate; eu-west receives
nothing, then catches up after the heal with nothing lost, nothing doubled, keys in order."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from services.broadcaster.service import Broadcaster
from services.xregion.local.supercluster import SuperCluster
from shared.envelope import decode
from shared.natsconn import NatsConnection
from tests.broadcaster.helpers import (
    ORIGIN,
    Producer,
    Stored,
    bc_settings,
    count_replay,
    key_orders,
    read_replay,
)
from tests.harness.wait import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]

RATE_PER_S = 150
CUT_S = 20.0


@pytest_asyncio.fixture(loop_scope="package")
async def js_eu(cluster: SuperCluster) -> AsyncIterator[JetStreamContext]:
    """JetStream through eu-west itself, to look at its stream while us-east cannot."""
    async with NatsConnection(bc_settings(cluster, "eu-west").nats, service="test-eu") as conn:
        yield conn.jetstream()


async def test_partitioned_region_catches_up_and_the_other_keeps_full_rate(
    cluster: SuperCluster, js: JetStreamContext, js_eu: JetStreamContext
) -> None:
    producer = Producer(js, "part", keys=25)
    async with Broadcaster(bc_settings(cluster)) as broadcaster:
        await producer.run_for(1.0, RATE_PER_S)
        await wait_until(lambda: _caught_up(js, js_eu, producer), 30, message="warm-up done")

        await cluster.faults.cut(ORIGIN, "eu-west")
        first_cut = len(producer.sent)
        before = await count_replay(js_eu, "eu-west", "part")
        await producer.run_for(CUT_S, RATE_PER_S)
        during = producer.sent[first_cut:]
        assert await count_replay(js_eu, "eu-west", "part") == before, "nothing crossed the cut"
        assert await _readiness_detail(broadcaster.admin_url) == (
            "degraded",
            "unreachable (retrying): eu-west",
        )
        await wait_until(
            lambda: _count_at_least(js, "ap-south", len(producer.sent)), 10, message="ap-south"
        )

        healed_at = time.time()
        await cluster.faults.restore(ORIGIN, "eu-west")
        await producer.run_for(1.0, RATE_PER_S)
        await wait_until(lambda: _caught_up(js, js_eu, producer), 60, message="eu-west caught up")

    total = len(producer.sent)
    assert during, "writes kept coming during the cut"
    ap_south = await read_replay(js, "ap-south", "part")
    eu_west = await read_replay(js, "eu-west", "part")
    for name, stored in (("ap-south", ap_south), ("eu-west", eu_west)):
        events = [decode(m.headers, m.data) for m in stored]
        assert len(events) == total, f"{name}: nothing doubled"
        assert {e.event_id for e in events} == set(producer.ids), f"{name}: nothing lost"
        assert key_orders((e.key, e.event_id) for e in events) == producer.key_orders(), name
    # ap-south did not wait for the heal: every write of the cut was stored there before it.
    stored_at = _stored_at(ap_south, {s.event_id for s in during})
    assert len(stored_at) == len(during)
    assert max(stored_at) < healed_at, "ap-south kept receiving during the cut"


async def _caught_up(js: JetStreamContext, js_eu: JetStreamContext, producer: Producer) -> bool:
    n = len(producer.sent)
    return await _count_at_least(js, "ap-south", n) and await _count_at_least(js_eu, "eu-west", n)


async def _count_at_least(js: JetStreamContext, target: str, n: int) -> bool:
    return await count_replay(js, target, "part") >= n


async def _readiness_detail(admin_url: str) -> tuple[str, str]:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
        check = (await http.get(admin_url + "/readyz")).json()["checks"]["targets"]
    return check["status"], check["detail"]


def _stored_at(stored: list[Stored], ids: set[str]) -> list[float]:
    """When `stored` took each event of `ids`."""
    return [m.at for m in stored if decode(m.headers, m.data).event_id in ids]
