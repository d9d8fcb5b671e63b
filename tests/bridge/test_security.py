"""What a hostile client cannot make a real bridge do, against real NATS and a
real aiohttp upstream.

* Replay markers: with signing off none is trusted; with signing on only a signature over
  the forwarded `Xr-*` headers (HLC included), the request and an expiry is, and only those
  headers go upstream.
* `Xr-Targets` where the service does not allow it is refused, not dropped.
* Only origin-form request targets reach an upstream, whose URL is built from parts.
* No secret in output: `--check-config`, 502/504 answers, request logs; forwarding
  credential headers is warned about.
* Buffered bodies share one byte budget (503 beyond it) and have a read deadline (408).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import socket
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.replayer.service import Replayer
from services.xregion.local.supercluster import SuperCluster
from shared.envelope import Event, encode, new_traceparent
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.regions import replay_subject
from shared.settings import ServiceSettings, Settings, SigningSettings
from shared.signing import ReplayMarker, load_signer, sign_replay_marker
from tests.bridge.helpers import (
    REGION,
    REGIONS,
    XREGION,
    http_client,
    running_bridge,
    send,
    settings_for,
    stored_events,
    write_region_file,
)
from tests.bridge.upstream_app import Call, TestUpstream
from tests.harness.keys import make_keys
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FAR_FUTURE = "999999999999999-000000"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def calls_to(upstream: TestUpstream, service: str) -> list[Call]:
    return [c for c in upstream.calls if c.raw_path.startswith(f"/{service}/")]


def xr_headers(call: Call) -> dict[str, str]:
    return {k.lower(): v for k, v in call.headers if k.lower().startswith("xr-")}


# ------------------------------------------------------------------ item 2: replay markers


async def test_with_signing_off_no_replay_marker_is_trusted(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    """A client's marker with a far-future `Xr-Hlc` would pin the key's version for good."""
    service = "marker-off"
    settings = settings_for(tmp_path, bridge_cluster, upstream, service)
    refused_before = sample("xr_bridge_replay_markers_refused_total", reason="signing_off")
    marker = {"Xr-Replayed-From": "eu-west", "Xr-Event-Id": uuid7_str(), "Xr-Hlc": FAR_FUTURE}
    async with running_bridge(settings) as bridge, http_client() as http:
        pinned = await send(http, "PUT", bridge.url, f"/{service}/k", headers=marker, data=b"p")
        write = await send(http, "PUT", bridge.url, f"/{service}/k", data=b"w")
    assert pinned.status == 400
    assert pinned.json()["error"] == "bad_replay_marker"
    assert "signing is off" in pinned.json()["detail"]
    assert write.status == 200  # the bridge goes on serving
    [call] = calls_to(upstream, service)  # the refused request never reached the service
    assert call.body == b"w"
    assert call.header("Xr-Replayed-From") is None
    assert call.header("Xr-Hlc") != FAR_FUTURE
    assert [e.data for e in await stored_events(js, service)] == [b"w"]  # nothing lost
    after = sample("xr_bridge_replay_markers_refused_total", reason="signing_off")
    assert after == refused_before + 1


async def test_a_marker_signature_that_leaves_out_the_hlc_is_refused(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    """A valid signature over origin, event id, method, path and body only (no HLC, no
    expiry) let anyone holding one such request send it again with any `Xr-Hlc`."""
    service = "marker-nohlc"
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, signing=make_keys(tmp_path)
    )
    signer = load_signer(settings.signing)
    assert signer is not None
    event_id, path = uuid7_str(), f"/{service}/k"
    without_hlc = (
        f"replay-of={event_id}\norigin=eu-west\nmethod=PUT\npath={path}\n"
        f"body-sha256={hashlib.sha256(b'r').hexdigest()}"
    ).encode()
    headers = {
        "Xr-Replayed-From": "eu-west",
        "Xr-Event-Id": event_id,
        "Xr-Hlc": FAR_FUTURE,
        "Xr-Replayed-Sig": signer.sign_bytes(without_hlc),
    }
    async with running_bridge(settings) as bridge, http_client() as http:
        replay = await send(http, "PUT", bridge.url, path, headers=headers, data=b"r")
    assert replay.status == 400
    assert replay.json()["error"] == "bad_replay_marker"
    assert calls_to(upstream, service) == []
    assert await stored_events(js, service) == []


async def test_a_signed_marker_forwards_exactly_what_it_signs_until_it_expires(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "marker-signed"
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, signing=make_keys(tmp_path)
    )
    signer = load_signer(settings.signing)
    assert signer is not None
    path, hlc = f"/{service}/k", "001700000000000-000001"

    def marked(event_id: str, *, expires_at: int, sent_hlc: str = hlc) -> dict[str, str]:
        marker = ReplayMarker("eu-west", event_id, hlc, "PUT", path, b"r")
        return {
            "Xr-Replayed-From": "eu-west",
            "Xr-Event-Id": event_id,
            "Xr-Hlc": sent_hlc,
            "Xr-Replayed-Sig": sign_replay_marker(signer, marker, expires_at=expires_at),
            # Client Xr-* headers no signature covers: never forwarded.
            "Xr-Targets": "eu-west",
            "Xr-Key": "/elsewhere",
        }

    good_id, now = uuid7_str(), int(time.time())
    expired_before = sample("xr_bridge_replay_markers_refused_total", reason="expired")
    async with running_bridge(settings) as bridge, http_client() as http:
        good = marked(good_id, expires_at=now + 60)
        replay = await send(http, "PUT", bridge.url, path, headers=good, data=b"r")
        tampered = marked(good_id, expires_at=now + 60, sent_hlc=FAR_FUTURE)
        pinned = await send(http, "PUT", bridge.url, path, headers=tampered, data=b"r")
        stale = marked(uuid7_str(), expires_at=now - 60)
        expired = await send(http, "PUT", bridge.url, path, headers=stale, data=b"r")
    assert replay.status == 200
    assert "Xr-Event-Id" not in replay.headers  # proxied, not replicated again
    [call] = calls_to(upstream, service)
    assert xr_headers(call) == {
        "xr-replayed-from": "eu-west",
        "xr-event-id": good_id,
        "xr-hlc": hlc,
        "xr-replayed-sig": good["Xr-Replayed-Sig"],
    }
    assert (pinned.status, pinned.json()["error"]) == (400, "bad_replay_marker")
    assert "bad_signature" in pinned.json()["detail"]
    assert (expired.status, expired.json()["error"]) == (400, "bad_replay_marker")
    assert "expired" in expired.json()["detail"]
    assert sample("xr_bridge_replay_markers_refused_total", reason="expired") == (
        expired_before + 1
    )
    assert await stored_events(js, service) == []


@pytest.mark.usefixtures("no_retry_waits")
async def test_a_replayer_through_a_signing_bridge_lands_with_the_events_version(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    """The real replayer's marker is what the real bridge checks: the call reaches the
    service with the event's HLC and is not published again."""
    service = "marker-e2e"
    us, eu = tmp_path / "us", tmp_path / "eu"
    us.mkdir()
    eu.mkdir()
    us_keys, eu_keys = make_keys(us, "us-east-1"), make_keys(eu, "eu-west-1")
    trusted = tmp_path / "trusted.toml"
    trusted.write_text(
        (us / "trusted.toml").read_text()
        + (eu / "trusted.toml").read_text().removeprefix("[keys]\n")
    )
    signing = {**us_keys, "trusted_keys_file": str(trusted)}
    bridge_settings = settings_for(tmp_path, bridge_cluster, upstream, service, signing=signing)
    origin_signer = load_signer(SigningSettings(**eu_keys))
    assert origin_signer is not None
    event = origin_signer.sign(
        Event(
            event_id=uuid7_str(),
            origin="eu-west",
            service=service,
            method="PUT",
            path=f"/{service}/k?v=1",
            hlc=HlcStamp(time.time_ns() // 1_000_000 - 1000, 3),
            key=f"/{service}/k",
            body=b'{"v": 1}',
            trace=new_traceparent(),
            req_headers=(("content-type", "application/json"),),
        )
    )
    headers, payload = encode(event)
    await js.publish(replay_subject(REGION, "eu-west", service), payload, headers=headers)
    async with running_bridge(bridge_settings) as bridge:
        replayer_settings = Settings(
            region=REGION,
            regions=list(REGIONS),
            data_dir=tmp_path / "replayer",
            nats={"servers": bridge_cluster.client_urls(REGION)},  # type: ignore[arg-type]
            replayer={"admin_listen": "127.0.0.1:0", "fetch_timeout_s": 0.3},  # type: ignore[arg-type]
            signing=SigningSettings(**signing),
            services={service: ServiceSettings(upstream=bridge.url, routes=[f"/{service}"])},
        )
        async with Replayer(replayer_settings) as replayer:
            await replayer.run_until_idle()
    [call] = calls_to(upstream, service)
    assert call.body == b'{"v": 1}'
    assert call.header("Xr-Hlc") == str(event.hlc)
    assert call.header("Xr-Event-Id") == event.event_id
    assert call.header("Xr-Replayed-From") == "eu-west"
    assert await stored_events(js, service) == []


# ------------------------------------------------------------------ item 7: Xr-Targets


async def test_xr_targets_where_the_service_does_not_allow_them_is_refused(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    """Dropping the header would replicate the write to the regions its client excluded."""
    service = "targets-off"
    settings = settings_for(tmp_path, bridge_cluster, upstream, service)
    before = sample("xr_bridge_refused_total", service=service, error="not_replicable")
    async with running_bridge(settings) as bridge, http_client() as http:
        narrowed = await send(
            http, "PUT", bridge.url, f"/{service}/k", headers={"Xr-Targets": "eu-west"}, data=b"1"
        )
        plain = await send(http, "PUT", bridge.url, f"/{service}/k", data=b"2")
        read = await send(http, "GET", bridge.url, f"/{service}/k", headers={"Xr-Targets": "x"})
    assert narrowed.status == 400
    assert narrowed.json()["error"] == "not_replicable"
    assert "allow_request_targets = false" in narrowed.json()["detail"]
    assert (plain.status, read.status) == (200, 200)  # a read replicates nothing: no harm
    assert [c.body for c in calls_to(upstream, service) if c.method == "PUT"] == [b"2"]
    [stored] = await stored_events(js, service)
    assert (stored.data, stored.event.targets) == (b"2", None)
    assert sample("xr_bridge_refused_total", service=service, error="not_replicable") == (
        before + 1
    )


async def test_xr_targets_are_honoured_where_the_service_allows_them(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "targets-on"
    settings = settings_for(tmp_path, bridge_cluster, upstream, service, allow_request_targets=True)
    async with running_bridge(settings) as bridge, http_client() as http:
        narrowed = await send(
            http, "PUT", bridge.url, f"/{service}/k", headers={"Xr-Targets": "eu-west"}, data=b"1"
        )
    assert narrowed.status == 200
    [stored] = await stored_events(js, service)
    assert stored.event.targets == ("eu-west",)


# ------------------------------------------------------------------ item 8: request targets


async def raw_request(url: str, head: bytes) -> bytes:
    """Send `head` (a request line and headers) on a fresh connection; the status line."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 10)).rstrip()
    finally:
        writer.close()


async def test_only_origin_form_targets_are_proxied(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    """A host route with an upstream without a port: `CONNECT .1:<port>` made the bridge
    connect to `127.0.0.1:<port>`, a port the client chose."""
    service = "hosted"
    async with TestUpstream() as elsewhere:
        port = elsewhere.url.rsplit(":", 1)[1]
        settings = write_region_file(
            tmp_path / "hosted.toml",
            nats_urls=bridge_cluster.client_urls(REGION),
            data_dir=tmp_path / "data",
            services={service: {"upstream": "http://127.0.0", "routes": ["host:svc.test"]}},
        )
        before = sample("xr_bridge_refused_total", service="none", error="bad_request_target")
        async with running_bridge(settings) as bridge:
            connect = await raw_request(
                bridge.url, f"CONNECT .1:{port} HTTP/1.1\r\nHost: svc.test\r\n\r\n".encode()
            )
            absolute = await raw_request(
                bridge.url,
                f"GET http://127.0.0.1:{port}/x HTTP/1.1\r\nHost: svc.test\r\n\r\n".encode(),
            )
            asterisk = await raw_request(
                bridge.url, b"OPTIONS * HTTP/1.1\r\nHost: svc.test\r\n\r\n"
            )
            async with http_client() as http:
                body = await send(http, "GET", bridge.url, "/", headers={"Host": "svc.test"})
        assert elsewhere.calls == []
    for status_line in (connect, absolute, asterisk):
        assert status_line.startswith(b"HTTP/1.1 400 "), status_line
    assert body.status == 502  # origin-form still goes to the configured (unreachable) host
    assert sample("xr_bridge_refused_total", service="none", error="bad_request_target") == (
        before + 3
    )


async def test_the_upstream_url_is_built_from_parts(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    """Path and query reach the upstream byte for byte below its base path; the host never
    changes, whatever the path holds."""
    service = "based"
    settings = write_region_file(
        tmp_path / "based.toml",
        nats_urls=bridge_cluster.client_urls(REGION),
        data_dir=tmp_path / "data",
        services={service: {"upstream": upstream.url + "/base/", "routes": [f"/{service}"]}},
    )
    async with running_bridge(settings) as bridge, http_client() as http:
        reply = await send(http, "GET", bridge.url, f"/{service}//h@x:1/a%2Fb?q=%20&r")
    assert reply.status == 200
    [call] = [c for c in upstream.calls if c.raw_path.startswith("/base/")]
    assert call.raw_path == f"/base/{service}//h@x:1/a%2Fb?q=%20&r"


# ------------------------------------------------------------------ item 11: secrets in output


async def test_check_config_redacts_every_userinfo(
    bridge_cluster: SuperCluster, tmp_path: Path
) -> None:
    """`u:pa/ss@` (a `/` in the password) and an upstream's userinfo were printed as is."""
    config = tmp_path / "secret.toml"
    write_region_file(
        config,
        nats_urls=["nats://u:pa/ss@127.0.0.1:4222", "nats://v:p@ss@127.0.0.1:4223"],
        data_dir=tmp_path / "data",
        services={"svc": {"upstream": "http://svc:up-secret@127.0.0.1:7001", "routes": ["/s"]}},
    )
    proc = await asyncio.create_subprocess_exec(
        str(XREGION),
        "bridge",
        "--config",
        str(config),
        "--check-config",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    shown = json.loads(out)
    for secret in (b"pa/ss", b"p@ss", b"up-secret"):
        assert secret not in out + err
    assert shown["nats"]["servers"] == [
        "nats://***@127.0.0.1:4222",
        "nats://***@127.0.0.1:4223",
    ]
    assert shown["services"]["svc"]["upstream"] == "http://***@127.0.0.1:7001"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_upstream_credentials_stay_out_of_502_and_504_answers(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    authority = upstream.url.removeprefix("http://")
    settings = write_region_file(
        tmp_path / "creds.toml",
        nats_urls=bridge_cluster.client_urls(REGION),
        data_dir=tmp_path / "data",
        bridge={"upstream_read_timeout_s": 0.5},
        services={
            "gone": {
                "upstream": f"http://u:up-secret@127.0.0.1:{closed_port()}",
                "routes": ["/gone"],
            },
            "slow": {"upstream": f"http://u:up-secret@{authority}", "routes": ["/slow"]},
        },
    )
    with capture_logs() as logs:
        async with running_bridge(settings) as bridge, http_client() as http:
            unreachable = await send(http, "GET", bridge.url, "/gone/x")
            timed_out = await send(http, "GET", bridge.url, "/slow/hang")
    assert (unreachable.status, timed_out.status) == (502, 504)
    assert "127.0.0.1:" in unreachable.json()["detail"]  # still says where it tried
    for answer in (unreachable, timed_out):
        assert b"up-secret" not in answer.body
    assert "up-secret" not in repr(logs)


async def test_forwarding_credential_headers_is_warned_about(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path,
        bridge_cluster,
        upstream,
        "fwd",
        bridge={"forward_headers": ["Authorization", "X-Tenant", "Cookie"]},
    )
    with capture_logs() as logs:
        async with running_bridge(settings):
            pass
    [warning] = [e for e in logs if e["event"] == "bridge.forwards_credentials"]
    assert warning["log_level"] == "warning"
    assert warning["headers"] == ["authorization", "cookie"]


async def test_query_strings_stay_out_of_request_logs(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    service = "quiet"
    settings = settings_for(tmp_path, bridge_cluster, upstream, service)
    with capture_logs() as logs:
        async with running_bridge(settings) as bridge, http_client() as http:
            read = await send(http, "GET", bridge.url, f"/{service}/echo?token=q-secret")
            missing = await send(http, "GET", bridge.url, "/nowhere?token=q-secret")
    assert (read.status, missing.status) == (200, 404)
    assert read.json()["raw_path"] == f"/{service}/echo?token=q-secret"  # still proxied
    lines = [e for e in logs if e["event"] == "bridge.request"]
    assert [e["path"] for e in lines] == [f"/{service}/echo", "/nowhere"]
    assert "q-secret" not in repr(logs)


# ------------------------------------------------------------------ item 9: memory


async def open_partial(url: str, path: str, declared: int, first: bytes) -> RawConn:
    """A PUT to `path` announcing `declared` body bytes of which only `first` is sent."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode() + first
    )
    await writer.drain()
    return RawConn(reader, writer)


@dataclasses.dataclass
class RawConn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def status_line(self) -> bytes:
        return (await asyncio.wait_for(self.reader.readline(), 30)).rstrip()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def rest(self) -> tuple[dict[str, str], bytes]:
        """The headers and body of the answer whose status line was read."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}
        size = int(headers["content-length"])
        return headers, await asyncio.wait_for(self.reader.readexactly(size), 30)

    def close(self) -> None:
        self.writer.close()


async def test_buffered_bodies_share_one_byte_budget(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    """10,000 requests x 8 MiB bodies could be buffered at once; now a request beyond the
    budget gets 503 at once, and the budget comes back when the holder is done."""
    service = "budget"
    settings = settings_for(
        tmp_path,
        bridge_cluster,
        upstream,
        service,
        bridge={"max_replicated_body_bytes": 1000, "max_buffered_body_bytes": 1500},
    )
    refused = {"service": service, "error": "body_budget_exhausted"}
    before = sample("xr_bridge_refused_total", **refused)
    async with running_bridge(settings) as bridge, http_client() as http:
        holder = await open_partial(bridge.url, f"/{service}/a", 1000, b"a" * 10)
        try:
            await wait_until(
                lambda: sample("xr_bridge_buffered_body_bytes") >= 1000,
                10,
                message="the first body holds its share",
            )
            over = await send(http, "PUT", bridge.url, f"/{service}/b", data=b"b" * 600)
            fits = await send(http, "PUT", bridge.url, f"/{service}/c", data=b"c" * 400)
            await holder.send(b"a" * 990)
            assert await holder.status_line() == b"HTTP/1.1 200 OK"
        finally:
            holder.close()
        await wait_until(lambda: sample("xr_bridge_buffered_body_bytes") == 0, 10)
        again = await send(http, "PUT", bridge.url, f"/{service}/b", data=b"b" * 600)
    assert (over.status, over.json()["error"]) == (503, "body_budget_exhausted")
    assert (fits.status, again.status) == (200, 200)
    assert sample("xr_bridge_refused_total", **refused) == before + 1
    assert sorted(c.raw_path for c in calls_to(upstream, service)) == [
        f"/{service}/a",
        f"/{service}/b",
        f"/{service}/c",
    ]
    assert sorted(e.data[:1] for e in await stored_events(js, service)) == [b"a", b"b", b"c"]


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    service = "slowbody"
    settings = settings_for(
        tmp_path, bridge_cluster, upstream, service, bridge={"body_read_timeout_s": 0.5}
    )
    async with running_bridge(settings) as bridge, http_client() as http:
        stalled = await open_partial(bridge.url, f"/{service}/k", 100, b"x" * 10)
        try:
            status = await stalled.status_line()
            headers, body = await stalled.rest()
        finally:
            stalled.close()
        write = await send(http, "PUT", bridge.url, f"/{service}/k", data=b"w")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert b"body_timeout" in body
    assert headers["connection"] == "close"  # the rest of that body is never read
    assert sample("xr_bridge_buffered_body_bytes") == 0
    assert write.status == 200
    assert [c.body for c in calls_to(upstream, service)] == [b"w"]
    assert [e.data for e in await stored_events(js, service)] == [b"w"]
