"""Two real `xregion broadcaster` processes share the region's consumers; one is SIGKILLed
under load. Nothing is lost (its unacked events come back after ack_wait and the survivor
forwards them), nothing is doubled (the target streams drop re-published copies by
`Nats-Msg-Id`), and the survivor then shuts down gracefully on SIGTERM."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from services.xregion.local.supercluster import SuperCluster
from shared.envelope import decode
from tests.broadcaster.helpers import (
    ORIGIN,
    TARGETS,
    BroadcasterProcess,
    Producer,
    bc_settings,
    count_replay,
    metric_value,
    read_replay,
    write_region_file,
)
from tests.harness.wait import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.chaos,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]

RATE_PER_S = 300
LATENCY_S = 0.2  # one-way, on both gateways out of us-east


@pytest_asyncio.fixture(loop_scope="package")
async def instances(
    cluster: SuperCluster, tmp_path: Path
) -> AsyncIterator[tuple[BroadcasterProcess, BroadcasterProcess]]:
    config = write_region_file(tmp_path / "us-east.toml", bc_settings(cluster))
    pair = (
        BroadcasterProcess(config, tmp_path / "broadcaster-a.log"),
        BroadcasterProcess(config, tmp_path / "broadcaster-b.log"),
    )
    try:
        for process in pair:
            await process.start()
        yield pair
    finally:
        for process in pair:
            await process.stop()


async def test_sigkill_one_of_two_instances_under_load_loses_and_doubles_nothing(
    instances: tuple[BroadcasterProcess, BroadcasterProcess],
    cluster: SuperCluster,
    js: JetStreamContext,
) -> None:
    victim, survivor = instances
    for target in TARGETS:  # so that many publishes are under way at any moment
        await cluster.faults.set_latency(ORIGIN, target, LATENCY_S)
    producer = Producer(js, "kill", keys=200)
    await producer.run_for(3.0, RATE_PER_S)
    await wait_until(lambda: _both_forwarded(instances), 10, message="both instances share work")

    await victim.kill()
    await producer.run_for(4.0, RATE_PER_S)
    total = len(producer.sent)
    await wait_until(lambda: _all_arrived(js, total), 60, message=f"{total} events in both")

    for target in TARGETS:
        events = [decode(m.headers, m.data) for m in await read_replay(js, target, "kill")]
        assert len(events) == total, f"{target}: nothing doubled"
        assert {e.event_id for e in events} == set(producer.ids), f"{target}: nothing lost"

    # The victim died with publishes the targets had stored but it had not acked yet: the
    # survivor got them again after ack_wait, and the targets' dedup dropped the copies.
    assert await _count(survivor, "duplicate") > 0
    assert await survivor.terminate() == 0
    exits = [line for line in survivor.log_lines() if line.get("event") == "broadcaster.exit"]
    assert [line.get("reason") for line in exits] == ["shutdown requested"]
    stopped = {
        line["target"]
        for line in survivor.log_lines()
        if line.get("event") == "broadcaster.forwarder_stopped"
    }
    assert stopped == set(TARGETS)


async def _both_forwarded(instances: tuple[BroadcasterProcess, ...]) -> bool:
    return all([await _count(process, "forwarded") > 0 for process in instances])


async def _count(process: BroadcasterProcess, outcome: str) -> float:
    text = await process.metrics()
    name = "xr_broadcaster_forwarded_total"
    return sum(metric_value(text, name, origin=ORIGIN, target=t, outcome=outcome) for t in TARGETS)


async def _all_arrived(js: JetStreamContext, total: int) -> bool:
    for target in TARGETS:
        if await count_replay(js, target, "kill") < total:
            return False
    return True
