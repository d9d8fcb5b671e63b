"""TCP fault proxy for NATS gateway links: cut, restore and delay traffic between clusters.

Design (why a gateway link cannot go around it)
------------------------------------------------
One `GatewayProxy` sits in front of *each server's* gateway listener. The server is rendered
with `gateway { advertise: <proxy address> }`, and every other server's config lists that
proxy address as the server's gateway URL. nats-server learns gateway URLs only from (a) its
config and (b) gossip: the INFO a gateway sends carries `gateway_urls`, built from each server's
own gateway URL, which *is its advertise address* when one is set (server/gateway.go
`setGatewayInfoHostPort`; routes gossip the same value, route.go `GatewayURL:
s.getGatewayURL()`). So no real gateway listener address is ever configured or gossiped, and
every gateway connection in the super-cluster, including reconnects and implicit gateways,
enters through a proxy.

Each proxied connection is outbound from a server of cluster S (the *source*) into the server of
cluster T behind the proxy (the *target*). The accepting server speaks first (INFO), so bytes
from the server are forwarded at once; the first line the connecting server sends is
`CONNECT {json}` whose `"gateway"` field names S. The proxy reads that one line, records S and
only then forwards it. A NATS gateway link between clusters A and B is two TCP connections (A's
outbound into B, B's outbound into A), and both directions of each carry protocol traffic, so:

* `cut(a, b)` aborts every connection with {source, target} == {a, b} and aborts new ones right
  after their CONNECT line (before it reaches the server). The target's INFO has already
  been relayed by then (the proxy cannot know the source earlier), so the dialling server
  registers its outbound gateway for about a millisecond before it sees the close; nothing
  crosses in that window (the target never got CONNECT, so no interest was exchanged). The
  servers retry about once a second, and a `restore` takes effect at the next retry;
* `set_latency(a, b, s)` delays every chunk on those connections, in both directions, by `s`:
  each message crosses exactly one proxy, so `s` is the one-way delay and a request/reply round
  trip A -> B -> A takes at least `2 * s`. Chunks are stamped with their due time and written
  in order by a separate writer, so order and throughput are kept.

Limits: the CONNECT line is only readable without gateway TLS; with TLS on gateway links the
source is unknown and the proxy forwards untouched (`SuperCluster` refuses that combination).

Errors: `UnknownClusterError` (a `ValueError`) for a cluster name the injector does not know.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

__all__ = [
    "FaultInjector",
    "GatewayProxy",
    "LinkFaults",
    "ProxiedLink",
    "UnknownClusterError",
    "gateway_name_from_connect",
]

_CHUNK = 64 * 1024
# Bounded in-flight buffer per direction: 1024 chunks, at most 64 MiB.
_QUEUE_CHUNKS = 1024
_SNIFF_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 5.0

_Item = tuple[float, bytes] | None


class UnknownClusterError(ValueError):
    """A cluster name that is not part of the super-cluster behind the proxies."""


def gateway_name_from_connect(line: bytes) -> str | None:
    """The `gateway` name in a NATS `CONNECT {json}` protocol line, or None (not a gateway)."""
    op, _, payload = line.strip().partition(b" ")
    if op.upper() != b"CONNECT":
        return None
    try:
        info = json.loads(payload)
    except ValueError:
        return None
    name = info.get("gateway") if isinstance(info, dict) else None
    return name if isinstance(name, str) and name else None


def _pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


class LinkFaults:
    """Which cluster pairs are cut and how much one-way latency each pair has. Pure state."""

    def __init__(self) -> None:
        self._cut: set[frozenset[str]] = set()
        self._latency: dict[frozenset[str], float] = {}

    def is_cut(self, a: str | None, b: str) -> bool:
        return a is not None and _pair(a, b) in self._cut

    def latency_s(self, a: str | None, b: str) -> float:
        return 0.0 if a is None else self._latency.get(_pair(a, b), 0.0)

    def cut(self, a: str, b: str) -> None:
        self._cut.add(_pair(a, b))

    def restore(self, a: str, b: str) -> None:
        self._cut.discard(_pair(a, b))

    def set_latency(self, a: str, b: str, one_way_s: float) -> None:
        if one_way_s < 0:
            raise ValueError(f"latency must be >= 0, got {one_way_s}")
        if one_way_s == 0:
            self._latency.pop(_pair(a, b), None)
        else:
            self._latency[_pair(a, b)] = one_way_s

    def heal_all(self) -> None:
        self._cut.clear()
        self._latency.clear()


@dataclass(frozen=True)
class ProxiedLink:
    """A live connection through a proxy: `source` cluster dialled `server` of `target`."""

    source: str | None
    target: str
    server: str


@dataclass(eq=False)
class _Conn:
    """One relayed connection; `task` (owned by the proxy) does all of its work."""

    target: str
    server: str
    transports: list[asyncio.WriteTransport]
    task: asyncio.Task[None] | None = None
    source: str | None = None

    def abort(self) -> None:
        for transport in self.transports:
            transport.abort()
        if self.task is not None:
            self.task.cancel()


class GatewayProxy:
    """A TCP proxy in front of one server's gateway listener (an async context manager)."""

    def __init__(
        self,
        *,
        server: str,
        cluster: str,
        upstream: tuple[str, int],
        faults: LinkFaults,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.server = server
        self.cluster = cluster
        self.upstream = upstream
        self._faults = faults
        self._listen = listen
        self._srv: asyncio.Server | None = None
        self._conns: set[_Conn] = set()

    async def start(self) -> None:
        if self._srv is None:
            self._srv = await asyncio.start_server(self._handle, *self._listen)

    @property
    def address(self) -> tuple[str, int]:
        if self._srv is None:
            raise RuntimeError(f"proxy for {self.server} is not started")
        host, port = self._srv.sockets[0].getsockname()[:2]
        return str(host), int(port)

    @property
    def advertise(self) -> str:
        """`host:port` to render as the server's gateway advertise address."""
        host, port = self.address
        return f"{host}:{port}"

    def links(self) -> list[ProxiedLink]:
        return [ProxiedLink(c.source, c.target, c.server) for c in self._conns]

    async def drop(self, a: str, b: str) -> int:
        """Abort every connection between clusters a and b; return how many."""
        doomed = [
            c
            for c in self._conns
            if c.source is not None and _pair(c.source, c.target) == _pair(a, b)
        ]
        for conn in doomed:
            conn.abort()
        await _wait_all(c.task for c in doomed if c.task is not None)
        return len(doomed)

    async def aclose(self) -> None:
        if self._srv is not None:
            self._srv.close()
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        await _wait_all(c.task for c in conns if c.task is not None)
        if self._srv is not None:
            await self._srv.wait_closed()
            self._srv = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio owns this handler task; the work runs in a task the proxy owns, so `cut`
        # cancels that one and the handler always ends normally.
        conn = _Conn(self.cluster, self.server, [writer.transport])
        conn.task = asyncio.create_task(self._serve(conn, reader, writer))
        self._conns.add(conn)
        try:
            await asyncio.wait((conn.task,))
        finally:
            self._conns.discard(conn)
            conn.abort()
        if not conn.task.cancelled() and (exc := conn.task.exception()) is not None:
            raise exc

    async def _serve(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), _CONNECT_TIMEOUT_S
            )
            conn.transports.append(up_writer.transport)
            await self._relay(conn, (reader, writer), (up_reader, up_writer))
        except (OSError, TimeoutError):
            pass  # upstream down or slow: the dialling server sees a closed connection
        finally:
            for transport in conn.transports:
                transport.abort()

    async def _relay(
        self,
        conn: _Conn,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        down = asyncio.create_task(self._direction(conn, upstream[0], client[1]))
        sniff = asyncio.create_task(_sniff(client[0]))
        tasks: list[asyncio.Task[Any]] = [down, sniff]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if not sniff.done():
                return  # the server hung up before the dialling side said who it is
            first = sniff.result()
            conn.source = gateway_name_from_connect(first)
            if self._faults.is_cut(conn.source, conn.target):
                return
            upstream[1].write(first)
            up = asyncio.create_task(self._direction(conn, client[0], upstream[1]))
            tasks.append(up)
            await asyncio.wait((down, up), return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_all(tasks)

    async def _direction(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        read = asyncio.create_task(self._read_into(conn, reader, queue))
        write = asyncio.create_task(_write_from(queue, writer))
        try:
            await asyncio.wait((read, write), return_when=asyncio.FIRST_COMPLETED)
            if read.done():
                # EOF from the reader: let the writer deliver what is still queued, on time.
                await asyncio.wait((write,))
        finally:
            await _cancel_all((read, write))

    async def _read_into(
        self, conn: _Conn, reader: asyncio.StreamReader, queue: asyncio.Queue[_Item]
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK):
                delay = self._faults.latency_s(conn.source, conn.target)
                await queue.put((loop.time() + delay, data))
        except OSError:
            pass  # connection reset: same as EOF
        await queue.put(None)


async def _sniff(reader: asyncio.StreamReader) -> bytes:
    """The first protocol line the dialling side sends (its CONNECT), CRLF included."""
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n"), _SNIFF_TIMEOUT_S)
    except asyncio.LimitOverrunError:
        # Not a NATS text protocol line (e.g. a TLS handshake): pass it through unread.
        return await reader.read(_CHUNK)
    except asyncio.IncompleteReadError as exc:
        return exc.partial


async def _write_from(queue: asyncio.Queue[_Item], writer: asyncio.StreamWriter) -> None:
    loop = asyncio.get_running_loop()
    while (item := await queue.get()) is not None:
        due, data = item
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        if writer.is_closing():  # the other side went away while the data waited
            return
        writer.write(data)
        try:
            await writer.drain()
        except OSError:
            return


async def _cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    await _wait_all(pending)


async def _wait_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    todo = [t for t in tasks if t is not asyncio.current_task()]
    if todo:
        await asyncio.wait(todo)


class FaultInjector:
    """Cluster-level faults over a set of gateway proxies (`SuperCluster.faults`)."""

    def __init__(self, clusters: Iterable[str], proxies: Iterable[GatewayProxy] = ()) -> None:
        self._clusters = tuple(clusters)
        self._proxies: list[GatewayProxy] = list(proxies)
        self.state = LinkFaults()

    def add(self, proxy: GatewayProxy) -> None:
        self._check(proxy.cluster)
        self._proxies.append(proxy)

    def addresses(self) -> dict[str, str]:
        """Server name -> `host:port` of the proxy in front of its gateway listener."""
        return {p.server: p.advertise for p in self._proxies}

    def links(self) -> list[ProxiedLink]:
        """Every connection currently relayed by the proxies."""
        return [link for p in self._proxies for link in p.links()]

    async def cut(self, a: str, b: str) -> None:
        """Partition clusters a and b: drop their gateway connections, refuse new ones."""
        self._check(a, b)
        self.state.cut(a, b)
        for proxy in self._proxies:
            await proxy.drop(a, b)

    async def restore(self, a: str, b: str) -> None:
        """Let a and b reconnect (the servers retry on their own, about once a second)."""
        self._check(a, b)
        self.state.restore(a, b)

    async def set_latency(self, a: str, b: str, seconds: float) -> None:
        """One-way delay for traffic between a and b (both directions); 0 removes it."""
        self._check(a, b)
        self.state.set_latency(a, b, seconds)

    async def heal_all(self) -> None:
        """Remove every cut and every latency."""
        self.state.heal_all()

    def _check(self, *names: str) -> None:
        for name in names:
            if name not in self._clusters:
                raise UnknownClusterError(
                    f"unknown cluster {name!r}; known: {', '.join(self._clusters)}"
                )
