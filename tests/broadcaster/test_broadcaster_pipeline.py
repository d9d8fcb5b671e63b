"""The pipelined forwarder at WAN latency (50 ms one-way on us-east <-> eu-west, through the
fault proxy): one hot key keeps many events in flight at once, and arrives once and in order;
a gateway cut while a window is in flight is re-sent from the first unacked event after the
heal, and the target's duplicate window keeps every event exactly once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from services.broadcaster.gate import State
from services.broadcaster.service import Broadcaster
from services.xregion.local.supercluster import SuperCluster
from shared.envelope import HDR_MSG_ID, decode
from shared.natsconn import NatsConnection
from tests.broadcaster.helpers import ORIGIN, Producer, bc_settings, count_replay, read_replay
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]

DELAY_S = 0.05
TARGET = "eu-west"
# More than one pull request's worth (fetch_batch 256), so several are in flight together.
EVENTS = 600
# The publishes of one key seen in flight at once: a per-key lane would allow only 1.
MANY = 20


@pytest_asyncio.fixture(loop_scope="package")
async def js_eu(cluster: SuperCluster) -> AsyncIterator[JetStreamContext]:
    """JetStream through eu-west itself, to look at its stream while us-east cannot."""
    async with NatsConnection(bc_settings(cluster, TARGET).nats, service="test-eu") as conn:
        yield conn.jetstream()


async def test_one_hot_key_keeps_many_events_in_flight_and_arrives_once_in_order(
    cluster: SuperCluster, js: JetStreamContext
) -> None:
    producer = Producer(js, "hot-key", keys=1)
    await producer.send(EVENTS)
    await cluster.faults.set_latency(ORIGIN, TARGET, DELAY_S)
    async with Broadcaster(bc_settings(cluster)) as broadcaster:
        forwarder = broadcaster.forwarders[TARGET]
        await wait_until(
            lambda: forwarder.in_flight >= MANY,
            30,
            interval=0.001,
            message=f"{MANY} events of one key in flight to {TARGET}",
        )
        await wait_until(lambda: _arrived(js, producer), 60, message=f"{EVENTS} events in {TARGET}")
    await _assert_once_in_order(js, producer)


async def test_a_cut_mid_window_is_resent_after_the_heal_exactly_once(
    cluster: SuperCluster, js: JetStreamContext, js_eu: JetStreamContext
) -> None:
    producer = Producer(js, "cut-window", keys=1)
    await producer.send(EVENTS)
    retried = _outcome("retried")
    await cluster.faults.set_latency(ORIGIN, TARGET, DELAY_S)
    async with Broadcaster(bc_settings(cluster)) as broadcaster:
        forwarder = broadcaster.forwarders[TARGET]
        await wait_until(
            lambda: forwarder.in_flight >= MANY, 30, interval=0.001, message="a window in flight"
        )
        await cluster.faults.cut(ORIGIN, TARGET)
        await wait_until(
            lambda: forwarder.gate.state is not State.CLOSED, 30, message="the cut noticed"
        )
        assert await count_replay(js_eu, TARGET, producer.service) < EVENTS, "cut mid-window"
        await cluster.faults.restore(ORIGIN, TARGET)
        await wait_until(lambda: _arrived(js_eu, producer), 60, message="caught up after the heal")
        await wait_until(
            lambda: forwarder.held == 0, 30, message="every source acked after the heal"
        )
    assert _outcome("retried") > retried, "the window in flight was re-sent"
    await _assert_once_in_order(js_eu, producer)


async def _arrived(js: JetStreamContext, producer: Producer) -> bool:
    return await count_replay(js, TARGET, producer.service) >= len(producer.sent)


async def _assert_once_in_order(js: JetStreamContext, producer: Producer) -> None:
    stored = await read_replay(js, TARGET, producer.service)
    ids = [decode(m.headers, m.data).event_id for m in stored]
    assert len(ids) == len(set(ids)) == len(producer.sent), "each event exactly once"
    assert ids == producer.ids, "in the origin's order"
    assert all(m.headers[HDR_MSG_ID] == event_id for m, event_id in zip(stored, ids, strict=True))


def _outcome(outcome: str) -> float:
    labels = {"origin": ORIGIN, "target": TARGET, "outcome": outcome}
    return REGISTRY.get_sample_value("xr_broadcaster_forwarded_total", labels) or 0.0
