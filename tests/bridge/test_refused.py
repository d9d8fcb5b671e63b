"""Events the region's own events stream refuses for good (docs/DESIGN.md §5 bridge), against
the real stream: here `XR_EVENTS_US_EAST` takes at most `SMALL_LIMIT` bytes per message
(headers included), so a write with a 1 KiB body is refused with err_code 10054 although it
fits the server's max_payload, while a small write is stored as usual.

Before, the live path spooled such an event (the client got 2xx) and the drainer retried it
for ever: every pass failed, the backoff grew to its maximum, and the event was stored nowhere
useful. Now it is dead-lettered in `XR_DLQ_US_EAST` and the client gets 503; the outbox files
such entries there too, in the same pass as the good ones; `xregion dlq replay` sends a letter
back to the events stream as a valid event once the limit is raised.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NoStreamResponseError, NotFoundError, ServiceUnavailableError
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.bridge.deadletters import DeadLetters
from services.bridge.drainer import Drainer
from services.bridge.outbox import Outbox
from services.bridge.publisher import Publisher, PublishRefusedError
from services.xregion.local.supercluster import SuperCluster
from services.xregion.ops.dlq import Selection, run_dlq
from services.xregion.ops.trace import run_trace
from shared.dlq import HDR_DLQ_BODY, PUBLISH_REFUSED, replay_message
from shared.envelope import (
    HDR_DLQ_ATTEMPTS,
    HDR_DLQ_ERROR,
    HDR_DLQ_REASON,
    HDR_DLQ_STATUS,
    HDR_EVENT_ID,
    HDR_MSG_ID,
    Event,
    decode,
    encode,
    new_traceparent,
)
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.natsconn import NatsConnection
from shared.regions import dlq_stream, dlq_subject, events_stream, events_subject
from shared.retry import RetryPolicy
from tests.bridge.helpers import (
    REGION,
    http_client,
    running_bridge,
    send,
    service_settings,
    stored_events,
)
from tests.bridge.upstream_app import TestUpstream
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SMALL_LIMIT = 600  # an event's headers take about 400 bytes
SLIM_FITS = 1200  # a dead letter's headers take about 700 bytes, its body 1 KiB more
NOTHING_FITS = 64
BIG_BODY = b"B" * 1024
_TRANSIENT = (NoStreamResponseError, ServiceUnavailableError, TimeoutError)


class StreamLimit:
    """A stream's max_msg_size (default `XR_EVENTS_US_EAST`'s), set for one test and put back
    after it."""

    def __init__(self, js: JetStreamContext, stream: str = events_stream(REGION)) -> None:
        self._js = js
        self._stream = stream
        self._old: int | None = None

    async def set(self, limit: int) -> None:
        async def update() -> bool:
            config = (await self._js.stream_info(self._stream)).config
            if self._old is None:
                self._old = config.max_msg_size if config.max_msg_size is not None else -1
            await self._js.update_stream(dataclasses.replace(config, max_msg_size=limit))
            return True

        await wait_until(update, 15, interval=0.2, ignore=_TRANSIENT, message=self._stream)

    async def restore(self) -> None:
        if self._old is not None:
            await self.set(self._old)


@pytest_asyncio.fixture(loop_scope="session")
async def small_events(js: JetStreamContext) -> AsyncIterator[StreamLimit]:
    limit = StreamLimit(js)
    await limit.set(SMALL_LIMIT)
    try:
        yield limit
    finally:
        await limit.restore()


@pytest_asyncio.fixture(loop_scope="session")
async def dlq_limit(js: JetStreamContext) -> AsyncIterator[StreamLimit]:
    """The DLQ's own max_msg_size, for a test to set; put back after it."""
    limit = StreamLimit(js, dlq_stream(REGION))
    try:
        yield limit
    finally:
        await limit.restore()


def events_counted(service: str, outcome: str) -> float:
    labels = {"service": service, "outcome": outcome}
    return REGISTRY.get_sample_value("xr_bridge_events_total", labels) or 0.0


async def dead_letters(js: JetStreamContext, service: str) -> list[RawStreamMsg]:
    """Every dead letter of `service` the bridge filed in the region's DLQ, oldest first."""
    found: list[RawStreamMsg] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(
                dlq_stream(REGION), seq, dlq_subject(REGION, REGION, service), next=True
            )
        except NotFoundError:
            return found
        found.append(msg)
        seq = int(msg.seq or seq) + 1


def entry_for(service: str, body: bytes) -> tuple[Event, dict[str, str], bytes]:
    event = Event(
        event_id=uuid7_str(), origin=REGION, service=service, method="PUT",
        path=f"/{service}/x", hlc=HlcStamp(1_700_000_000_000, 0), key=f"/{service}/x",
        body=body, trace=new_traceparent(),
    )  # fmt: skip
    headers, payload = encode(event)
    return event, headers, payload


def drainer_for(outbox: Outbox, publisher: Publisher, reader: NatsConnection) -> Drainer:
    """A drainer of `outbox` as the bridge wires it, with short backoffs."""
    letters = DeadLetters(
        publisher, region=REGION, max_payload=lambda: reader.max_payload, timeout_s=5
    )
    return Drainer(
        outbox, publisher, dead_letters=letters, batch=10, timeout_s=5,
        retry=RetryPolicy.backoff("bridge.outbox", base_s=0.01, max_s=0.05),
    )  # fmt: skip


def assert_refused_letter(letter: RawStreamMsg, event_id: str, body: bytes) -> None:
    headers = letter.headers or {}
    assert headers[HDR_EVENT_ID] == event_id
    assert headers[HDR_MSG_ID] == f"pub:{event_id}"
    assert headers[HDR_DLQ_REASON] == PUBLISH_REFUSED
    assert "message size exceeds maximum allowed (err_code 10054)" in headers[HDR_DLQ_ERROR]
    assert (headers[HDR_DLQ_STATUS], headers[HDR_DLQ_ATTEMPTS]) == ("", "1")
    assert letter.data == body


async def test_the_stream_refusal_is_told_apart_from_an_unknown_outcome(
    reader: NatsConnection, small_events: StreamLimit
) -> None:
    _, headers, payload = entry_for("refused-probe", BIG_BODY)
    async with Publisher(reader, max_inflight=4) as publisher:
        with pytest.raises(PublishRefusedError) as refused:
            await publisher.publish(
                events_subject(REGION, "refused-probe"), headers, payload, timeout_s=10
            )
    assert refused.value.err_code == 10054
    assert refused.value.description == "message size exceeds maximum allowed"


async def test_a_refused_write_answers_503_and_is_kept_in_the_dlq(
    capsys: pytest.CaptureFixture[str],
    bridge_cluster: SuperCluster,
    upstream: TestUpstream,
    js: JetStreamContext,
    tmp_path: Path,
    small_events: StreamLimit,
) -> None:
    service = "refused-live"
    failed, published = events_counted(service, "failed"), events_counted(service, "published")
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    with capture_logs() as logs:
        async with running_bridge(settings) as bridge, http_client() as http:
            reply = await send(http, "PUT", bridge.url, f"/{service}/big", data=BIG_BODY)
            assert reply.status == 503, reply.body
            assert reply.json()["error"] == "event_not_stored"
            assert "kept in the dead-letter stream XR_DLQ_US_EAST" in reply.json()["detail"]
            assert bridge.outbox.depth == 0  # not spooled: no retry could ever store it
            small = await send(http, "PUT", bridge.url, f"/{service}/small", data=b"small")
            assert small.status == 200, small.body

    assert [c.raw_path for c in upstream.calls if service in c.raw_path] == [
        f"/{service}/big",
        f"/{service}/small",
    ]  # the write was applied: 503 says its event is not replicated
    (letter,) = await dead_letters(js, service)
    event_id = (letter.headers or {})[HDR_EVENT_ID]
    assert_refused_letter(letter, event_id, BIG_BODY)
    assert events_counted(service, "failed") == failed + 1
    assert events_counted(service, "published") == published + 1
    (stored,) = await stored_events(js, service)
    assert stored.event.event_id == small.headers["Xr-Event-Id"]
    (line,) = [e for e in logs if e["event"] == "bridge.event.refused"]
    assert line["log_level"] == "error"
    assert (line["event_id"], line["origin"], line["service"]) == (event_id, REGION, service)
    assert line["trace_id"]
    assert (line["err_code"], line["dead_lettered"]) == (10054, True)

    # `xregion trace` finds it in the DLQ, though no events stream holds it.
    assert await run_trace(settings, event_id, window_s=60) == 0
    out = capsys.readouterr().out
    assert f"event {event_id}: PUT /{service}/big (service {service}" in out, out
    refused = [line for line in out.splitlines() if line.split()[1:2] == ["refused"]]
    assert len(refused) == 1, out
    assert refused[0].split()[0] == REGION
    assert "XR_DLQ_US_EAST seq" in refused[0], out
    assert "err_code 10054" in refused[0], out


async def test_the_drainer_files_refused_entries_and_publishes_the_rest_in_the_same_pass(
    reader: NatsConnection, js: JetStreamContext, tmp_path: Path, small_events: StreamLimit
) -> None:
    service = "refused-outbox"
    subject = events_subject(REGION, service)
    refused, refused_headers, refused_payload = entry_for(service, BIG_BODY)
    # Over the server's max_payload (possible after the cluster lowered it).
    too_large, large_headers, large_payload = entry_for(service, b"L" * reader.max_payload)
    good = [entry_for(service, b"good %d" % n) for n in range(3)]
    # A header name nats-py refuses to send (an outbox edited by hand): no retry can send it.
    unsendable, bad_headers, bad_payload = entry_for(service, b"bad header")
    bad_headers = {**bad_headers, "Bad Name": "x"}
    failed = events_counted(service, "failed")
    drained = REGISTRY.get_sample_value("xr_bridge_outbox_drained_total") or 0.0
    async with (
        Outbox(tmp_path / "outbox.sqlite3", max_bytes=4 * reader.max_payload) as outbox,
        Publisher(reader, max_inflight=8) as publisher,
    ):
        for event, headers, payload in [
            (refused, refused_headers, refused_payload),
            (too_large, large_headers, large_payload),
            (unsendable, bad_headers, bad_payload),
            *good,
        ]:
            await outbox.put(event.event_id, event.key, subject, headers, payload)
        drainer = drainer_for(outbox, publisher, reader)
        with capture_logs() as logs:
            assert await drainer.drain_pass(), "the pass failed: something is left for retries"
        assert outbox.depth == 0

    stored = await stored_events(js, service)
    assert [s.event.event_id for s in stored] == [event.event_id for event, _, _ in good]
    filed = {(m.headers or {})[HDR_EVENT_ID]: m for m in await dead_letters(js, service)}
    assert sorted(filed) == sorted([refused.event_id, too_large.event_id, unsendable.event_id])
    assert_refused_letter(filed[refused.event_id], refused.event_id, BIG_BODY)
    slim = filed[too_large.event_id]
    assert (slim.headers or {})[HDR_DLQ_REASON] == PUBLISH_REFUSED
    assert "max_payload" in (slim.headers or {})[HDR_DLQ_ERROR]
    assert HDR_DLQ_BODY in (slim.headers or {})
    assert not slim.data
    # Its letter carries the same header: only a slim one can be sent.
    bad = filed[unsendable.event_id].headers or {}
    assert "invalid header: 'Bad Name'" in bad[HDR_DLQ_ERROR]
    assert "Bad Name" not in bad
    assert events_counted(service, "failed") == failed + 3
    # Drained counts what JetStream acked, not what was dead-lettered.
    assert REGISTRY.get_sample_value("xr_bridge_outbox_drained_total") == drained + 3
    (drained_line,) = [e for e in logs if e["event"] == "bridge.outbox.drained"]
    assert drained_line["events"] == 3
    lines = [e for e in logs if e["event"] == "bridge.outbox.refused"]
    assert sorted(e["event_id"] for e in lines) == sorted(
        [refused.event_id, too_large.event_id, unsendable.event_id]
    )
    assert all(e["log_level"] == "error" and e["service"] == service for e in lines)


async def test_a_replayed_dead_letter_is_a_valid_event_in_the_events_stream(
    bridge_cluster: SuperCluster,
    upstream: TestUpstream,
    js: JetStreamContext,
    tmp_path: Path,
    small_events: StreamLimit,
    capsys: pytest.CaptureFixture[str],
) -> None:
    service = "refused-replay"
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    async with running_bridge(settings) as bridge, http_client() as http:
        reply = await send(http, "PUT", bridge.url, f"/{service}/big", data=BIG_BODY)
        assert reply.status == 503, reply.body
    (letter,) = await dead_letters(js, service)
    event_id = (letter.headers or {})[HDR_EVENT_ID]
    selection = Selection(region=REGION, service=service, reason=PUBLISH_REFUSED)

    # While the stream still refuses it, a replay fails and the dead letter stays.
    assert await run_dlq(settings, "replay", selection, yes=False) == 1
    assert "replay failed" in capsys.readouterr().err
    assert len(await dead_letters(js, service)) == 1
    assert await stored_events(js, service) == []

    await small_events.restore()  # the operator raised the limit
    assert await run_dlq(settings, "replay", selection, yes=False) == 0
    (stored,) = await stored_events(js, service)
    event = decode(stored.headers, stored.data)
    assert (event.event_id, event.origin, event.service) == (event_id, REGION, service)
    assert event.body == BIG_BODY
    assert stored.headers[HDR_MSG_ID] == event_id  # the events stream's dedup key
    assert not [h for h in stored.headers if h.startswith("Xr-Dlq-")]
    assert await dead_letters(js, service) == []
    # The same letter replayed again (say its delete had failed) is dropped as a duplicate.
    subject, headers, payload = replay_message(
        region=REGION, subject=letter.subject or "", headers=letter.headers,
        payload=letter.data or b"",
    )  # fmt: skip
    ack: Any = await js.publish(subject, payload, headers=headers)
    assert (ack.duplicate, ack.seq) == (True, stored.seq)


async def test_a_dlq_that_refuses_the_letter_gets_a_slim_one_without_body(
    bridge_cluster: SuperCluster,
    upstream: TestUpstream,
    js: JetStreamContext,
    tmp_path: Path,
    small_events: StreamLimit,
    dlq_limit: StreamLimit,
) -> None:
    await dlq_limit.set(SLIM_FITS)  # under the whole letter (body 1 KiB), over a slim one
    service = "refused-slim"
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    async with running_bridge(settings) as bridge, http_client() as http:
        reply = await send(
            http, "PUT", bridge.url, f"/{service}/big", data=BIG_BODY,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
        assert reply.status == 503, reply.body
        assert "kept in the dead-letter stream XR_DLQ_US_EAST" in reply.json()["detail"]
        assert bridge.outbox.depth == 0

    (letter,) = await dead_letters(js, service)
    headers = letter.headers or {}
    assert not letter.data
    assert "the DLQ refused them" in headers[HDR_DLQ_BODY]
    assert "err_code 10054" in headers[HDR_DLQ_BODY]
    assert headers[HDR_MSG_ID] == f"pub:{headers[HDR_EVENT_ID]}"
    assert headers[HDR_DLQ_REASON] == PUBLISH_REFUSED
    assert headers["Xr-Path"] == f"/{service}/big"
    assert not [name for name in headers if name.lower().startswith("xr-req-")]


async def test_a_dlq_that_refuses_even_a_slim_letter_never_blocks_the_outbox(
    bridge_cluster: SuperCluster,
    upstream: TestUpstream,
    reader: NatsConnection,
    js: JetStreamContext,
    tmp_path: Path,
    small_events: StreamLimit,
    dlq_limit: StreamLimit,
) -> None:
    await dlq_limit.set(NOTHING_FITS)
    service = "refused-nowhere"
    failed = events_counted(service, "failed")
    settings = service_settings(tmp_path, bridge_cluster, upstream, service)
    with capture_logs() as logs:
        async with running_bridge(settings) as bridge, http_client() as http:
            reply = await send(http, "PUT", bridge.url, f"/{service}/big", data=BIG_BODY)
            assert reply.status == 503, reply.body
            assert "could not be stored for replication" in reply.json()["detail"]
            assert bridge.outbox.depth == 0  # spooled, it would block its key for ever
    (line,) = [e for e in logs if e["event"] == "bridge.event.refused"]
    assert line["dead_lettered"] is False
    assert "refuses even a letter without body" in line["dead_letter_error"]

    refused, headers, payload = entry_for(service, BIG_BODY)
    good = entry_for(service, b"good")
    async with (
        Outbox(tmp_path / "outbox.sqlite3", max_bytes=reader.max_payload) as outbox,
        Publisher(reader, max_inflight=4) as publisher,
    ):
        for event, event_headers, event_payload in ((refused, headers, payload), good):
            await outbox.put(
                event.event_id, event.key, events_subject(REGION, service), event_headers,
                event_payload,
            )  # fmt: skip
        drainer = drainer_for(outbox, publisher, reader)
        with capture_logs() as drain_logs:
            assert await drainer.drain_pass(), "the refused entry was kept for another pass"
        assert outbox.depth == 0
    (dropped,) = [e for e in drain_logs if e["event"] == "bridge.outbox.dropped"]
    assert (dropped["event_id"], dropped["key"], dropped["log_level"]) == (
        refused.event_id, refused.key, "error",
    )  # fmt: skip
    assert [s.event.event_id for s in await stored_events(js, service)] == [good[0].event_id]
    assert await dead_letters(js, service) == []
    assert events_counted(service, "failed") == failed + 2
