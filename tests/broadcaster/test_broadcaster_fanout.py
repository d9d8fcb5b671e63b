"""Fan-out, policy and canaries against the real 3-region super-cluster, with a broadcaster
running in this process (the same code `xregion broadcaster` runs, minus signals)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.broadcaster.service import Broadcaster
from services.xregion.local.supercluster import SuperCluster
from shared.envelope import CANARY_SERVICE, HDR_CANARY, HDR_MSG_ID, canary_target, decode
from shared.natsconn import NatsConnection
from shared.regions import broadcast_consumer, events_stream
from tests.broadcaster.helpers import (
    JS_TRANSIENT,
    ORIGIN,
    TARGETS,
    Producer,
    bc_settings,
    count_replay,
    key_orders,
    read_replay,
)
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]


async def counts(js: JetStreamContext, service: str) -> dict[str, int]:
    return {t: await count_replay(js, t, service) for t in TARGETS}


async def acked_up_to(js: JetStreamContext, seq: int) -> bool:
    """Both consumers have acked (forwarded or skipped) everything up to `seq`."""
    for target in TARGETS:
        info = await js.consumer_info(events_stream(ORIGIN), broadcast_consumer(target))
        if info.ack_floor is None or (info.ack_floor.stream_seq or 0) < seq:
            return False
    return True


async def test_fan_out_to_two_targets_exactly_once_each(
    cluster: SuperCluster, conn: NatsConnection, js: JetStreamContext
) -> None:
    producer = Producer(js, "fanout", keys=40)
    await producer.send(300)
    async with Broadcaster(bc_settings(cluster, services=_services("fanout"))) as broadcaster:
        reply = await conn.nc.request("$SRV.INFO.xr-broadcaster", b"", timeout=5)
        info = json.loads(reply.data)
        assert info["metadata"]["region"] == ORIGIN
        assert info["metadata"]["admin_url"] == broadcaster.admin_url
        await wait_until(lambda: counts(js, "fanout"), 30, message="both targets fed")
        await wait_until(
            lambda: _all_of(js, "fanout", 300), 30, message="300 events in both targets"
        )
        await producer.send(100)  # while running, not only the backlog
        await wait_until(lambda: _all_of(js, "fanout", 400), 30, message="400 in both")
    # Stopped: nothing more arrives, and each target holds each event exactly once.
    assert await counts(js, "fanout") == {"eu-west": 400, "ap-south": 400}
    originals = {s.event_id: s for s in producer.sent}
    for target in TARGETS:
        stored = await read_replay(js, target, "fanout")
        ids = [decode(m.headers, m.data).event_id for m in stored]
        assert sorted(ids) == sorted(originals), target
        assert all(m.headers[HDR_MSG_ID] == decode(m.headers, m.data).event_id for m in stored)
        got = key_orders((e.key, e.event_id) for e in (decode(m.headers, m.data) for m in stored))
        assert got == producer.key_orders(), f"per-key order in {target}"
    # Payload and headers unchanged: each copy is the message stored in the origin's stream.
    original = await js.get_msg(events_stream(ORIGIN), producer.sent[0].seq)
    for target in TARGETS:
        copy = next(
            m
            for m in await read_replay(js, target, "fanout")
            if m.headers[HDR_MSG_ID] == producer.sent[0].event_id
        )
        assert copy.data == original.data
        assert copy.headers == original.headers


async def test_each_policy_variant(cluster: SuperCluster, js: JetStreamContext) -> None:
    services: dict[str, dict[str, Any]] = {
        "pv-all": {},
        "pv-list": {"targets": ["eu-west"]},
        "pv-list-origin": {"targets": ["us-east", "ap-south"]},
        "pv-req": {"allow_request_targets": True},
        "pv-req-off": {"allow_request_targets": False},
        "pv-req-narrow": {"targets": ["eu-west"], "allow_request_targets": True},
    }
    settings = bc_settings(cluster, services={n: _service(n, **o) for n, o in services.items()})
    producers = {name: Producer(js, name) for name in [*services, "pv-unknown"]}
    await producers["pv-all"].send(5)
    await producers["pv-list"].send(5)
    await producers["pv-list-origin"].send(5)
    await producers["pv-req"].send(3, targets=("ap-south",))
    await producers["pv-req"].send(2)  # no Xr-Targets: the service's targets
    await producers["pv-req-off"].send(5, targets=("ap-south",))  # header ignored
    await producers["pv-req-narrow"].send(5, targets=("ap-south",))  # outside: nobody
    await producers["pv-unknown"].send(5)  # not in this region's configuration: every peer
    malformed = await js.publish("xr.events.us-east.pv-bad", b"not an event", timeout=5)
    last = max(malformed.seq, *(p.sent[-1].seq for p in producers.values()))

    async with Broadcaster(settings):
        await wait_until(
            lambda: acked_up_to(js, last), 30, ignore=JS_TRANSIENT, message="every event handled"
        )

    expected = {
        "pv-all": {"eu-west": 5, "ap-south": 5},
        "pv-list": {"eu-west": 5, "ap-south": 0},
        "pv-list-origin": {"eu-west": 0, "ap-south": 5},
        "pv-req": {"eu-west": 2, "ap-south": 5},
        "pv-req-off": {"eu-west": 5, "ap-south": 5},
        "pv-req-narrow": {"eu-west": 0, "ap-south": 0},
        "pv-unknown": {"eu-west": 5, "ap-south": 5},
        "pv-bad": {"eu-west": 1, "ap-south": 1},
    }
    got = {name: await counts(js, name) for name in expected}
    assert got == expected
    for target in TARGETS:
        (bad,) = await read_replay(js, target, "pv-bad")
        assert bad.data == b"not an event"  # unchanged, for the replayer to dead-letter


async def test_canaries_arrive_in_every_target_and_only_there(
    cluster: SuperCluster, js: JetStreamContext
) -> None:
    before = await counts(js, CANARY_SERVICE)
    async with Broadcaster(bc_settings(cluster, canary_interval_s=0.5)):
        await wait_until(
            lambda: _grown(js, CANARY_SERVICE, before, 2), 30, message="canaries in both targets"
        )
    for target in TARGETS:
        stored = await read_replay(js, target, CANARY_SERVICE)
        assert stored, target
        assert {canary_target(m.headers) for m in stored} == {target}
        assert all(m.headers[HDR_CANARY] == target for m in stored)
        newest = decode(stored[-1].headers, stored[-1].data)
        assert (newest.origin, newest.service) == (ORIGIN, CANARY_SERVICE)


async def _all_of(js: JetStreamContext, service: str, n: int) -> bool:
    return all(v >= n for v in (await counts(js, service)).values())


async def _grown(js: JetStreamContext, service: str, before: dict[str, int], by: int) -> bool:
    now = await counts(js, service)
    return all(now[t] >= before[t] + by for t in TARGETS)


def _service(name: str, **options: object) -> dict[str, object]:
    return {"upstream": "http://127.0.0.1:9", "routes": [f"/{name}"], **options}


def _services(*names: str) -> dict[str, dict[str, object]]:
    return {name: _service(name) for name in names}


async def test_shutdown_with_nothing_to_do_is_prompt(cluster: SuperCluster) -> None:
    # Every part notices the stop at once: nothing waits out shutdown_timeout_s and is cancelled.
    with capture_logs() as logs:
        async with Broadcaster(bc_settings(cluster)) as broadcaster:
            await wait_until(
                lambda: all(f.bound for f in broadcaster.forwarders.values()), 10, message="bound"
            )
    events = [e["event"] for e in logs]
    assert "broadcaster.shutdown_deadline_passed" not in events
    assert events.count("broadcaster.forwarder_stopped") == len(TARGETS)
