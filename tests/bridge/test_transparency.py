"""The bridge is a transparent proxy: the same request sent directly to the upstream and
through the bridge gets the same answer, and the upstream sees the same request (plus
`X-Forwarded-*`, minus hop-by-hop headers). Real aiohttp upstream, real bridge, real NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import json
import resource
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from services.bridge.service import Bridge
from services.xregion.local.supercluster import SuperCluster, free_ports
from tests.bridge.helpers import (
    REGION,
    http_client,
    raw_url,
    running_bridge,
    send,
    write_region_file,
)
from tests.bridge.upstream_app import GZIP_TEXT, TestUpstream, pattern
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Headers that legitimately differ between two answers, or between a hop and the next.
_VOLATILE = {"date", "connection", "keep-alive", "transfer-encoding"}


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def ask(
    http: aiohttp.ClientSession,
    base: str,
    method: str,
    path_qs: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
) -> Answer:
    async with http.request(
        method, raw_url(base, path_qs), headers=list(headers), data=body, allow_redirects=False
    ) as reply:
        data = await reply.read()
        kept = tuple((k, v) for k, v in reply.headers.items() if k.lower() not in _VOLATILE)
        return Answer(reply.status, kept, data)


def received(answer: Answer) -> list[tuple[str, str]]:
    """The headers the upstream saw (from its echo), without the forwarding ones."""
    return [(k, v) for k, v in answer.json()["headers"] if not k.lower().startswith("x-forwarded-")]


@contextlib.asynccontextmanager
async def mirror_bridge(
    cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path, **bridge: Any
) -> AsyncIterator[Bridge]:
    """A bridge with service `mirror` (no replication) at /mirror, and `gone` whose upstream
    refuses connections."""
    [dead_port] = free_ports(1)
    settings = write_region_file(
        tmp_path / "region.toml",
        nats_urls=cluster.client_urls(REGION),
        data_dir=tmp_path / "data",
        services={
            "mirror": {"upstream": upstream.url, "routes": ["/mirror"], "replicate": []},
            "gone": {"upstream": f"http://127.0.0.1:{dead_port}", "routes": ["/gone"]},
        },
        bridge=bridge,
    )
    async with running_bridge(settings) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def mirror(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> AsyncIterator[Bridge]:
    """The mirror bridge with a short upstream read timeout, so that /mirror/hang answers 504."""
    async with mirror_bridge(
        bridge_cluster, upstream, tmp_path, upstream_read_timeout_s=0.5
    ) as bridge:
        yield bridge


@pytest_asyncio.fixture(loop_scope="session")
async def patient_mirror(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> AsyncIterator[Bridge]:
    """The mirror bridge with the default upstream read timeout: under thousands of
    connections on a slow machine an answer may take longer than the short one."""
    async with mirror_bridge(bridge_cluster, upstream, tmp_path) as bridge:
        yield bridge


CASES: list[tuple[str, str, list[tuple[str, str]], bytes | None]] = [
    ("GET", "/mirror/echo", [], None),
    ("GET", "/mirror/echo?b=2&a=1&a=2&a=&empty=&=v&flag&plus=a+b&sp=a%20b", [], None),
    ("GET", "/mirror/a%2Fb/%7e%7E/%zz/%E2%9C%93/echo?q=%E2%9C%93&x=%2B%26%3D", [], None),
    ("GET", "/mirror/./echo/../echo;param=1", [], None),
    ("HEAD", "/mirror/echo", [], None),
    ("POST", "/mirror/echo", [("Content-Type", "text/plain")], b"hello"),
    ("PUT", "/mirror/echo?x=1", [("Content-Type", "application/json")], b'{"v": 1}'),
    ("PATCH", "/mirror/echo", [], b"\x00\x01\x02 binary \xff"),
    ("DELETE", "/mirror/echo", [], None),
    ("OPTIONS", "/mirror/echo", [], None),
    ("PURGE", "/mirror/echo", [], None),
    ("GET", "/mirror/echo", [("X-Multi", "a"), ("X-Multi", "b"), ("x-CaSe", "Kept")], None),
    ("GET", "/mirror/echo?cookies=1", [], None),
    ("GET", "/mirror/echo?status=418", [], None),
    ("POST", "/mirror/echo?status=201", [], b"created"),
    ("GET", "/mirror/status/204", [], None),
    ("GET", "/mirror/status/304", [], None),
    ("GET", "/mirror/status/301", [], None),
    ("GET", "/mirror/status/302", [], None),
    ("GET", "/mirror/status/404", [], None),
    ("GET", "/mirror/status/500", [], None),
    ("GET", "/mirror/status/503", [], None),
    ("GET", "/mirror/gzip", [("Accept-Encoding", "gzip")], None),
    (
        "POST",
        "/mirror/echo",
        [("Content-Encoding", "gzip"), ("Content-Type", "text/plain")],
        gzip.compress(b"compressed request " * 100, mtime=0),
    ),
    ("GET", "/mirror/big?bytes=300000&cl=1", [], None),
    ("HEAD", "/mirror/big?bytes=300000&cl=1", [], None),
]


@pytest.mark.parametrize(("method", "path_qs", "headers", "body"), CASES)
async def test_direct_and_proxied_answers_are_the_same(
    mirror: Bridge,
    upstream: TestUpstream,
    method: str,
    path_qs: str,
    headers: list[tuple[str, str]],
    body: bytes | None,
) -> None:
    async with http_client() as http:
        direct = await ask(http, upstream.url, method, path_qs, headers, body)
        proxied = await ask(http, mirror.url, method, path_qs, headers, body)
    assert proxied.status == direct.status
    if method == "HEAD" and path_qs.endswith("/echo"):
        # The echo it would send names the X-Forwarded-* headers, so only its length differs.
        assert without_length(proxied.headers) == without_length(direct.headers)
        assert proxied.body == direct.body == b""
        return
    if not is_echo(direct):
        assert proxied.headers == direct.headers
        assert proxied.body == direct.body
        return
    # An echo differs only by the X-Forwarded-* headers the upstream saw (and so its length).
    assert without_length(proxied.headers) == without_length(direct.headers)
    assert proxied.json()["raw_path"] == direct.json()["raw_path"] == path_qs
    assert received(proxied) == received(direct)
    assert proxied.json()["body_sha256"] == direct.json()["body_sha256"]


def is_echo(answer: Answer) -> bool:
    return answer.body.startswith(b"{") and "raw_path" in answer.json()


def without_length(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in headers if k.lower() != "content-length")


async def test_compressed_bodies_pass_as_bytes(mirror: Bridge, upstream: TestUpstream) -> None:
    async with http_client() as http:
        proxied = await ask(http, mirror.url, "GET", "/mirror/gzip")
        assert dict(proxied.headers)["Content-Encoding"] == "gzip"
        assert gzip.decompress(proxied.body) == GZIP_TEXT
        packed = gzip.compress(b"z" * 5000, mtime=0)
        sent = await ask(
            http, mirror.url, "POST", "/mirror/echo", [("Content-Encoding", "gzip")], packed
        )
    assert sent.json()["body_sha256"] == hashlib.sha256(packed).hexdigest()


async def test_hop_by_hop_headers_are_dropped_and_forwarding_headers_appended(
    mirror: Bridge, upstream: TestUpstream
) -> None:
    headers = [
        ("Connection", "keep-alive, X-Drop-Me"),
        ("X-Drop-Me", "1"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-Later"),
        ("Proxy-Authorization", "Basic c2VjcmV0"),
        ("Proxy-Connection", "keep-alive"),
        ("X-Forwarded-For", "203.0.113.9"),
        ("X-Forwarded-Proto", "https"),
        ("Host", "shop.example.com"),
        ("X-Kept", "yes"),
    ]
    async with http_client() as http:
        answer = await ask(http, mirror.url, "GET", "/mirror/echo", headers)
    seen = {k.lower(): v for k, v in answer.json()["headers"]}
    for dropped in ("x-drop-me", "keep-alive", "te", "trailer", "proxy-authorization"):
        assert dropped not in seen
    assert "proxy-connection" not in seen
    assert seen["x-kept"] == "yes"
    assert seen["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https, http"
    assert seen["x-forwarded-host"] == "shop.example.com"
    assert seen["host"] == upstream.url.removeprefix("http://")


async def test_streamed_response_is_not_buffered(mirror: Bridge, upstream: TestUpstream) -> None:
    async with http_client() as http, http.get(raw_url(mirror.url, "/mirror/held")) as reply:
        # The upstream has not finished: it waits for release_held().
        first = await asyncio.wait_for(reply.content.readline(), 10)
        assert first == b"first chunk\n"
        upstream.release_held()
        assert await reply.read() == b"the rest\n"


@pytest.mark.parametrize("with_length", [False, True])
async def test_ten_megabyte_download(
    mirror: Bridge, upstream: TestUpstream, with_length: bool
) -> None:
    size = 10 * 1024 * 1024
    path = f"/mirror/big?bytes={size}" + ("&cl=1" if with_length else "")
    digest = hashlib.sha256()
    received_bytes = 0
    async with http_client() as http, http.get(raw_url(mirror.url, path)) as reply:
        assert reply.status == 200
        assert (reply.headers.get("Content-Length") is not None) is with_length
        async for chunk in reply.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            received_bytes += len(chunk)
    assert received_bytes == size
    assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()


async def test_large_download_is_relayed_at_constant_memory(
    mirror: Bridge, upstream: TestUpstream
) -> None:
    """64 MiB through the bridge to a client that stops reading for a while: the bridge (in
    this process) never holds more than a few MiB of it; backpressure stops the upstream."""
    size = 64 * 1024 * 1024
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        url = raw_url(mirror.url, f"/mirror/big?bytes={size}")
        async with http_client() as http, http.get(url) as reply:
            baseline = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            digest.update(await reply.content.readexactly(64 * 1024))
            # The client pauses: give the upstream a second to push what it can.
            with contextlib.suppress(TimeoutError):
                await wait_until(lambda: upstream.big_sent >= size, 1)
            async for chunk in reply.content.iter_chunked(256 * 1024):
                digest.update(chunk)
            peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert upstream.big_sent == size
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes"
    assert digest.hexdigest() == hashlib.sha256(pattern(size)).hexdigest()


async def test_upstream_dying_mid_response_is_seen_by_the_client(
    mirror: Bridge, upstream: TestUpstream
) -> None:
    async with http_client() as http:
        for base in (upstream.url, mirror.url):
            async with http.get(raw_url(base, "/mirror/die")) as reply:
                assert reply.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await reply.read()


async def test_bridge_errors_are_short_json(mirror: Bridge) -> None:
    async with http_client() as http:
        no_route = await ask(http, mirror.url, "GET", "/nowhere/x")
        refused = await ask(http, mirror.url, "GET", "/gone/x")
        timeout = await ask(http, mirror.url, "GET", "/mirror/hang")
    assert (no_route.status, no_route.json()["error"]) == (404, "no_route")
    assert (refused.status, refused.json()["error"]) == (502, "upstream_unavailable")
    assert (timeout.status, timeout.json()["error"]) == (504, "upstream_timeout")
    for answer in (no_route, refused, timeout):
        assert dict(answer.headers)["Content-Type"].startswith("application/json")
        assert len(answer.body) < 300


async def test_routes_by_longest_prefix_and_by_host(
    bridge_cluster: SuperCluster, tmp_path: Path
) -> None:
    async with TestUpstream() as a, TestUpstream() as b, TestUpstream() as c:
        settings = write_region_file(
            tmp_path / "region.toml",
            nats_urls=bridge_cluster.client_urls(REGION),
            data_dir=tmp_path / "data",
            services={
                "alpha": {"upstream": a.url, "routes": ["/shop"], "replicate": []},
                "beta": {"upstream": b.url, "routes": ["/shop/cart"], "replicate": []},
                "gamma": {
                    "upstream": c.url,
                    "routes": ["host:api.example.com"],
                    "replicate": [],
                },
            },
        )
        async with running_bridge(settings) as bridge, http_client() as http:
            for path, host in [
                ("/shop/items", None),
                ("/shop/cart/1", None),
                ("/shop/cartography", None),
                ("/shop/cart", "API.example.com:8080"),
            ]:
                headers = [("Host", host)] if host else []
                assert (await ask(http, bridge.url, "GET", path, headers)).status == 200
    assert [call.raw_path for call in a.calls] == ["/shop/items", "/shop/cartography"]
    assert [call.raw_path for call in b.calls] == ["/shop/cart/1"]
    assert [call.raw_path for call in c.calls] == ["/shop/cart"]


async def test_upstream_connections_are_pooled(mirror: Bridge, upstream: TestUpstream) -> None:
    async with http_client() as http:
        for _ in range(20):
            assert (await ask(http, mirror.url, "GET", "/mirror/echo")).status == 200
    peers = {call.peer for call in upstream.calls[-20:]}
    assert len(peers) == 1  # sequential requests reuse one kept-alive connection


async def test_many_concurrent_connections(patient_mirror: Bridge) -> None:
    # Client, bridge and upstream share this process: about four descriptors per request.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 9000 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (9000, hard))
    connections = min(2000, (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 500) // 4)
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> int:
            async with http.get(raw_url(patient_mirror.url, f"/mirror/echo?i={i}")) as reply:
                await reply.read()
                return reply.status

        statuses = await asyncio.gather(*(one(i) for i in range(connections)))
    assert Counter(statuses) == {200: connections}


async def test_readiness_and_metrics_on_the_admin_port(mirror: Bridge) -> None:
    async with http_client() as http:
        await ask(http, mirror.url, "GET", "/mirror/echo")
        ready = await ask(http, mirror.admin_url, "GET", "/readyz")
        metrics = await ask(http, mirror.admin_url, "GET", "/metrics")
    assert ready.status == 200
    assert ready.json()["status"] == "ok"
    text = metrics.body.decode()
    assert 'xr_bridge_requests_total{code="200",method="GET",service="mirror"}' in text
    assert "xr_bridge_request_duration_seconds_bucket" in text
    assert "xr_bridge_outbox_depth 0.0" in text


async def test_expect_100_continue_is_answered(mirror: Bridge) -> None:
    async with http_client() as http:
        reply = await send(
            http, "PUT", mirror.url, "/mirror/echo", data=b"after continue", expect100=True
        )
    assert reply.status == 200
    assert reply.json()["body_len"] == len(b"after continue")


async def test_too_many_requests_in_flight_get_503(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    settings = write_region_file(
        tmp_path / "region.toml",
        nats_urls=bridge_cluster.client_urls(REGION),
        data_dir=tmp_path / "data",
        services={"mirror": {"upstream": upstream.url, "routes": ["/mirror"], "replicate": []}},
        bridge={"max_concurrent_requests": 1},
    )
    async with running_bridge(settings) as bridge, http_client() as http:
        async with asyncio.TaskGroup() as tasks:
            held = tasks.create_task(send(http, "GET", bridge.url, "/mirror/gated"))
            await wait_until(lambda: any("gated" in c.raw_path for c in upstream.calls), 10)
            refused = await send(http, "GET", bridge.url, "/mirror/echo")
            upstream.open_gate()
        assert held.result().status == 200
        assert refused.status == 503
        assert refused.json()["error"] == "overloaded"
