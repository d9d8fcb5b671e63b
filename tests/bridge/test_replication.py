"""Writes through a real bridge become events in the real events stream (docs/DESIGN.md §4, §5).

A write yields exactly one event with the right headers and a byte-identical body; failed
writes and reads yield none; a body over the limit is refused with 413 before the upstream
sees it; spoofed `Xr-*` headers reach neither the upstream nor the event; a replayed request
with a signed marker is proxied but not published (more in test_security.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from services.bridge.service import Bridge
from services.xregion.local.supercluster import SuperCluster
from shared.hlc import HlcStamp
from shared.ids import is_uuid7, uuid7_str
from shared.natsconn import NatsConnection
from shared.signing import ReplayMarker, load_signer, load_verifier, sign_replay_marker
from tests.bridge.helpers import (
    REGION,
    TcpLink,
    http_client,
    running_bridge,
    send,
    settings_for,
    stored_events,
    write_region_file,
)
from tests.bridge.upstream_app import TestUpstream
from tests.harness.keys import make_keys
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_write_yields_exactly_one_event_with_the_right_headers_and_body(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "orders"
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, bridge={"forward_headers": ["X-Tenant"]}
    )
    body = bytes(range(256)) * 40 + b"\x00\xff end"
    published_before = counter("xr_bridge_events_total", service=service, outcome="published")
    async with running_bridge(settings) as bridge, http_client() as http:
        reply = await send(
            http,
            "POST",
            bridge.url,
            f"/{service}/items/42?b=2&a=1&a=&x=%2F",
            data=body,
            headers=[
                ("Content-Type", "application/octet-stream"),
                ("Idempotency-Key", "client-key-1"),
                ("X-Tenant", "acme"),
                ("X-Tenant", "beta"),
                ("X-Not-Forwarded", "nope"),
                ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ],
        )
        assert reply.status == 200
        event_id = reply.headers["Xr-Event-Id"]
        echoed = reply.json()

    assert is_uuid7(event_id)
    events = await stored_events(js, service)
    assert len(events) == 1
    stored = events[0]
    event = stored.event
    assert stored.data == body
    assert stored.headers["Nats-Msg-Id"] == event_id
    assert event.event_id == event_id
    assert event.origin == REGION
    assert event.service == service
    assert event.method == "POST"
    assert event.path == f"/{service}/items/42?b=2&a=1&a=&x=%2F"
    assert event.key == f"/{service}/items/42"
    assert event.trace == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert event.targets is None
    assert event.sig is None
    assert dict(event.req_headers) == {
        "content-type": "application/octet-stream",
        "idempotency-key": "client-key-1",
        "x-tenant": "acme, beta",
    }
    # The upstream got the same body and the event's HLC and id.
    sent = dict((k.lower(), v) for k, v in echoed["headers"])
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert HlcStamp.parse(sent["xr-hlc"]) == event.hlc
    assert sent["xr-event-id"] == event_id
    assert (
        counter("xr_bridge_events_total", service=service, outcome="published")
        == published_before + 1
    )


async def test_failed_writes_and_reads_publish_nothing(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "quiet"
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, exclude=[f"/{service}/internal/"]
    )
    async with running_bridge(settings) as bridge, http_client() as http:
        for method, path, status in [
            ("GET", "/echo", 200),
            ("HEAD", "/echo", 200),
            ("OPTIONS", "/echo", 200),
            ("POST", "/echo?status=400", 400),
            ("PUT", "/echo?status=409", 409),
            ("DELETE", "/echo?status=500", 500),
            ("PATCH", "/status/302", 302),
            ("POST", "/internal/echo", 200),  # excluded from replication
        ]:
            reply = await send(http, method, bridge.url, f"/{service}{path}", data=b"{}")
            assert reply.status == status, (method, path)
            assert "Xr-Event-Id" not in reply.headers
        # One that does replicate, so "nothing" above is not an empty stream by accident.
        reply = await send(http, "PUT", bridge.url, f"/{service}/echo", data=b"x")
        assert reply.status == 200
    events = await stored_events(js, service)
    assert [e.event.method for e in events] == ["PUT"]


async def test_body_over_the_limit_is_refused_before_the_upstream(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "limited"
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, bridge={"max_replicated_body_bytes": 1000}
    )
    async with running_bridge(settings) as bridge, http_client() as http:
        at_limit = await send(http, "POST", bridge.url, f"/{service}/echo", data=b"a" * 1000)
        assert at_limit.status == 200
        calls_before = len(upstream.calls)

        over = await send(http, "POST", bridge.url, f"/{service}/echo", data=b"a" * 1001)
        assert over.status == 413
        assert over.json()["error"] == "body_too_large"

        async def chunked() -> Any:  # no Content-Length: the limit is found while reading
            for _ in range(20):
                yield b"b" * 100

        streamed = await send(http, "POST", bridge.url, f"/{service}/echo", data=chunked())
        assert streamed.status == 413
        assert len(upstream.calls) == calls_before  # the upstream never saw either

    assert len(await stored_events(js, service)) == 1


async def test_a_route_that_does_not_replicate_has_no_body_limit(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "bulk"
    settings = settings_for(
        tmp_path,
        bridge_cluster,
        upstream,
        service,
        replicate=[],
        bridge={"max_replicated_body_bytes": 1000},
    )
    async with running_bridge(settings) as bridge, http_client() as http:
        reply = await send(http, "POST", bridge.url, f"/{service}/echo", data=b"z" * 50_000)
        assert reply.status == 200
        assert reply.json()["body_len"] == 50_000
    assert await stored_events(js, service) == []


async def test_spoofed_xr_headers_reach_neither_upstream_nor_event(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "spoof"
    settings = settings_for(tmp_path, bridge_cluster, upstream, service)
    spoofed = [
        ("Xr-Event-Id", "01890a5d-ac96-774b-bcce-b302099a8057"),
        ("Xr-Origin", "eu-west"),
        ("Xr-Service", "other"),
        ("Xr-Hlc", "999999999999999-000000"),
        ("Xr-Key", "/stolen"),
        # Not Xr-Targets: a service that does not allow it refuses the write (test_security).
        ("Xr-Sig", "k:forged"),
        ("Xr-Req-Authorization", "Bearer stolen"),
        ("XR-TRACE", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("Nats-Msg-Id", "forced-id"),
    ]
    async with running_bridge(settings) as bridge, http_client() as http:
        read = await send(http, "GET", bridge.url, f"/{service}/echo", headers=spoofed)
        assert read.status == 200
        write = await send(http, "POST", bridge.url, f"/{service}/echo", headers=spoofed, data=b"v")
        assert write.status == 200
        event_id = write.headers["Xr-Event-Id"]

    read_call, write_call = upstream.calls[-2:]
    assert not {n for n in read_call.header_names() if n.startswith("xr-")}
    assert {n for n in write_call.header_names() if n.startswith("xr-")} == {
        "xr-hlc",
        "xr-event-id",
    }
    assert write_call.header("Xr-Event-Id") == event_id
    assert write_call.header("Xr-Hlc") != "999999999999999-000000"

    [stored] = await stored_events(js, service)
    event = stored.event
    assert event.event_id == event_id != "01890a5d-ac96-774b-bcce-b302099a8057"
    assert stored.headers["Nats-Msg-Id"] == event_id
    assert (event.origin, event.service, event.key) == (REGION, service, f"/{service}/echo")
    assert event.targets is None
    assert event.sig is None
    assert event.trace != "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert str(event.hlc) != "999999999999999-000000"
    assert not any(name.startswith("xr-") for name, _ in event.req_headers)


async def test_request_targets_only_where_the_service_allows_them(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "targeted"
    settings = settings_for(
        tmp_path,
        bridge_cluster,
        upstream,
        service,
        targets=["eu-west", "ap-south"],
        allow_request_targets=True,
        key=r"^/targeted/(?P<key>[^/]+)",
    )
    async with running_bridge(settings) as bridge, http_client() as http:
        narrowed = await send(
            http,
            "POST",
            bridge.url,
            f"/{service}/cart-7/lines",
            headers={"Xr-Targets": "eu-west"},
            data=b"1",
        )
        assert narrowed.status == 200
        widened = await send(
            http,
            "POST",
            bridge.url,
            f"/{service}/cart-7/lines",
            headers={"Xr-Targets": "us-west"},
            data=b"2",
        )
        assert widened.status == 400
        assert widened.json()["error"] == "not_replicable"
    [stored] = await stored_events(js, service)
    assert stored.event.targets == ("eu-west",)
    assert stored.event.key == "cart-7"


async def test_bridge_registers_with_the_nats_services_api(
    bridge_cluster: SuperCluster, upstream: TestUpstream, reader: NatsConnection, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path, bridge_cluster, upstream, "registered")
    async with running_bridge(settings) as bridge:
        reply = await reader.nc.request("$SRV.INFO.xr-bridge", b"", timeout=5)
        info = json.loads(reply.data)
        assert info["name"] == "xr-bridge"
        assert info["metadata"]["region"] == REGION
        assert info["metadata"]["url"] == bridge.url
        assert isinstance(bridge, Bridge)


async def test_expect_100_continue_on_a_replicated_write(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "expecting"
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, bridge={"max_replicated_body_bytes": 100}
    )
    async with running_bridge(settings) as bridge, http_client() as http:
        fits = await send(
            http, "POST", bridge.url, f"/{service}/echo", data=b"a" * 100, expect100=True
        )
        too_big = await send(
            http, "POST", bridge.url, f"/{service}/echo", data=b"a" * 101, expect100=True
        )
    assert fits.status == 200
    assert too_big.status == 413
    assert [e.data for e in await stored_events(js, service)] == [b"a" * 100]


async def test_a_write_that_cannot_be_stored_anywhere_is_not_silent(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    """NATS unreachable and the outbox full: the upstream applied the write, the client gets
    503 naming the event, and readiness goes red."""
    service = "unstorable"
    async with TcpLink(bridge_cluster.client_urls(REGION)[0]) as link:
        settings = write_region_file(
            tmp_path / "region.toml",
            nats_urls=[link.url],
            data_dir=tmp_path / "data",
            services={service: {"upstream": upstream.url, "routes": [f"/{service}"]}},
            bridge={"outbox_max_bytes": 1500, "publish_timeout_s": 0.5},
        )
        async with running_bridge(settings) as bridge, http_client() as http:
            link.cut()
            spooled = await send(http, "PUT", bridge.url, f"/{service}/echo", data=b"s" * 500)
            failed = await send(http, "PUT", bridge.url, f"/{service}/echo", data=b"f" * 1000)
            ready = await send(http, "GET", bridge.admin_url, "/readyz")
            link.restore()
            await wait_until(lambda: bridge.outbox.depth == 0, 30, message="outbox drained")
    assert spooled.status == 200
    assert failed.status == 503
    assert failed.json()["error"] == "event_not_stored"
    assert ready.status == 503
    assert ready.json()["checks"]["nats"]["status"] == "degraded"
    assert ready.json()["checks"]["outbox"]["status"] == "down"
    assert [e.data for e in await stored_events(js, service)] == [b"s" * 500]


async def test_with_signing_on_events_are_signed_and_only_signed_markers_count(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "signed"
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, signing=make_keys(tmp_path)
    )
    signer, verifier = load_signer(settings.signing), load_verifier(settings.signing)
    assert signer is not None
    assert verifier is not None
    replayed_id = uuid7_str()
    path = f"/{service}/echo"

    def marker(sig: str) -> list[tuple[str, str]]:
        return [
            ("Xr-Replayed-From", "eu-west"),
            ("Xr-Event-Id", replayed_id),
            ("Xr-Hlc", "001700000000000-000001"),
            ("Xr-Replayed-Sig", sig),
        ]

    signed = ReplayMarker("eu-west", replayed_id, "001700000000000-000001", "PUT", path, b"r")
    good = sign_replay_marker(signer, signed, expires_at=int(time.time()) + 60)
    async with running_bridge(settings) as bridge, http_client() as http:
        write = await send(http, "PUT", bridge.url, path, data=b"w")
        replay = await send(http, "PUT", bridge.url, path, headers=marker(good), data=b"r")
        replay_call = upstream.calls[-1]
        # The same signature on another body does not hold: refused, the service not called.
        forged = await send(http, "PUT", bridge.url, path, headers=marker(good), data=b"x")
        last_call = upstream.calls[-1]
    assert (write.status, replay.status, forged.status) == (200, 200, 400)
    assert forged.json()["error"] == "bad_replay_marker"
    assert "Xr-Event-Id" not in replay.headers
    assert replay_call.header("Xr-Event-Id") == replayed_id
    assert last_call is replay_call
    events = await stored_events(js, service)
    assert [e.event.event_id for e in events] == [write.headers["Xr-Event-Id"]]
    for stored in events:
        assert verifier.verify(stored.event) == "us-east-1"


async def test_headers_no_event_can_carry_are_refused_before_the_upstream_sees_them(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    # Over the header budget in all, or bytes that are not UTF-8: every replayer would
    # dead-letter such an event as malformed, after this region's service had applied it.
    service = "unreplicable"
    forwarded = ["X-A", "X-B", "X-C"]
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, bridge={"forward_headers": forwarded}
    )
    calls = len(upstream.calls)
    async with running_bridge(settings) as bridge, http_client() as http:
        # Each header is under the HTTP parser's 8 KiB limit; together they are over 16 KiB.
        many = {name: "v" * 6000 for name in forwarded}
        huge = await send(http, "PUT", bridge.url, f"/{service}/a", headers=many, data=b"v")
        raw = await _raw_put(bridge.url, f"/{service}/b", b"X-A: caf\xe9")
        # U+FFFD is what a replayer's NATS client makes of bytes that are not UTF-8.
        stand_in = await send(http, "PUT", bridge.url, f"/{service}/d", headers={"X-A": "\ufffd"})
        fine = await send(http, "PUT", bridge.url, f"/{service}/c", headers={"X-A": "cafe"})
    assert huge.status == 400
    assert huge.json()["error"] == "not_replicable"
    assert "over 16384" in huge.json()["detail"]
    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert b'"not_replicable"' in raw
    assert stand_in.status == 400
    assert stand_in.json()["detail"] == "Xr-Req-X-A: not valid UTF-8"
    assert fine.status == 200
    assert len(upstream.calls) == calls + 1, "only the replicable write reached the upstream"
    [stored] = await stored_events(js, service)
    assert stored.event.key == f"/{service}/c"


async def _raw_put(base: str, path: str, header: bytes) -> bytes:
    """A PUT with one header line sent byte for byte (an HTTP client would encode it); the
    whole answer."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"PUT " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + header
            + b"\r\nContent-Length: 1\r\nConnection: close\r\n\r\nv"
        )  # fmt: skip
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
