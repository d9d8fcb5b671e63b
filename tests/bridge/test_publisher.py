"""The publisher's own ack inbox against a real stream: acks, duplicates, error replies and
subjects no stream listens on (docs/NATS.md §3.1.1, §3.1.4)."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from services.bridge.publisher import Publisher, PublishUnknownError
from shared.frames import header_block, send_hpub
from shared.natsconn import NatsConnection
from shared.regions import events_stream, events_subject
from tests.bridge.helpers import REGION
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_each_publish_gets_its_own_ack_and_duplicates_are_flagged(
    reader: NatsConnection,
) -> None:
    subject = events_subject(REGION, "pubtest")
    async with Publisher(reader, max_inflight=4) as publisher:
        first = await publisher.publish(subject, {"Nats-Msg-Id": "pubtest-1"}, b"one", timeout_s=5)
        second = await publisher.publish(subject, {"Nats-Msg-Id": "pubtest-2"}, b"two", timeout_s=5)
        again = await publisher.publish(subject, {"Nats-Msg-Id": "pubtest-1"}, b"one", timeout_s=5)
    assert first.stream == second.stream == events_stream(REGION)
    assert second.seq == first.seq + 1
    assert (first.duplicate, again.duplicate, again.seq) == (None, True, first.seq)


async def test_an_error_reply_fails_the_publish_at_once(reader: NatsConnection) -> None:
    subject = events_subject(REGION, "pubtest")
    headers = {"Nats-Msg-Id": "pubtest-3", "Nats-Expected-Stream": "NOT_THIS_ONE"}
    async with Publisher(reader, max_inflight=4) as publisher:
        with pytest.raises(PublishUnknownError, match="JetStream refused the event") as failed:
            await publisher.publish(subject, headers, b"x", timeout_s=30)
    # The reply ended it, not the deadline (which would raise "no JetStream ack within 30 s").
    assert "expected stream does not match" in str(failed.value)
    assert not isinstance(failed.value.__cause__, TimeoutError)


async def test_no_stream_is_retried_until_the_deadline(reader: NatsConnection) -> None:
    async with Publisher(reader, max_inflight=4) as publisher:
        with pytest.raises(PublishUnknownError, match=r"within 0\.6 s"):
            await publisher.publish("xr.nowhere.pubtest", {}, b"x", timeout_s=0.6)


async def test_a_closed_publisher_refuses(reader: NatsConnection) -> None:
    publisher = Publisher(reader, max_inflight=1)
    with pytest.raises(PublishUnknownError, match="not open"):
        await publisher.publish("xr.nowhere.pubtest", {}, b"x", timeout_s=1)


async def _silent_subject(conn: NatsConnection, name: str) -> tuple[str, list[bytes]]:
    """A subject someone listens on but nobody acks: no 503, no PubAck, ever."""
    subject = f"xr.silent.{name}"
    seen: list[bytes] = []

    async def note(msg: Msg) -> None:
        seen.append(msg.data)

    await conn.nc.subscribe(subject, cb=note)
    await conn.nc.flush()
    return subject, seen


async def test_a_cancelled_publish_stays_cancelled_when_the_publisher_closes(
    reader: NatsConnection,
) -> None:
    subject, seen = await _silent_subject(reader, "cancel")
    publisher = Publisher(reader, max_inflight=4)
    await publisher.open()
    task = asyncio.create_task(publisher.publish(subject, {}, b"x", timeout_s=30))
    await wait_until(lambda: seen, 5, message="the publish reached the subject")
    task.cancel()  # the caller gives up, and the publisher closes in the same moment
    await publisher.aclose()
    with pytest.raises(asyncio.CancelledError):
        await task  # a caller's cancellation is never turned into a PublishUnknownError


async def test_closing_fails_every_waiting_publish_at_once_and_sends_nothing_more(
    reader: NatsConnection,
) -> None:
    subject, seen = await _silent_subject(reader, "close")
    publisher = Publisher(reader, max_inflight=1)
    await publisher.open()
    first = asyncio.create_task(publisher.publish(subject, {}, b"first", timeout_s=30))
    await wait_until(lambda: seen, 5, message="the first publish reached the subject")
    second = asyncio.create_task(publisher.publish(subject, {}, b"second", timeout_s=30))
    await wait_until(
        lambda: publisher.waiting_for_slot == 1, 5, message="the second publish waits for a slot"
    )
    await publisher.aclose()
    results = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 5)
    # Closing failed both, each where it waited; the 30 s deadline would say "within 30 s".
    assert [str(r) for r in results] == [
        "the publisher closed before the ack came",
        "the publisher closed before the event was sent",
    ], results
    assert all(isinstance(r, PublishUnknownError) for r in results)
    assert publisher.waiting_for_slot == 0
    await reader.nc.flush()
    assert seen == [b"first"]  # nothing is published by a closed publisher


async def test_a_prebuilt_frame_arrives_as_the_clients_own_publish_would(
    reader: NatsConnection,
) -> None:
    """`send_hpub` bypasses nats-py's header encoding: a subscriber must not tell the two
    apart (headers, payload, reply), and a closed client refuses it like `publish`."""
    headers = {"Nats-Msg-Id": "frame-1", "Xr-Path": "/a?b=c d", "Xr-Req-Note": "é\r\nx"}
    got: list[Msg] = []

    async def keep(msg: Msg) -> None:
        got.append(msg)

    nc = reader.nc
    await nc.subscribe("xr.frames.test", cb=keep)
    await nc.flush()
    await nc.publish("xr.frames.test", b"payload", reply="r.1", headers=headers)
    await send_hpub(nc, "xr.frames.test", "r.1", header_block(headers), b"payload")
    await wait_until(lambda: len(got) == 2, 5, message="both messages")
    own, prebuilt = ((m.headers, m.data, m.reply) for m in got)
    assert prebuilt == own
    assert own[0] == {**headers, "Xr-Req-Note": "é  x"}

    closed = await nats.connect(nc.connected_url.geturl() if nc.connected_url else "")
    await closed.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await send_hpub(closed, "xr.frames.test", "", header_block({}), b"")
