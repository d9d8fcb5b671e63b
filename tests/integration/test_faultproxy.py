"""The gateway fault proxy (services/xregion/local/faultproxy.py): against a scripted gateway peer
(byte order, latency, cut/refuse/restore) and against a real super-cluster (a cut partitions
two regions while the third keeps flowing; latency shows up in round trips; reconnects never
go around the proxies)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from services.xregion.local.faultproxy import (
    FaultInjector,
    GatewayProxy,
    LinkFaults,
    UnknownClusterError,
    gateway_name_from_connect,
)
from services.xregion.local.supercluster import SuperCluster, SuperClusterError
from services.xregion.natsconf import TlsSpec, build_topology, replace
from tests.harness.fixtures import NatsConnect
from tests.harness.wait import wait_until

INFO = b'INFO {"gateway":"b"}\r\n'


def connect_line(gateway: str | None) -> bytes:
    body = '{"verbose":false,"name":"NSRV"' + (f',"gateway":"{gateway}"' if gateway else "")
    return f"CONNECT {body}}}\r\n".encode()


# ------------------------------------------------------------------ pure parts


def test_gateway_name_from_connect() -> None:
    line = b'CONNECT {"echo":false,"tls_required":false,"name":"NABC","gateway":"eu-west"}\r\n'
    assert gateway_name_from_connect(line) == "eu-west"
    assert gateway_name_from_connect(connect_line(None)) is None  # a client, not a gateway
    assert gateway_name_from_connect(b"PING\r\n") is None
    assert gateway_name_from_connect(b"CONNECT {not json\r\n") is None
    assert gateway_name_from_connect(b"\x16\x03\x01\x02\x00") is None  # a TLS ClientHello


def test_link_faults_are_symmetric() -> None:
    faults = LinkFaults()
    faults.cut("a", "b")
    faults.set_latency("b", "c", 0.25)
    assert (faults.is_cut("b", "a"), faults.is_cut("a", "c"), faults.is_cut(None, "b")) == (
        True,
        False,
        False,
    )
    assert (faults.latency_s("c", "b"), faults.latency_s("a", "b")) == (0.25, 0.0)
    faults.heal_all()
    assert (faults.is_cut("a", "b"), faults.latency_s("b", "c")) == (False, 0.0)
    with pytest.raises(ValueError, match="latency must be >= 0"):
        faults.set_latency("a", "b", -1)


async def test_injector_rejects_unknown_clusters() -> None:
    injector = FaultInjector(["a", "b"])
    with pytest.raises(UnknownClusterError, match="unknown cluster 'c'; known: a, b"):
        await injector.cut("a", "c")


def test_supercluster_refuses_a_fault_proxy_on_tls_gateways(tmp_path: Path) -> None:
    tls = TlsSpec(enabled=True, cert_file="c", key_file="k", ca_file="ca")
    topology = replace(build_topology(["a", "b"]), tls=tls)
    with pytest.raises(SuperClusterError, match="plaintext gateway links"):
        SuperCluster(topology, tmp_path, fault_proxy=True)
    with pytest.raises(SuperClusterError, match="fault_proxy=True"):
        _ = SuperCluster(build_topology(["a", "b"]), tmp_path).faults


# ------------------------------------------------------------------ scripted gateway peer


class EchoGateway:
    """Speaks first like a gateway (INFO), then echoes; records what each connection sent."""

    def __init__(self) -> None:
        self.received: list[bytearray] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = bytearray()
        self.received.append(seen)
        writer.write(INFO)
        try:
            while data := await reader.read(65536):
                seen += data
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # the proxy aborted us: that is what cut tests provoke
        finally:
            writer.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port


@pytest.fixture
async def echo_gateway() -> AsyncIterator[EchoGateway]:
    gateway = EchoGateway()
    gateway.server = await asyncio.start_server(gateway.handle, "127.0.0.1", 0)
    try:
        yield gateway
    finally:
        gateway.server.close()
        await gateway.server.wait_closed()


@pytest.fixture
async def proxy_b(echo_gateway: EchoGateway) -> AsyncIterator[tuple[GatewayProxy, FaultInjector]]:
    """A proxy for server b-1 of cluster b, in front of the echo gateway."""
    injector = FaultInjector(["a", "b", "c"])
    proxy = GatewayProxy(
        server="b-1", cluster="b", upstream=echo_gateway.address, faults=injector.state
    )
    injector.add(proxy)
    async with proxy:
        yield proxy, injector


class Dialer:
    """A fake remote gateway dialling the proxy as cluster `source`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(
        cls, proxy: GatewayProxy, source: str | None, *, refused: bool = False
    ) -> Dialer:
        reader, writer = await asyncio.open_connection(*proxy.address)
        assert await reader.readline() == INFO  # the server speaks first, passed at once
        writer.write(connect_line(source))
        if not refused:  # the CONNECT reached the echoing peer and came back
            assert await reader.readexactly(len(connect_line(source))) == connect_line(source)
        return cls(reader, writer)

    async def echo(self, data: bytes) -> bytes:
        self.writer.write(data)
        await self.writer.drain()
        return await self.reader.readexactly(len(data))

    async def closed(self) -> bool:
        try:
            return await self.reader.read(65536) == b""
        except OSError:
            return True

    def close(self) -> None:
        self.writer.close()


@pytest.mark.integration
async def test_latency_keeps_byte_order_and_pipelines(
    proxy_b: tuple[GatewayProxy, FaultInjector],
) -> None:
    proxy, injector = proxy_b
    one_way = 0.1
    await injector.set_latency("a", "b", one_way)
    dialer = await Dialer.open(proxy, "a")
    payload = b"".join(b"%08d" % i for i in range(512 * 1024))  # 4 MiB, >= 64 proxy chunks
    loop = asyncio.get_running_loop()
    started = loop.time()
    echoed = await dialer.echo(payload)
    elapsed = loop.time() - started
    dialer.close()

    assert echoed == payload
    assert elapsed >= 2 * one_way  # through the proxy and back: physics
    # No upper bound here (no timing thresholds in tests): that the delay is pipelined rather
    # than paid per chunk shows in the forwarding benchmark with injected latency.


@pytest.mark.integration
async def test_cut_drops_and_refuses_only_that_pair_then_restore(
    proxy_b: tuple[GatewayProxy, FaultInjector], echo_gateway: EchoGateway
) -> None:
    proxy, injector = proxy_b
    from_a = await Dialer.open(proxy, "a")
    from_c = await Dialer.open(proxy, "c")
    client = await Dialer.open(proxy, None)
    assert await from_a.echo(b"PING\r\n") == b"PING\r\n"
    assert sorted(str(link.source) for link in injector.links()) == ["None", "a", "c"]

    await injector.cut("b", "a")
    assert await from_a.closed()
    assert await from_c.echo(b"x") == b"x"
    before = len(echo_gateway.received)
    refused = await Dialer.open(proxy, "a", refused=True)
    assert await refused.closed()
    # The refused CONNECT never reached the server behind the proxy.
    assert all(connect_line("a") not in seen for seen in echo_gateway.received[before:])
    assert await client.echo(b"y") == b"y"  # connections that are not gateways are never cut

    await injector.restore("a", "b")
    again = await Dialer.open(proxy, "a")
    assert await again.echo(b"hello") == b"hello"
    for dialer in (from_a, from_c, client, again, refused):
        dialer.close()


# ------------------------------------------------------------------ real super-cluster


async def responder(nc: Any, subject: str, answer: bytes) -> None:
    async def reply(msg: Any) -> None:
        await msg.respond(answer)

    await nc.subscribe(subject, cb=reply)
    await nc.flush()


async def ask(nc: Any, subject: str) -> bytes | None:
    """The reply, or None when nobody in reach answers."""
    try:
        return bytes((await nc.request(subject, b"?", timeout=1)).data)
    except (NoRespondersError, NatsTimeoutError):
        return None


async def outbound_ports(cluster: SuperCluster) -> set[int]:
    """Remote port of every outbound gateway connection of every server (/gatewayz)."""
    ports: set[int] = set()
    async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
        for spec in cluster.servers:
            gatewayz = (await http.get(spec.monitor_url + "/gatewayz")).json()
            ports |= {o["connection"]["port"] for o in gatewayz["outbound_gateways"].values()}
    return ports


@pytest.mark.integration
@pytest.mark.chaos
async def test_gateway_cut_partitions_two_regions_and_restore_heals(
    supercluster: SuperCluster, nats_connect: NatsConnect
) -> None:
    east = await nats_connect(supercluster.client_urls("us-east"))
    await responder(await nats_connect(supercluster.client_urls("eu-west")), "svc.west", b"west")
    await responder(await nats_connect(supercluster.client_urls("ap-south")), "svc.south", b"sth")
    await wait_until(lambda: ask(east, "svc.west"), 15, message="eu-west answers us-east")
    await wait_until(lambda: ask(east, "svc.south"), 15, message="ap-south answers us-east")

    await supercluster.faults.cut("us-east", "eu-west")
    for _ in range(5):
        assert await ask(east, "svc.west") is None
        assert await ask(east, "svc.south") == b"sth"
    assert not [
        link
        for link in supercluster.faults.links()
        if {link.source, link.target} == {"us-east", "eu-west"}
    ]

    await supercluster.faults.restore("us-east", "eu-west")
    await wait_until(lambda: ask(east, "svc.west"), 20, message="eu-west answers after restore")
    await supercluster.wait_ready(30)
    # Reconnected links went through the proxies again: gossip never exposed a real listener.
    proxy_ports = {int(a.rsplit(":", 1)[1]) for a in supercluster.faults.addresses().values()}
    assert await outbound_ports(supercluster) <= proxy_ports


@pytest.mark.integration
@pytest.mark.chaos
async def test_latency_between_two_regions_shows_in_round_trips(
    supercluster: SuperCluster, nats_connect: NatsConnect
) -> None:
    east = await nats_connect(supercluster.client_urls("us-east"))
    await responder(await nats_connect(supercluster.client_urls("eu-west")), "svc.west", b"west")
    await responder(await nats_connect(supercluster.client_urls("ap-south")), "svc.south", b"sth")
    await wait_until(lambda: ask(east, "svc.west"), 15, message="eu-west answers us-east")
    await wait_until(lambda: ask(east, "svc.south"), 15, message="ap-south answers us-east")

    await supercluster.faults.set_latency("us-east", "eu-west", 0.05)
    loop = asyncio.get_running_loop()

    async def round_trip(subject: str) -> float:
        started = loop.time()
        assert await ask(east, subject) is not None
        return loop.time() - started

    west = [await round_trip("svc.west") for _ in range(5)]
    assert min(west) >= 2 * 0.05  # request and reply each cross the delayed link once
    # Only that pair is delayed: the links the proxies relay between us-east and ap-south
    # (named from their CONNECT line, as the proxies name them to pick the delay) get none.
    for _ in range(5):
        assert await ask(east, "svc.south") == b"sth"
    faults = supercluster.faults
    delays = {
        frozenset((link.source, link.target)): faults.state.latency_s(link.source, link.target)
        for link in faults.links()
    }
    assert delays[frozenset(("us-east", "ap-south"))] == 0.0
    assert {pair for pair, delay in delays.items() if delay} == {frozenset(("us-east", "eu-west"))}

    await supercluster.faults.heal_all()
    assert await ask(east, "svc.west") == b"west"
