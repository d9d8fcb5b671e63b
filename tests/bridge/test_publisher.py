"""The publisher's own ack inbox against a real stream: acks, duplicates, error replies and
subjects no stream listens on (NATS_NOTES §3.1.1, §3.1.4)."""

from __future__ import annotations

import time

import pytest

from services.bridge.publisher import Publisher, PublishUnknownError
from shared.natsconn import NatsConnection
from shared.regions import events_stream, events_subject
from tests.bridge.helpers import REGION

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
        started = time.monotonic()
        with pytest.raises(PublishUnknownError, match="refused"):
            await publisher.publish(subject, headers, b"x", timeout_s=10)
    assert time.monotonic() - started < 5  # the reply, not the deadline, ended it


async def test_no_stream_is_retried_until_the_deadline(reader: NatsConnection) -> None:
    async with Publisher(reader, max_inflight=4) as publisher:
        with pytest.raises(PublishUnknownError, match=r"within 0\.6 s"):
            await publisher.publish("xr.nowhere.pubtest", {}, b"x", timeout_s=0.6)


async def test_a_closed_publisher_refuses(reader: NatsConnection) -> None:
    publisher = Publisher(reader, max_inflight=1)
    with pytest.raises(PublishUnknownError, match="not open"):
        await publisher.publish("xr.nowhere.pubtest", {}, b"x", timeout_s=1)
