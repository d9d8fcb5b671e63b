"""The replayer against a real NATS server and a real HTTP service: applied once, with the
right request; stale, duplicate and 409 never (re)applied; retries; dead letters."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from services.replayer.service import Replayer
from shared.envelope import HDR_CANARY
from shared.natsconn import NatsConnection
from shared.regions import dlq_stream
from shared.settings import Settings
from shared.versions import record_local_write
from tests.harness.wait import wait_until
from tests.replayer.helpers import ORIGIN, REGION, SERVICE, make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Replayer]:
    async with Replayer(settings, retry_waits=False) as replayer:
        replayer.start_consuming()
        yield replayer


def count(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "xr_replayer_events_total", {"origin": ORIGIN, "service": SERVICE, "outcome": outcome}
    )
    return value or 0.0


async def dead_letters(js: JetStreamContext) -> list[dict[str, str]]:
    found: list[dict[str, str]] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(dlq_stream(REGION), seq=seq, subject=f"xr.dlq.{REGION}.>",
                                   next=True)  # fmt: skip
        except NotFoundError:
            return found
        found.append({**(msg.headers or {}), "_subject": msg.subject or ""})
        seq = int(msg.seq or seq) + 1


async def test_applied_once_with_the_right_request(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    event = make_event("/catalog/items/1?x=1", body=b'{"name":"a"}', hlc_ms=5)
    await publish(js, event)
    async with Replayer(settings, retry_waits=False) as replayer:
        await replayer.run_until_idle()
    [call] = recorder.calls
    assert call.method == "PUT"
    assert call.path == "/catalog/items/1?x=1"
    assert call.body == b'{"name":"a"}'
    h = call.headers
    assert h["Idempotency-Key"] == event.event_id
    assert h["Xr-Event-Id"] == event.event_id
    assert h["Xr-Replayed-From"] == ORIGIN
    assert h["Xr-Hlc"] == str(event.hlc)
    assert h["traceparent"] == event.trace
    assert h["Content-Type"] == "application/json"
    assert h["Host"] == recorder.url.removeprefix("http://")


async def test_duplicate_and_stale_are_not_called(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    newer = make_event("/catalog/k", hlc_ms=20, body=b"new")
    older = make_event("/catalog/k", hlc_ms=10, body=b"old")
    stale_before, dup_before = count("stale"), count("duplicate")
    await publish(js, newer)
    await publish(js, older)
    await publish(js, newer, msg_id=False)  # the same event again, past the stream's dedup
    async with Replayer(settings, retry_waits=False) as replayer:
        await replayer.run_until_idle()
    assert [c.event_id for c in recorder.calls] == [newer.event_id]
    assert recorder.values["/catalog/k"][1] == b"new"
    assert count("stale") - stale_before == 1
    assert count("duplicate") - dup_before == 1


async def test_409_is_stale_and_5xx_is_retried_until_applied(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    recorder.script["/catalog/conflict"] = [409]
    recorder.script["/catalog/flaky"] = [503] * 5  # more than one delivery's 3 attempts
    stale_before, retried_before = count("stale"), count("retried")
    conflict, flaky = make_event("/catalog/conflict"), make_event("/catalog/flaky")
    await publish(js, conflict)
    await publish(js, flaky)
    async with running(settings):
        await wait_until(lambda: flaky.event_id in recorder.succeeded, 20,
                         message="the flaky event applied")  # fmt: skip
    assert [c.status for c in recorder.calls_for("/catalog/conflict")] == [409]
    assert [c.status for c in recorder.calls_for("/catalog/flaky")] == [503] * 5 + [200]
    assert count("stale") - stale_before == 1
    assert count("retried") - retried_before >= 1
    assert recorder.repeats == []


async def test_4xx_is_dead_lettered_with_headers_and_not_called_again(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    recorder.script["/catalog/bad"] = [422]
    event = make_event("/catalog/bad", body=b"payload")
    await publish(js, event)
    async with Replayer(settings, retry_waits=False) as replayer:
        await replayer.run_until_idle()
    assert [c.status for c in recorder.calls] == [422]
    [letter] = await dead_letters(js)
    assert letter["_subject"] == f"xr.dlq.{REGION}.{ORIGIN}.{SERVICE}"
    assert letter["Xr-Dlq-Reason"] == "http_422"
    assert letter["Xr-Dlq-Status"] == "422"
    assert letter["Xr-Dlq-Attempts"] == "1"
    assert letter["Xr-Dlq-At"].endswith("+00:00")
    assert letter["Xr-Event-Id"] == event.event_id
    async with Replayer(settings, retry_waits=False) as replayer:
        await replayer.run_until_idle()
    assert len(recorder.calls) == 1


async def test_canary_is_recorded_and_never_called(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    canary = make_event(f"/xr-canary/{REGION}", service="xr-canary", method="POST")
    await publish(js, canary, extra={HDR_CANARY: REGION})
    async with Replayer(settings, retry_waits=False) as replayer:
        await replayer.run_until_idle()
    assert recorder.calls == []
    assert await dead_letters(js) == []
    age = REGISTRY.get_sample_value(
        "xr_replication_canary_age_seconds", {"origin": ORIGIN, "target": REGION}
    )
    assert age is not None
    assert age > 0


async def test_a_newer_local_write_makes_an_older_replay_stale(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    older = make_event("/catalog/local", hlc_ms=1)
    local = make_event("/catalog/local", hlc_ms=2)
    async with Replayer(settings, retry_waits=False) as replayer:
        store = replayer.versions
        assert await record_local_write(
            store.kv, SERVICE, local.key, str(local.hlc), local.event_id, owner="bridge"
        )
        await publish(js, older)
        await replayer.run_until_idle()
        record = await store.get(SERVICE, local.key)
    assert recorder.calls == []
    assert record is not None
    assert record.event_id == local.event_id


async def test_events_queued_behind_a_slow_key_are_kept_alive(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    """Five calls of 0.9 s on one key outlast ack_wait (4 s): in_progress() keeps the queued
    ones from being redelivered (which would show as `duplicate`)."""
    recorder.delays["/catalog/slow"] = 0.9
    events = [make_event("/catalog/slow", hlc_ms=i) for i in range(5)]
    for event in events:
        await publish(js, event)
    duplicates = count("duplicate")
    async with Replayer(settings, retry_waits=False) as replayer:
        await replayer.run_until_idle()
    assert [c.event_id for c in recorder.calls] == [e.event_id for e in events]
    assert count("duplicate") == duplicates


async def test_registered_ready_and_serving_metrics(
    settings: Settings, js: JetStreamContext
) -> None:
    async with (
        Replayer(settings, retry_waits=False) as replayer,
        NatsConnection(settings.nats, service="test-ping") as conn,
        httpx.AsyncClient() as client,
    ):
        reply = await conn.nc.request("$SRV.PING.xr-replayer", b"", timeout=2)
        ping = json.loads(reply.data)
        assert ping["metadata"]["region"] == REGION
        assert ping["metadata"]["instance"] == replayer.instance_id
        ready = await client.get(f"{replayer.admin_url}/readyz")
        assert ready.status_code == 200, ready.text
        metrics = (await client.get(f"{replayer.admin_url}/metrics")).text
        assert "xr_replayer_inflight" in metrics


async def test_a_503_burst_then_recovery_applies_every_key_newest(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    """Every event ends applied or superseded (stale): the newest of each key is applied."""
    recorder.down = True
    events = [make_event(f"/catalog/burst-{i % 10}", hlc_ms=i) for i in range(50)]
    for event in events:
        await publish(js, event)
    applied, stale = count("applied"), count("stale")
    async with running(settings):
        await wait_until(lambda: len(recorder.calls) >= 100, 20, message="100 failed calls")
        recorder.down = False
        await wait_until(
            lambda: count("applied") - applied + count("stale") - stale == len(events), 30,
            message="every event applied or stale after the burst",
        )  # fmt: skip
    assert all(e.event_id in recorder.succeeded for e in events[-10:])
    assert recorder.repeats == []
    assert await dead_letters(js) == []
