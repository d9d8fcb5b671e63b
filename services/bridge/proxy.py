"""One proxied request, start to finish (docs/DESIGN.md §5 bridge).

    route ──▶ (replicated write: read body ≤ limit, build and sign event) ──▶ upstream
          ──▶ (2xx: event durable: JetStream ack, else outbox) ──▶ relay response, streamed

The event is built before the upstream is called, so a write that could not be replicated is
refused (400/413) before it happens. A request with a replay marker (`Xr-Replayed-From`) is
either a verified replay (`_replay_marker`: proxied with exactly the `Xr-*` headers the
marker's signature covers, never published) or refused with 400; every other request loses
the `Xr-*` headers its client sent. A replicated write's event is made durable after the
upstream's 2xx status and headers and before the first byte goes back to the client.
Everything else is relayed as bytes. Failures answer with a short JSON body:
`{"error": <code>, "detail": <text>}`.

Statuses the bridge itself produces: 400 (event cannot be built from the request, or a replay
marker this bridge cannot trust), 404 (no route), 413 (body over the replication limit), 502
(upstream unreachable), 503 (overloaded, or the write's event could not be stored for
replication: anywhere, or, refused for good by the events stream, only in the region's DLQ),
504 (upstream timeout).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Histogram
from yarl import URL

from services.bridge.budget import BodyBudget
from services.bridge.delivery import Delivered, Delivery, Outcome
from services.bridge.event import WriteRequest, build_event
from services.bridge.headers import Forwarded, response_headers, upstream_headers
from services.bridge.metrics import (
    BUFFERED_BODY_BYTES,
    INFLIGHT_REQUESTS,
    REFUSED,
    REPLAY_MARKERS_REFUSED,
    REQUEST_DURATION,
    REQUESTS,
    method_label,
)
from services.bridge.routing import Route, RouteTable, TargetsError, request_targets
from services.bridge.upstream import (
    RequestBody,
    Upstream,
    UpstreamBrokeOffError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from services.bridge.versions import LocalVersions
from shared.envelope import (
    HDR_EVENT_ID,
    HDR_HLC,
    HDR_REPLAYED_FROM,
    HDR_REPLAYED_SIG,
    HDR_TARGETS,
    Event,
    EventTooLargeError,
    MalformedEventError,
    check_wire_headers,
    encode,
    max_body_for,
)
from shared.frames import header_block
from shared.hlc import Hlc
from shared.ids import uuid7_str
from shared.logs import get_logger
from shared.regions import dlq_stream, events_subject
from shared.signing import ReplayMarker, SignatureError, Signer, Verifier, verify_replay_marker
from shared.tasks import TaskSet

__all__ = ["Proxy", "ProxyConfig", "problem"]

log = get_logger("xr.bridge")

_NOT_ORIGIN_FORM = (
    "the bridge proxies origin-form request targets only (/path?query): "
    "no CONNECT, absolute-form (http://host/...) or asterisk-form (*) target"
)
# Refusals that leave the request body unread: the connection cannot be reused.
_CLOSES = frozenset({"body_timeout", "body_budget_exhausted"})
# Status codes whose responses never carry a body, whatever their headers say.
_NO_BODY_STATUS = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    region: str
    regions: tuple[str, ...]
    max_replicated_body_bytes: int
    forward_headers: frozenset[str]
    max_concurrent_requests: int
    max_buffered_body_bytes: int
    body_read_timeout_s: float


class _Refused(Exception):
    """The bridge answers the request itself with an error status."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class _Record:
    """The fields of the one canonical log line of a request."""

    method: str
    path: str  # without the query string, which stays out of logs: tokens, personal data
    query: str = ""
    started: float = field(default_factory=time.perf_counter)
    service: str = "none"
    status: int = 0
    event_id: str | None = None
    outcome: str | None = None
    replay: bool = False
    upstream_ms: float | None = None
    publish_ms: float | None = None
    error: str | None = None
    buffered: int = 0  # bytes of the body budget this request holds

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def loggable_error(self) -> str | None:
        """`error` without the query string (a refusal's detail may quote the target)."""
        if self.error and self.query:
            return self.error.replace(self.query, "...")
        return self.error


@dataclass(frozen=True, slots=True)
class _Target:
    """A request's raw path, without and with its query string (see `_path_qs`)."""

    path: str
    path_qs: str


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to send upstream: the buffered body (None: stream it), the write's event, the
    upstream URL (base plus the raw path and query), the client's headers in order, and a
    verified replay marker's headers (the only `Xr-*` headers of a client that go upstream)."""

    body: bytes | None
    write: _Write | None
    url: URL
    pairs: tuple[tuple[str, str], ...]
    marker: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class _Write:
    """A replicated write's event, encoded, ready to publish after the upstream's 2xx."""

    event: Event
    subject: str
    headers: dict[str, str]
    payload: bytes
    block: bytes  # the NATS header block of `headers`, sent as it is


def problem(status: int, code: str, detail: str) -> web.Response:
    """A short JSON error response."""
    return web.json_response({"error": code, "detail": detail}, status=status)


class Proxy:
    """The bridge's request handler; `handle` is the aiohttp handler."""

    def __init__(
        self,
        config: ProxyConfig,
        *,
        routes: RouteTable,
        upstream: Upstream,
        delivery: Delivery,
        max_payload: Callable[[], int],
        tasks: TaskSet,
        hlc: Hlc | None = None,
        signer: Signer | None = None,
        verifier: Verifier | None = None,
        versions: LocalVersions | None = None,
    ) -> None:
        self._config = config
        self._routes = routes
        self._upstream = upstream
        self._delivery = delivery
        self._max_payload = max_payload
        self._tasks = tasks
        self._hlc = hlc or Hlc()
        self._signer = signer
        self._verifier = verifier
        self._versions = versions
        self._inflight = 0
        self._budget = BodyBudget(config.max_buffered_body_bytes)

    def body_limit(self) -> int:
        """The replication body limit: the configured one, or what NATS can carry if less."""
        return min(self._config.max_replicated_body_bytes, max_body_for(self._max_payload()))

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path, _, query = request.raw_path.partition("?")
        record = _Record(method=request.method, path=path, query=query)
        if self._inflight >= self._config.max_concurrent_requests:
            record.error = "overloaded"
            response = self._refuse(record, 503, "overloaded", "too many in flight")
            _log(record)
            return response
        self._inflight += 1
        INFLIGHT_REQUESTS.inc()
        try:
            return await self._handle(request, record)
        except ConnectionError as exc:  # the client left while we read its request
            record.error = f"client gone: {exc!r}"
            return self._refuse(record, 400, "client_gone", "request incomplete")
        except Exception as exc:
            # The bridge's one catch-all boundary: log it, count it, answer 500 if we still can.
            record.error = repr(exc)
            log.exception("bridge.unexpected_error", method=record.method, path=record.path)
            if record.status:  # the response had started: nothing else can be said
                raise
            return self._refuse(record, 500, "internal_error", "unexpected error")
        finally:
            self._inflight -= 1
            INFLIGHT_REQUESTS.dec()
            if record.buffered:
                self._budget.give_back(record.buffered)
                BUFFERED_BODY_BYTES.set(self._budget.used)
            _log(record)

    async def _handle(self, request: web.BaseRequest, record: _Record) -> web.StreamResponse:
        try:
            return await self._proxy(request, record)
        except _Refused as refused:
            record.error = refused.detail
            return self._refuse(record, refused.status, refused.code, refused.detail)

    async def _proxy(self, request: web.BaseRequest, record: _Record) -> web.StreamResponse:
        if request.method == "CONNECT" or not request.raw_path.startswith("/"):
            # Only `/path?query` may follow the upstream's base URL: an authority-form
            # (CONNECT) or absolute-form target would name a host of the client's choice.
            raise _Refused(400, "bad_request_target", _NOT_ORIGIN_FORM)
        path, _, query = request.raw_path.partition("?")
        route = self._routes.match(request.headers.get("Host"), path)
        if route is None:
            return self._refuse(record, 404, "no_route", f"no service routes {path!r}")
        record.service = route.service
        replicates = route.replicates(request.method, path)
        marked = HDR_REPLAYED_FROM in request.headers
        if marked and self._verifier is None:
            raise _marker_refused(
                "signing_off", "signing is off: this bridge trusts no replay marker"
            )
        body = None
        if replicates or marked:
            body = await self._read_body(request, record)  # 100 Continue if it fits
        marker = self._replay_marker(request, body or b"") if marked else ()
        record.replay = marked
        path_qs = request.raw_path if query else path  # see _path_qs
        pairs = tuple(request.headers.items())
        write = None
        if replicates and not marked:
            assert body is not None
            write = self._prepare_write(request, route, _Target(path, path_qs), pairs, body)
            record.event_id = write.event.event_id
        plan = _Plan(body, write, route.url_for(path, query), pairs, marker)
        return await self._forward(request, route, plan, record)

    async def _read_body(self, request: web.BaseRequest, record: _Record) -> bytes:
        """The whole body, within the replication limit, the body budget and the deadline."""
        limit = self.body_limit()
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _Refused(413, "body_too_large", _too_large(declared, limit))
        self._take(record, declared or 0)  # before 100 Continue: refused, it is never sent
        await _continue(request)
        if request.content.is_eof():  # all of it came with the headers: nothing to wait for
            whole = request.content.read_nowait(-1)
            if len(whole) > limit:
                raise _Refused(413, "body_too_large", _too_large(len(whole), limit))
            self._take(record, len(whole) - record.buffered)
            return whole
        body = bytearray()
        try:
            async with asyncio.timeout(self._config.body_read_timeout_s):
                async for chunk in request.content.iter_any():
                    body += chunk
                    if len(body) > limit:
                        raise _Refused(413, "body_too_large", _too_large(len(body), limit))
                    self._take(record, len(body) - record.buffered)
        except TimeoutError:
            # 408: RFC 9110 15.5.9, the request was not complete within the server's wait.
            raise _Refused(
                408,
                "body_timeout",
                f"the body did not arrive within {self._config.body_read_timeout_s} s",
            ) from None
        return bytes(body)

    def _take(self, record: _Record, size: int) -> None:
        if size <= 0:
            return
        if not self._budget.take(size):
            raise _Refused(
                503,
                "body_budget_exhausted",
                "too many request body bytes buffered at once (bridge.max_buffered_body_bytes)",
            )
        record.buffered += size
        BUFFERED_BODY_BYTES.set(self._budget.used)

    def _refuse(self, record: _Record, status: int, code: str, detail: str) -> web.StreamResponse:
        """Answer with the bridge's own error (counted by service and code)."""
        REFUSED.labels(record.service, code).inc()
        response = problem(status, code, detail)
        if code in _CLOSES:
            response.force_close()
        return self._finish(record, response)

    def _replay_marker(self, request: web.BaseRequest, body: bytes) -> tuple[tuple[str, str], ...]:
        """The headers of a verified replay marker, to forward upstream; else `_Refused`.

        A trusted marker means the request is a replayer's call for an event already
        replicated: it is proxied, not published, and its `Xr-Hlc` becomes the service's
        version. So only a signature by a key of this region over this very request (HLC,
        event id, method, target, body) that has not expired is trusted. Anything else is
        refused rather than proxied as a client write: an expired marker of a real replay,
        published again, would apply the write a second time in every region.
        """
        assert self._verifier is not None
        headers = request.headers
        marker = ReplayMarker(
            origin=headers.get(HDR_REPLAYED_FROM, ""),
            event_id=headers.get(HDR_EVENT_ID, ""),
            hlc=headers.get(HDR_HLC, ""),
            method=request.method,
            path=_path_qs(request),
            body=body,
        )
        sig = headers.get(HDR_REPLAYED_SIG)
        try:
            # A marker is made by a replayer of this region, so only this region's keys count.
            verify_replay_marker(
                self._verifier, sig, marker, region=self._config.region, now=time.time()
            )
        except SignatureError as exc:
            raise _marker_refused(exc.reason, str(exc)) from exc
        assert sig is not None
        forwarded = [
            (HDR_REPLAYED_FROM, marker.origin),
            (HDR_EVENT_ID, marker.event_id),
            (HDR_HLC, marker.hlc),
            (HDR_REPLAYED_SIG, sig),
        ]
        return tuple((name, value) for name, value in forwarded if value)

    def _finish(self, record: _Record, response: web.StreamResponse) -> web.StreamResponse:
        """Count a response the bridge produced itself (no streaming)."""
        record.status = response.status
        _observe(record)
        return response

    def _prepare_write(
        self,
        request: web.BaseRequest,
        route: Route,
        target: _Target,
        pairs: tuple[tuple[str, str], ...],
        body: bytes,
    ) -> _Write:
        try:
            targets = request_targets(route, request.headers.get(HDR_TARGETS), self._config.regions)
            event = build_event(
                WriteRequest(request.method, target.path_qs, target.path, pairs, body),
                route,
                event_id=uuid7_str(),
                origin=self._config.region,
                hlc=self._hlc.now(),
                forward=self._config.forward_headers,
                targets=targets,
                lookup=request.headers,
            )
        except (TargetsError, MalformedEventError) as exc:
            raise _Refused(400, "not_replicable", str(exc)) from exc
        if self._signer is not None:
            event = self._signer.sign(event)
        headers, payload = encode(event)
        try:
            check_wire_headers(headers)
        except MalformedEventError as exc:
            raise _Refused(400, "not_replicable", str(exc)) from exc
        # The block is built here, where the size must be known anyway, and sent as it is
        # after the upstream's 2xx: encoding the headers then would delay the response.
        block = header_block(headers)
        size, limit = len(block) + len(payload), self._max_payload()
        if size > limit:
            raise _Refused(413, "too_large_to_replicate", str(EventTooLargeError(size, limit)))
        subject = events_subject(self._config.region, route.service)
        return _Write(event, subject, headers, payload, block)

    async def _forward(
        self, request: web.BaseRequest, route: Route, plan: _Plan, record: _Record
    ) -> web.StreamResponse:
        response = await self._send(request, plan, record)
        write = plan.write
        applied = write is not None and 200 <= response.status < 300
        # Only a `replace` write sets its key's version: a local `apply` write (a create, a
        # partial update) must never make another region's event of the key stale.
        replaces = write is not None and write.event.effective_rule == "replace"
        to_record = applied and replaces and self._versions is not None
        try:
            if write is not None and applied:
                delivered = await self._make_durable(write, record)
                if delivered.outcome is Outcome.SPOOLED:
                    to_record = False  # the drainer records it once it is published
                if to_record and self._versions is not None and self._versions.saturated:
                    to_record = False  # recorded now, before the response: the backpressure
                    await asyncio.shield(self._record_version(write))
                if delivered.outcome is Outcome.FAILED:
                    raise _Refused(
                        503,
                        "event_not_stored",
                        f"{route.service} applied the write but its event {write.event.event_id}"
                        + self._not_stored(delivered),
                    )
            return await self._relay(request, response, record)
        finally:
            # Back to the pool if the body was read to its end, else the connection is closed.
            response.release()
            if to_record and write is not None:
                _ = self._record_version(write)

    async def _send(
        self, request: web.BaseRequest, plan: _Plan, record: _Record
    ) -> aiohttp.ClientResponse:
        added = list(plan.marker)
        if plan.write is not None:
            event = plan.write.event
            added = [(HDR_HLC, str(event.hlc)), (HDR_EVENT_ID, event.event_id)]
        hop = Forwarded(
            client=request.remote, proto=request.scheme, host=request.headers.get("Host")
        )
        headers = upstream_headers(plan.pairs, hop, add=added)
        body: RequestBody = plan.body if plan.body is not None else _stream_or_none(request)
        if plan.body is None and body is not None:
            await _continue(request)  # the body streams to the upstream as it arrives
        started = time.perf_counter()
        try:
            return await self._upstream.send(request.method, plan.url, headers, body)
        except UpstreamTimeoutError as exc:
            raise _Refused(504, "upstream_timeout", str(exc)) from exc
        except UpstreamUnavailableError as exc:
            raise _Refused(502, "upstream_unavailable", str(exc)) from exc
        finally:
            record.upstream_ms = round((time.perf_counter() - started) * 1000, 3)

    def _not_stored(self, delivered: Delivered) -> str:
        if not delivered.dead_lettered:
            return " could not be stored for replication"
        return (
            " was refused by the events stream and is kept in the dead-letter stream "
            f"{dlq_stream(self._config.region)}: it is not replicated unless an operator "
            "replays it (xregion dlq replay)"
        )

    async def _make_durable(self, write: _Write, record: _Record) -> Delivered:
        """Publish or spool (a cancelled handler hands its event on: `Delivery.deliver`).

        The write's version record (services/bridge/versions.py) is started by `_forward`
        once the response is out (or failed): the response does not wait for it unless too
        many records are in flight already, which is the backpressure. Started alongside the
        publish, its KV traffic delays the ack (docs/PERFORMANCE.md, "Measurements behind the
        code"); started after it, its first steps never run in the response's time.
        """
        event = write.event
        started = time.perf_counter()
        delivered = await self._delivery.deliver(
            event, write.subject, write.headers, write.payload, block=write.block
        )
        record.publish_ms = round((time.perf_counter() - started) * 1000, 3)
        record.outcome = delivered.outcome.value
        return delivered

    def _record_version(self, write: _Write) -> asyncio.Future[str]:
        """Start the write's version record (`LocalVersions.start`)."""
        assert self._versions is not None
        event = write.event
        return self._versions.start(
            self._tasks,
            event.service,
            event.key,
            str(event.hlc),
            event.event_id,
            trace_id=event.trace_id,
        )

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, record: _Record
    ) -> web.StreamResponse:
        out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        out.headers.extend(response_headers(upstream.headers.items()))
        if record.outcome is not None and record.event_id is not None:
            out.headers[HDR_EVENT_ID] = record.event_id
        record.status = upstream.status
        _observe(record)
        has_body = request.method != "HEAD" and upstream.status not in _NO_BODY_STATUS
        first = Upstream.available(upstream) if has_body else b""
        if first:
            # The first bytes are here already: send the headers with them, in one write
            # (with nothing at hand the headers go at once, as a streaming client expects).
            out._send_headers_immediately = False
        await out.prepare(request)
        if first and upstream.content.at_eof():  # the whole body: one write, end included
            return await _finish_body(out, first, record)
        complete = True
        if has_body:
            complete = await _copy_body(request, upstream, out, record, first)
        if complete:
            await out.write_eof()
        return out


async def _finish_body(out: web.StreamResponse, body: bytes, record: _Record) -> web.StreamResponse:
    try:
        await out.write_eof(body)
    except ConnectionError as exc:  # the client went away; nothing left to tell it
        record.error = f"client gone: {exc!r}"
    return out


async def _copy_body(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    out: web.StreamResponse,
    record: _Record,
    first: bytes = b"",
) -> bool:
    """Stream the upstream body (`first`: what had arrived already) to the client; False if
    either side broke off.

    If the upstream breaks off, the client is cut off too: the status is already sent, so an
    incomplete body is the only honest signal left.
    """
    try:
        if first:
            await out.write(first)
        async for chunk in Upstream.body(upstream):
            await out.write(chunk)
    except UpstreamBrokeOffError as exc:
        record.error = f"upstream broke off: {exc}"
        if request.transport is not None:
            request.transport.abort()
        return False
    except ConnectionError as exc:  # the client went away; nothing left to tell it
        record.error = f"client gone: {exc!r}"
        return False
    return True


def _marker_refused(reason: str, detail: str) -> _Refused:
    REPLAY_MARKERS_REFUSED.labels(reason).inc()
    log.warning("bridge.replay_marker_refused", reason=reason, error=detail)
    return _Refused(400, "bad_replay_marker", f"replay marker refused ({reason}): {detail}")


def _too_large(size: int, limit: int) -> str:
    return f"a replicated write's body may hold {limit} bytes, this one has {size} or more"


def _stream_or_none(request: web.BaseRequest) -> aiohttp.StreamReader | None:
    return request.content if request.body_exists else None


async def _continue(request: web.BaseRequest) -> None:
    """Answer `Expect: 100-continue` (the low-level server leaves it to us) before reading."""
    expect = request.headers.get("Expect", "")
    if request.version >= aiohttp.HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0


def _path_qs(request: web.BaseRequest) -> str:
    """The raw path and query as sent, minus a bare trailing `?` (an empty query), which the
    HTTP client drops on the way upstream: the event must name what the upstream received."""
    path, _, query = request.raw_path.partition("?")
    return request.raw_path if query else path


# Labelled metric children, looked up once: the label sets are bounded (configured services
# and "none", method_label's methods, HTTP status codes).
_COUNTED: dict[tuple[str, str, int], Counter] = {}
_TIMED: dict[str, Histogram] = {}


def _observe(record: _Record) -> None:
    method = method_label(record.method)
    counted = _COUNTED.get((record.service, method, record.status))
    if counted is None:
        counted = REQUESTS.labels(record.service, method, str(record.status))
        _COUNTED[(record.service, method, record.status)] = counted
    counted.inc()
    timed = _TIMED.get(record.service)
    if timed is None:
        timed = _TIMED[record.service] = REQUEST_DURATION.labels(record.service)
    timed.observe(time.perf_counter() - record.started)


def _log(record: _Record) -> None:
    log.info(
        "bridge.request",
        method=record.method,
        path=record.path if len(record.path) <= 200 else record.path[:200] + "...",
        status=record.status,
        service=record.service,
        event_id=record.event_id,
        outcome=record.outcome,
        replay=record.replay or None,
        duration_ms=record.elapsed_ms(),
        upstream_ms=record.upstream_ms,
        publish_ms=record.publish_ms,
        error=record.loggable_error(),
    )
