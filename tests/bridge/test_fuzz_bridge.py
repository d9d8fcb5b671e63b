"""Fuzzing a real bridge (in this process, on the session's NATS super-cluster, signing on)
with random methods, request targets, headers and bodies sent as raw bytes over a socket:
every request gets an answer that is not a 500 `internal_error`, and nothing the bridge or
aiohttp logs is an error or an unhandled exception."""

from __future__ import annotations

import asyncio
import logging
import string
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.bridge.service import Bridge
from services.xregion.local.supercluster import SuperCluster
from tests.bridge.helpers import REGION, running_bridge, write_region_file
from tests.harness.keys import make_keys

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_UPSTREAM_LOG = logging.getLogger("tests.fuzz.upstream")
_ANSWER_TIMEOUT_S = 20.0

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
           "PROPFIND", "MKCOL", "PURGE"]  # fmt: skip
PIECES = ["/", "//", "fz", "/fz", "/fz/", "other", "..", ".", "%2e", "%2F", "%00", "?", "&", "=",
          "#", "@", "\\", ":", "%", "%zz", "é", "echo", "s204", "s302", "s500", "s503",
          "?x=1", "http://evil.example", "evil.example:80", "*", " ", "\t"]  # fmt: skip
HEADER_NAMES = ["Host", "Xr-Replayed-From", "Xr-Replayed-Sig", "Xr-Hlc", "Xr-Event-Id",
                "Xr-Targets", "Xr-Sig", "Xr-Origin", "Xr-Req-X", "Content-Type",
                "Content-Encoding", "Idempotency-Key", "Expect", "Connection", "Upgrade",
                "Cookie", "Authorization", "Traceparent", "X-Forwarded-For"]  # fmt: skip
HEADER_VALUES = ["eu-west", "us-east", "us-east-1:1:AAAA", "001700000000000-000001",
                 "eu-west,ap-south", "gzip", "100-continue", "upgrade", "websocket",
                 "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""]  # fmt: skip

# One method in five is any token (the HTTP parser refuses most), the rest are known ones.
methods = st.integers(0, 4).flatmap(
    lambda i: st.text(string.ascii_uppercase, min_size=1, max_size=8) if i == 0
    else st.sampled_from(METHODS)
)  # fmt: skip
pieces = st.one_of(st.sampled_from(PIECES), st.text(string.ascii_lowercase, max_size=4))
# Mostly under a route (so requests reach the proxy and the upstream), sometimes anything.
targets = st.one_of(
    st.tuples(st.sampled_from(["/fz/", "/other/", "/fz/echo?", "/fz/s"]),
              st.lists(pieces.filter(str.isprintable), max_size=5).map("".join))
    .map("".join)
    .filter(lambda t: " " not in t),
    st.lists(pieces, max_size=8).map("".join),
)  # fmt: skip
header_names = st.one_of(
    st.sampled_from(HEADER_NAMES), st.text(string.ascii_letters + "-_", min_size=1, max_size=12)
)
header_values = st.one_of(
    st.sampled_from(HEADER_VALUES),
    st.text(string.ascii_letters + string.digits + ":-,;=/ ", max_size=24),
    st.text(st.characters(codec="utf-8", exclude_characters="\r\n\x00"), max_size=24),
)
headers = st.lists(st.tuples(header_names, header_values), max_size=4)


def raw_request(method: str, target: str, pairs: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz.test"]
    lines += [f"{name}: {value}" for name, value in pairs]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


async def exchange(url: str, request: bytes) -> tuple[int, bytes]:
    """Send `request` as it is; the status (0: no status line) and everything answered."""
    host, _, port = url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(_ANSWER_TIMEOUT_S):
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line = answer.split(b"\r\n", 1)[0].split(b" ")
    ok = len(status_line) > 1 and status_line[1].isdigit()
    return (int(status_line[1]) if ok else 0), answer


async def _upstream_answer(request: web.BaseRequest) -> web.Response:
    """Any request: 200 with what arrived, or the status its last segment names (`s204`)."""
    body = await request.read()
    last = request.raw_path.split("?", 1)[0].rstrip("/").rpartition("/")[2]
    status = int(last[1:]) if last in ("s204", "s302", "s404", "s500", "s503") else 200
    if status == 204:
        return web.Response(status=204)
    headers = {"Location": "/elsewhere"} if status == 302 else {}
    return web.json_response({"path": request.raw_path, "body_len": len(body)}, status=status,
                             headers=headers)  # fmt: skip


@pytest_asyncio.fixture(loop_scope="session")
async def upstream() -> AsyncIterator[str]:
    """A forgiving service behind the bridge: it answers every request it can parse, and its
    own log lines go to a logger of their own, apart from the bridge's."""
    server = web.Server(_upstream_answer, access_log=None, logger=_UPSTREAM_LOG)
    runner = web.ServerRunner(server, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = next(a for a in runner.addresses if isinstance(a, tuple))[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture(loop_scope="session")
async def bridge(
    bridge_cluster: SuperCluster, upstream: str, tmp_path: Path
) -> AsyncIterator[Bridge]:
    settings = write_region_file(
        tmp_path / "region.toml",
        nats_urls=bridge_cluster.client_urls(REGION),
        data_dir=tmp_path / "data",
        signing=make_keys(tmp_path),
        services={
            "fz": {"upstream": upstream, "routes": ["/fz"], "allow_request_targets": True},
            "other": {"upstream": upstream + "/base", "routes": ["/other"]},
        },
        bridge={"body_read_timeout_s": 5.0},
    )
    async with running_bridge(settings) as running:
        yield running


@FUZZ
@given(methods, targets, headers, st.binary(max_size=64))
async def test_no_request_makes_the_bridge_fail(
    bridge: Bridge,
    caplog: pytest.LogCaptureFixture,
    method: str,
    target: str,
    pairs: list[tuple[str, str]],
    body: bytes,
) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING), capture_logs() as logs:
        status, answer = await exchange(bridge.url, raw_request(method, target, pairs, body))
    assert status != 0, answer[:200]
    event(f"answered {status}")  # --hypothesis-show-statistics: what the fuzzer reached
    event(outcome(answer))
    assert not (status == 500 and b"internal_error" in answer), answer[:500]
    failures = [e for e in logs if e.get("log_level") in ("error", "critical") or "exc_info" in e]
    assert failures == []
    others = [r for r in caplog.records if r.levelno >= logging.ERROR and not parse_refusal(r)]
    assert others == []
    if any(parse_refusal(r) for r in caplog.records):
        assert status == 400  # aiohttp refused to parse it; the bridge never saw it


def outcome(answer: bytes) -> str:
    """What answered: the bridge's own error code, aiohttp's parser, or the service."""
    body = answer.partition(b"\r\n\r\n")[2]
    if body.startswith(b'{"error"'):
        return "bridge: " + body.split(b'"')[3].decode()
    if body.startswith(b'{"path"'):
        return "the service"
    return "aiohttp: " + body[:20].decode(errors="replace").split(":")[0]


def parse_refusal(record: logging.LogRecord) -> bool:
    """aiohttp's own log line for a request it could not parse (answered 400)."""
    exc = record.exc_info[1] if record.exc_info else None
    return record.name == "aiohttp.server" and isinstance(exc, HttpProcessingError)


async def test_an_unparsable_request_is_not_logged_as_an_error(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """A client's malformed request is answered 400 and counted, not logged as an error."""
    before = REGISTRY.get_sample_value(
        "xr_bridge_refused_total", {"service": "none", "error": "bad_http"}
    )
    with caplog.at_level(logging.WARNING):
        status, _ = await exchange(bridge.url, b"GET  HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    after = REGISTRY.get_sample_value(
        "xr_bridge_refused_total", {"service": "none", "error": "bad_http"}
    )
    assert (after or 0) == (before or 0) + 1


async def test_the_fuzzer_reaches_the_upstream_and_the_refusals(bridge: Bridge) -> None:
    """The strategies' building blocks give proxied answers and the bridge's own refusals."""
    cases = {
        ("PUT", "/fz/echo", ()): 200,
        ("CONNECT", "evil.example:80", ()): 400,
        ("PUT", "/fz/echo", (("Xr-Replayed-From", "eu-west"),)): 400,  # an unsigned marker
    }
    for (method, target, pairs), expected in cases.items():
        status, answer = await exchange(bridge.url, raw_request(method, target, list(pairs), b"{}"))
        assert status == expected, answer[:300]
