"""The replayer against a real NATS server and a real HTTP service: applied once, with the
right request; stale, duplicate and 409 never (re)applied; retries; dead letters."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError
from prometheus_client import REGISTRY
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from services.replayer.service import Replayer
from shared.coalesce import Coalescer
from shared.envelope import HDR_CANARY
from shared.kvcas import KvCas
from shared.natsconn import NatsConnection
from shared.provision import versions_bucket
from shared.settings import Settings
from tests.harness.wait import wait_until
from tests.replayer.helpers import (
    ORIGIN,
    REGION,
    SERVICE,
    count,
    dead_letters,
    make_event,
    publish,
    record_local_write,
)
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Replayer]:
    async with Replayer(settings) as replayer:
        replayer.start_consuming()
        yield replayer


async def test_applied_once_with_the_right_request(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    event = make_event("/catalog/items/1?x=1", body=b'{"name":"a"}', hlc_ms=5)
    await publish(js, event)
    async with Replayer(settings) as replayer:
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
    async with Replayer(settings) as replayer:
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
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert [c.status for c in recorder.calls] == [422]
    [letter] = await dead_letters(js)
    assert letter["_subject"] == f"xr.dlq.{REGION}.{ORIGIN}.{SERVICE}"
    assert letter["Xr-Dlq-Reason"] == "http_422"
    assert letter["Xr-Dlq-Status"] == "422"
    assert letter["Xr-Dlq-Attempts"] == "1"
    assert letter["Xr-Dlq-At"].endswith("+00:00")
    assert letter["Xr-Event-Id"] == event.event_id
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert len(recorder.calls) == 1


async def test_canary_is_recorded_and_never_called(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    canary = make_event(f"/xr-canary/{REGION}", service="xr-canary", method="POST")
    await publish(js, canary, extra={HDR_CANARY: REGION})
    async with Replayer(settings) as replayer:
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
    async with Replayer(settings) as replayer:
        store = replayer.versions
        assert await record_local_write(settings, local) == "recorded"
        await publish(js, older)
        await replayer.run_until_idle()
        record = await store.get(SERVICE, local.key)
    assert recorder.calls == []
    assert record is not None
    assert record.event_id == local.event_id


async def test_a_local_write_after_a_remembered_replay_still_makes_older_replays_stale(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    """The replayer remembers the record it wrote for v1; the bridge then records a local
    write v3. v2 must not be called (the remembered v1 only ever proves "older than v1"),
    and v4 is applied on top of the local write."""
    v1, v2, local, v4 = (make_event("/catalog/mixed", hlc_ms=i) for i in (1, 2, 3, 4))
    async with Replayer(settings) as replayer:
        await publish(js, v1)
        await replayer.run_until_idle()
        assert await record_local_write(settings, local) == "recorded"
        await publish(js, v2)
        await replayer.run_until_idle()
        assert [c.event_id for c in recorder.calls] == [v1.event_id]
        await publish(js, v4)
        await publish(js, v1, msg_id=False)  # and v1 again: older than what is remembered
        await replayer.run_until_idle()
        record = await replayer.versions.get(SERVICE, v4.key)
    assert [c.event_id for c in recorder.calls] == [v1.event_id, v4.event_id]
    assert record is not None
    assert (record.event_id, record.state) == (v4.event_id, "applied")


async def test_every_line_about_an_event_carries_its_context(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    recorder.script["/catalog/ctx"] = [503]  # one in-process retry, logged by the upstream
    event = make_event("/catalog/ctx")
    await publish(js, event)
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with Replayer(settings) as replayer:
            await replayer.run_until_idle()
    about = [e for e in logs if e["event"] in ("replayer.upstream_retry", "replayer.applied")]
    assert [e["event"] for e in about] == ["replayer.upstream_retry", "replayer.applied"]
    for entry in about:
        assert entry["event_id"] == event.event_id
        assert (entry["origin"], entry["service"]) == (ORIGIN, SERVICE)
        assert entry["trace_id"] == event.trace[3:35]
    [started] = [e for e in logs if e["event"] == "replayer.started"]
    assert "event_id" not in started


async def test_coalesced_publishes_arrive_in_order_and_close_sends_the_rest(
    settings: Settings,
) -> None:
    async with (
        NatsConnection(settings.nats, service="test-coalesce") as conn,
        _received(conn, "test.coalesce") as got,
    ):
        async with Coalescer(conn.nc, delay_s=0.05) as out:
            for n in range(200):
                out.publish("test.coalesce", b"%d" % n)
        # aclose sent everything still queued (well before the 50 ms delay)
        await conn.nc.flush()
        await wait_until(lambda: len(got) == 200, 5, message="200 frames")
    assert got == [b"%d" % n for n in range(200)]


async def test_coalescer_sends_an_idle_frame_at_once_and_holds_the_next_burst(
    settings: Settings,
) -> None:
    """A frame after a quiet spell leaves without the delay (idle lag); one queued within
    `delay_s` of a burst waits for the next one (here: the close, long before 60 s)."""
    async with (
        NatsConnection(settings.nats, service="test-coalesce-idle") as conn,
        _received(conn, "test.coalesce.idle") as got,
    ):
        async with Coalescer(conn.nc, delay_s=60) as out:
            out.publish("test.coalesce.idle", b"first")
            await wait_until(lambda: got == [b"first"], 5, message="the idle frame")
            out.publish("test.coalesce.idle", b"second")
            # Sent after "second" on the same connection: it would arrive after it.
            await conn.nc.publish("test.coalesce.idle", b"marker")
            await wait_until(lambda: b"marker" in got, 5, message="the marker")
            assert got == [b"first", b"marker"], "a frame within delay_s of a burst was not held"
        await wait_until(lambda: len(got) == 3, 5, message="the held frame, sent by close")
    assert got == [b"first", b"marker", b"second"]


@contextlib.asynccontextmanager
async def _received(conn: NatsConnection, subject: str) -> AsyncIterator[list[bytes]]:
    """The payloads that arrive on `subject`, in order, while the block runs."""
    got: list[bytes] = []

    async def received(msg: Msg) -> None:
        got.append(msg.data)

    sub = await conn.nc.subscribe(subject, cb=received)
    try:
        yield got
    finally:
        await sub.unsubscribe()


async def test_kv_compare_and_set_answers_like_the_client_library(
    js: JetStreamContext, settings: Settings
) -> None:
    async with NatsConnection(settings.nats, service="test-cas") as conn:
        kv = await conn.jetstream().key_value(versions_bucket(REGION))
        first = await kv.put("catalog.cas-test", b"1")
        async with KvCas(conn.nc, versions_bucket(REGION), timeout_s=2) as cas:
            second = await cas.update("catalog.cas-test", b"2", last=first)
            assert second is not None
            assert second > first
            assert await cas.update("catalog.cas-test", b"3", last=first) is None  # moved on
            assert (await kv.get("catalog.cas-test")).value == b"2"
        async with KvCas(conn.nc, "no-such-bucket", timeout_s=2) as nowhere:
            with pytest.raises(NoStreamResponseError):
                await nowhere.update("k", b"x", last=1)


async def test_kv_reads_and_create_and_read_answer_like_the_client_library(
    settings: Settings,
) -> None:
    async with NatsConnection(settings.nats, service="test-cas-read") as conn:
        kv = await conn.jetstream().key_value(versions_bucket(REGION))
        async with KvCas(conn.nc, versions_bucket(REGION), timeout_s=2) as cas:
            assert await cas.read("catalog.read-absent") == (None, None)
            revision = await kv.put("catalog.read-present", b"v1")
            assert await cas.read("catalog.read-present") == (b"v1", revision)
            await kv.delete("catalog.read-present")
            assert await cas.read("catalog.read-present") == (None, None)  # a tombstone

            created, read = await cas.create_and_read("catalog.read-new", b"mine")
            assert created is not None
            assert read == (None, None)
            assert (await kv.get("catalog.read-new")).value == b"mine"
            # The key exists now: the create is refused, the read shows what is there.
            assert await cas.create_and_read("catalog.read-new", b"again") == (
                None,
                (b"mine", created),
            )
            # A tombstone refuses the create too (KeyValue.create writes over it).
            assert await cas.create_and_read("catalog.read-present", b"x") == (None, (None, None))
        async with KvCas(conn.nc, "no-such-bucket", timeout_s=2) as nowhere:
            with pytest.raises(NoStreamResponseError):
                await nowhere.read("k")


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
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert [c.event_id for c in recorder.calls] == [e.event_id for e in events]
    assert count("duplicate") == duplicates


async def test_registered_ready_and_serving_metrics(
    settings: Settings, js: JetStreamContext
) -> None:
    async with (
        Replayer(settings) as replayer,
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


class _Broken:
    """An applier with a bug: every event raises an error nobody translates."""

    def __init__(self) -> None:
        self.calls = 0

    async def handle(self, delivery: object) -> object:
        self.calls += 1
        raise ValueError("a bug")


async def test_an_untranslated_error_is_retried_then_dead_lettered_not_lost(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    event = make_event("/catalog/bug")
    await publish(js, event)
    broken = _Broken()
    async with Replayer(settings) as replayer:
        replayer.consumer._applier = broken  # type: ignore[assignment]  # our own seam

        async def dead_lettered() -> list[dict[str, str]]:
            await replayer.run_until_idle()  # returns while a nak'ed event waits its delay
            return await dead_letters(js)

        letters = await wait_until(dead_lettered, 60, message="a dead letter")
    assert broken.calls == settings.replayer.max_deliveries
    [letter] = letters
    assert letter["Xr-Dlq-Reason"] == "internal_error"
    assert letter["Xr-Event-Id"] == event.event_id
    assert "a bug" in letter["Xr-Dlq-Error"]
