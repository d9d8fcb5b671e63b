"""The pull adapter (`puller.py`) against the real super-cluster: answers to a pull request it
already gave up on must not end the request that replaced it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from services.xregion.local.supercluster import SuperCluster
from shared.natsconn import NatsConnection
from shared.puller import Puller, PullStalledError
from shared.regions import events_stream
from tests.broadcaster.helpers import ORIGIN, bc_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]

CONSUMER = "test-puller"
SUBJECT = f"xr.events.{ORIGIN}.pullertest"


@pytest_asyncio.fixture(loop_scope="package")
async def consumer(js: JetStreamContext) -> AsyncIterator[str]:
    """A durable pull consumer of its own on the origin's events stream."""
    stream = events_stream(ORIGIN)
    await js.add_consumer(
        stream,
        ConsumerConfig(
            durable_name=CONSUMER, ack_policy=AckPolicy.EXPLICIT, filter_subject=SUBJECT
        ),
    )
    try:
        yield CONSUMER
    finally:
        await js.delete_consumer(stream, CONSUMER)


@pytest_asyncio.fixture(loop_scope="package")
async def far_conn(cluster: SuperCluster) -> AsyncIterator[NatsConnection]:
    """A connection to eu-west: its pull requests reach the consumer through the gateway."""
    async with NatsConnection(bc_settings(cluster, "eu-west").nats, service="test-eu") as conn:
        yield conn


async def test_a_late_answer_to_a_forgotten_request_does_not_end_the_next(
    cluster: SuperCluster, consumer: str, far_conn: NatsConnection
) -> None:
    received: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        received.append(msg)

    puller = Puller(
        far_conn.nc,
        stream=events_stream(ORIGIN),
        consumer=consumer,
        on_msg=on_msg,
        pending_bytes_limit=1 << 20,
    )
    await puller.start()
    try:
        # The path works: an empty request ends with the server's 408.
        await puller.request(1, 0.2)
        await puller.wait_closed(5.0)

        # 0.8 s each way: the 408 of a 0.2 s request comes back after 1.8 s, later than
        # the 1.2 s after which the puller gives up on it and sends the next request.
        await cluster.faults.set_latency(ORIGIN, "eu-west", 0.8)
        await puller.request(1, 0.2)
        with pytest.raises(PullStalledError):
            await puller.wait_closed(0.2)

        await puller.request(1, 10.0)
        # The first request's 408 arrives within this second; the second request is
        # still open at the server and must stay open here too.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.5):
                await puller.wait_closed(10.0)
        assert puller.is_open, "a stale 408 ended the open pull request"
    finally:
        await puller.aclose()
    assert received == []
