"""`shared.natsconn.NatsConnection` against real servers: bounded first connect, reconnect
after the server comes back (counted), drain on close."""

from __future__ import annotations

import asyncio
import socket

import pytest
from prometheus_client import REGISTRY

from shared.natsconn import NatsConnectError, NatsConnection
from shared.settings import NatsSettings
from tests.harness.fixtures import MakeSuperCluster, NatsConnect
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


def metric(name: str, service: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": service}) or 0.0


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_first_connect_is_bounded() -> None:
    url = f"nats://127.0.0.1:{unused_port()}"
    settings = NatsSettings(servers=[url], first_connect_timeout_s=1, reconnect_wait_s=0.1)
    conn = NatsConnection(settings, service="test-first")
    with pytest.raises(NatsConnectError, match=r"could not connect to NATS at nats://127\.0\.0\.1"):
        await conn.connect()
    assert not conn.is_connected
    await conn.aclose()  # closing a connection that never opened is fine


async def test_reconnects_after_the_server_returns_and_counts_it(
    make_supercluster: MakeSuperCluster,
) -> None:
    # One-server regions need the other regions' gateways to run JetStream (docs/NATS.md §1.6),
    # so the smallest real shape is the 3-region dev super-cluster.
    cluster = await make_supercluster()
    server = next(s for s in cluster.servers if s.cluster == "us-east")
    settings = NatsSettings(
        servers=cluster.client_urls("us-east"), reconnect_wait_s=0.05, reconnect_wait_max_s=0.2
    )
    service = "test-reconnect"
    async with NatsConnection(settings, service=service) as conn:
        assert metric("xr_nats_connected", service) == 1
        disconnects = metric("xr_nats_disconnects_total", service)
        reconnects = metric("xr_nats_reconnects_total", service)

        await cluster.stop_server(server.name)
        await wait_until(lambda: not conn.is_connected, 10, message="client saw the disconnect")
        assert metric("xr_nats_disconnects_total", service) == disconnects + 1
        assert metric("xr_nats_connected", service) == 0

        await cluster.start_server(server.name)
        await wait_until(lambda: conn.is_connected, 30, message="client reconnected")
        assert metric("xr_nats_reconnects_total", service) == reconnects + 1
        assert metric("xr_nats_connected", service) == 1
        assert not conn.closed.is_set()
    assert metric("xr_nats_connected", service) == 0


async def test_close_drains_pending_messages(
    make_supercluster: MakeSuperCluster, nats_connect: NatsConnect
) -> None:
    cluster = await make_supercluster()
    received: asyncio.Queue[bytes] = asyncio.Queue()
    listener = await nats_connect(cluster.client_urls("us-east"))

    async def on_message(msg: object) -> None:
        received.put_nowait(msg.data)  # type: ignore[attr-defined]

    await listener.subscribe("drain.test", cb=on_message)
    await listener.flush()

    conn = NatsConnection(
        NatsSettings(servers=cluster.client_urls("us-east")), service="test-drain"
    )
    await conn.connect()
    for i in range(100):
        await conn.nc.publish("drain.test", str(i).encode())
    await conn.aclose()  # drain flushes everything buffered before closing
    await conn.aclose()  # idempotent
    await wait_until(lambda: received.qsize() == 100, 10, message="all 100 messages arrived")
