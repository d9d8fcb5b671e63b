"""The pure core: path safety, building the call, classification, dead-letter shape, order."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from urllib.parse import quote

import aiohttp
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.replayer.apply import Applier, Delivery
from services.replayer.classify import Verdict, classify_error, classify_status
from services.replayer.outcomes import Done
from services.replayer.partitions import KeyedRunner, order_key
from services.replayer.pathsafe import UnsafePathError, check_path
from services.replayer.request import RequestError, build_request
from services.replayer.upstream import Upstream, UpstreamError
from services.replayer.versions import Claim, ClaimResult, VersionStore
from services.replayer.versions import Verdict as ClaimVerdict
from shared.dlq import NotReplayableError, dead_letter, fit, path_of, replay_message
from shared.envelope import Event, encode, req_headers_from
from shared.settings import ReplayerSettings, ServiceSettings
from tests.harness.wait import wait_until
from tests.replayer.helpers import Trap, make_event
from tests.replayer.recorder import Recorder

SERVICES = {"catalog": ServiceSettings(upstream="http://10.0.0.1:7001", routes=["/catalog"])}

UNSAFE = [
    "//evil.example/x", "http://x/", "https:x", "/\\evil", "\\evil", "/a/../b", "/..",
    "/%2e%2e/admin", "/%2E%2E/admin", "/%252e%252e/admin", "/%25252e%25252e/x", "/a/%2e/b",
    "/x%0d%0aHost:%20evil", "/x%00", "/%2f%2fevil", "/%5cevil", "/a b", "", "relative",
    "/ok/%ff", "/a/..?q=1", "/%2Fevil.example",
    "/catalog/x#frag", "/catalog/x?q=1#f",  # a fragment would be cut off, not sent as checked
]  # fmt: skip
SAFE = [
    "/", "/catalog/items/1", "/catalog/items?x=1&y=%2F", "/a/..b/c", "/a/b.c/...", "/%41", "/a%23b",
]  # fmt: skip


@pytest.mark.parametrize("path", UNSAFE)
def test_unsafe_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePathError):
        check_path(path)


@pytest.mark.parametrize("path", SAFE)
def test_safe_paths_pass_unchanged(path: str) -> None:
    assert check_path(path) == path


@given(st.text(min_size=0, max_size=40), st.integers(min_value=0, max_value=3))
def test_no_encoding_depth_hides_a_dot_segment(middle: str, depth: int) -> None:
    path = f"/{middle}/../x"
    for _ in range(depth):
        path = quote(path, safe="")
    with pytest.raises(UnsafePathError):
        check_path(path if path.startswith("/") else "/" + path)


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_accepted_paths_never_leave_the_base(path: str) -> None:
    try:
        check_path(path)
    except UnsafePathError:
        return
    url = httpx.URL("http://10.0.0.1:7001" + path)
    assert url.host == "10.0.0.1"
    assert url.port == 7001


def test_request_uses_the_configured_base_and_sets_replay_headers() -> None:
    event = dataclasses.replace(
        make_event("/catalog/1?a=b", body=b"x"),
        req_headers=req_headers_from(
            {"Content-Type": "text/plain", "Connection": "close", "Host": "evil", "Te": "x"}
        ),
    )
    request = build_request(event, SERVICES)
    assert request.url == "http://10.0.0.1:7001/catalog/1?a=b"
    assert request.method == "PUT"
    assert request.headers["Idempotency-Key"] == event.event_id
    assert request.headers["Xr-Replayed-From"] == event.origin
    assert request.headers["content-type"] == "text/plain"
    assert not {"connection", "host", "te"} & {h.lower() for h in request.headers}


def test_forwarded_headers_cannot_override_ours() -> None:
    event = dataclasses.replace(
        make_event("/catalog/1"), req_headers=req_headers_from({"Idempotency-Key": "client"})
    )
    request = build_request(event, SERVICES)
    assert [v for k, v in request.headers.items() if k.lower() == "idempotency-key"] == [
        event.event_id
    ]


@pytest.mark.parametrize(
    ("service", "method", "reason"),
    [("billing", "PUT", "unknown_service"), ("catalog", "GET", "method_not_allowed")],
)
def test_requests_that_must_not_happen(service: str, method: str, reason: str) -> None:
    event = dataclasses.replace(make_event("/catalog/1"), service=service, method=method)
    with pytest.raises(RequestError) as info:
        build_request(event, SERVICES)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, Verdict.APPLIED), (204, Verdict.APPLIED), (409, Verdict.STALE), (412, Verdict.STALE),
     (429, Verdict.RETRY), (500, Verdict.RETRY), (503, Verdict.RETRY), (408, Verdict.RETRY),
     (400, Verdict.POISON), (404, Verdict.POISON), (422, Verdict.POISON), (302, Verdict.POISON)],
)  # fmt: skip
def test_classify_status(status: int, verdict: Verdict) -> None:
    assert classify_status(status) is verdict


def test_classify_error() -> None:
    assert classify_error(aiohttp.ClientConnectionError("x")) is Verdict.RETRY
    assert classify_error(aiohttp.ServerDisconnectedError()) is Verdict.RETRY
    assert classify_error(TimeoutError()) is Verdict.RETRY
    assert classify_error(ConnectionResetError()) is Verdict.RETRY
    assert classify_error(ValueError("x")) is Verdict.POISON


def test_dead_letter_keeps_the_original_and_replays_to_it() -> None:
    event = make_event("/catalog/1", body=b"body")
    headers, payload = encode(event)
    subject, out, data = dead_letter(
        region="eu-west", subject="xr.replay.eu-west.us-east.catalog", headers=headers,
        payload=payload, stream_seq=7, reason="http_400", status=400, attempts=1,
        error="bad\r\nrequest", now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )  # fmt: skip
    assert subject == "xr.dlq.eu-west.us-east.catalog"
    assert data == b"body"
    assert out["Nats-Msg-Id"] == "dlq:7"
    assert out["Xr-Dlq-Error"] == "bad request"
    assert out["Xr-Dlq-At"] == "2026-01-01T00:00:00.000+00:00"
    back_subject, back, _ = replay_message(region="eu-west", subject=subject, headers=out,
                                           payload=data)  # fmt: skip
    assert back_subject == "xr.replay.eu-west.us-east.catalog"
    assert back == {k: v for k, v in headers.items() if k != "Nats-Msg-Id"}
    assert path_of("xr.replay.eu-west.BAD.x") == ("unknown", "x")


def test_a_dead_letter_refused_by_a_target_replays_to_that_target() -> None:
    headers, payload = encode(make_event("/catalog/1", body=b"body"))
    subject, out, data = dead_letter(
        region="us-east", subject="xr.replay.ap-south.us-east.catalog", headers=headers,
        payload=payload, stream_seq=9, reason="forward_refused", status=None, attempts=1,
        error="target ap-south refused", now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )  # fmt: skip
    assert subject == "xr.dlq.us-east.us-east.catalog"
    refused = {**out, "Xr-Dlq-Target": "ap-south"}
    back_subject, back, _ = replay_message(region="us-east", subject=subject, headers=refused,
                                           payload=data)  # fmt: skip
    assert back_subject == "xr.replay.ap-south.us-east.catalog"
    assert "Xr-Dlq-Target" not in back
    # A target that is not another region's name is no place to replay to.
    for odd_target in ("ap.south.>", "us-east"):
        odd = {**out, "Xr-Dlq-Target": odd_target}
        with pytest.raises(NotReplayableError, match="is not another region"):
            replay_message(region="us-east", subject=subject, headers=odd, payload=data)


async def test_keyed_runner_serialises_a_key_and_parallelises_keys() -> None:
    runner = KeyedRunner()
    log: list[str] = []
    gate = asyncio.Event()

    def job(name: str, wait: bool) -> object:
        async def run() -> None:
            log.append(f"start {name}")
            if wait:
                await gate.wait()
            log.append(f"end {name}")

        return run

    runner.submit("a", job("a1", True))  # type: ignore[arg-type]
    runner.submit("a", job("a2", False))  # type: ignore[arg-type]
    runner.submit("b", job("b1", False))  # type: ignore[arg-type]
    await wait_until(lambda: "end b1" in log, 5, message="b1 ran while a1 was blocked")
    assert "start a2" not in log
    gate.set()
    assert await runner.wait(5)
    assert log.index("end a1") < log.index("start a2")
    assert order_key({"Xr-Service": "s", "Xr-Key": "k"}) == "s\x00k"
    assert order_key({}) is None


def _settings(**changes: float) -> ReplayerSettings:
    return ReplayerSettings(ack_wait_s=30, retry_attempts=3, retry_total_s=5, **changes)  # type: ignore[arg-type]


async def test_upstream_retries_5xx_then_returns_the_last_status() -> None:
    async with Recorder(script={"/catalog/1": [503, 502]}) as service:
        services = {"catalog": ServiceSettings(upstream=service.url, routes=["/catalog"])}
        request = build_request(make_event("/catalog/1"), services)
        async with Upstream(_settings()) as up:
            assert (await up.call(request, "catalog")).status == 200
    assert [c.status for c in service.calls] == [503, 502, 200]


async def test_upstream_returns_the_last_retryable_status_when_attempts_run_out() -> None:
    async with Recorder(script={"/catalog/1": [503] * 5}) as service:
        services = {"catalog": ServiceSettings(upstream=service.url, routes=["/catalog"])}
        request = build_request(make_event("/catalog/1"), services)
        async with Upstream(_settings()) as up:
            assert (await up.call(request, "catalog")).status == 503
    assert len(service.calls) == 3


async def test_upstream_gives_up_after_the_attempts() -> None:
    async with Trap() as trap:  # accepts, then closes every connection at once
        services = {
            "catalog": ServiceSettings(upstream=f"http://127.0.0.1:{trap.port}", routes=["/c"])
        }
        request = build_request(make_event("/catalog/1"), services)
        async with Upstream(_settings()) as up:
            with pytest.raises(UpstreamError):
                await up.call(request, "catalog")
    # 3 attempts; aiohttp itself re-sends an idempotent method once on a dropped connection
    assert 3 <= trap.hits <= 6


async def test_upstream_sends_the_checked_path_verbatim_and_no_invented_headers() -> None:
    async with Recorder() as service:
        services = {"catalog": ServiceSettings(upstream=service.url, routes=["/catalog"])}
        event = dataclasses.replace(
            make_event("/catalog/a%41b/%7Ex?y=%2F&z=a+b", body=b"raw"), req_headers=()
        )
        async with Upstream(_settings()) as up:
            assert (await up.call(build_request(event, services), "catalog")).status == 200
    [call] = service.calls
    assert call.raw_path == "/catalog/a%41b/%7Ex?y=%2F&z=a+b"
    assert call.body == b"raw"
    assert "Content-Type" not in call.headers
    assert "Cookie" not in call.headers


def test_a_dead_letter_too_big_for_max_payload_drops_its_body() -> None:
    headers, payload = encode(make_event("/catalog/1", body=b"x" * 1000))
    letter = dead_letter(
        region="eu-west", subject="xr.replay.eu-west.us-east.catalog", headers=headers,
        payload=payload, stream_seq=1, reason="http_400", status=400, attempts=1, error="e" * 600,
        now=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )  # fmt: skip
    assert fit(letter, 1_000_000) is letter
    _, out, body = fit(letter, 1500)
    assert body == b""
    assert out["Xr-Dlq-Body"] == "dropped 1000 bytes: over max_payload"
    assert len(out["Xr-Dlq-Error"]) == 512  # clipped to 509 + "..."


class _RecordFails(Claim):
    """A claim whose `applied` record write times out (NATS unreachable after the call)."""

    def __init__(self) -> None:
        pass

    async def applied(self) -> None:
        raise TimeoutError

    async def release(self) -> None:
        raise AssertionError("a claim is never released after the service applied the event")


class _AlwaysClaimed(VersionStore):
    def __init__(self) -> None:
        pass

    async def claim(self, event: Event) -> ClaimResult:
        return ClaimResult(ClaimVerdict.CLAIMED, _RecordFails())


async def test_an_applied_event_is_acked_even_if_its_record_cannot_be_written() -> None:
    """A nak here would redeliver the event and call the service a second time."""
    event = make_event("/catalog/once")
    headers, data = encode(event)
    delivery = Delivery(
        subject="xr.replay.eu-west.us-east.catalog", headers=headers, data=data,
        num_delivered=1, stream_seq=1, stored_at=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    async with Recorder() as service:
        services = {"catalog": ServiceSettings(upstream=service.url, routes=["/catalog"])}
        async with Upstream(_settings()) as up:
            applier = Applier(
                _settings(), services, region="eu-west", versions=_AlwaysClaimed(), upstream=up
            )
            assert await applier.handle(delivery) is Done.APPLIED
    assert len(service.calls) == 1
