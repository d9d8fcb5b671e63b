"""Calls to this region's services: one pooled aiohttp client, short in-process retries.

`Upstream.call(request, service)` returns the last attempt's `Answer` or raises
`UpstreamError` when every attempt failed at the transport level. An attempt has an outcome as
soon as the status line is in: at most 64 KiB of the body are then drained (so a kept-alive
connection goes back to the pool), a longer or endless body is cut off by closing the
connection, and a body that breaks off or times out after the status does not turn the answer
into a transport failure. `upstream_timeout_s` bounds the whole attempt (connect, send,
status, drain).

A 2xx body is of no use (a replayed write's outcome is its status) and is dropped unread:
`Answer(status)`, one prebuilt per status, so the hot path builds no answer object. For any
other status the drain keeps the body's first `EXCERPT_BYTES` as they go by, and the answer
carries their one-line excerpt (services/replayer/excerpt.py): what the service said, for the
dead letter and the logs.

Retries are bounded twice (attempts and total time), use jittered exponential backoff, and
log and count each scheduled retry (`shared/retry.py`, component `replayer.upstream`, plus
`xr_replayer_upstream_retries_total{service}`). Retryable statuses (429, 5xx…) are retried
the same way; `shared.retry.set_waits(False)` removes the waits (tests).

The common case is one attempt that answers: it runs without building any retry machinery.
Only a retryable first outcome enters the tenacity loop, which takes that outcome as its
first attempt, so attempts, total time, waits, logs and counts are those of one loop.

Why aiohttp and not httpx: a replayed call costs the client several times less CPU with
aiohttp, and httpx's stack was the largest single cost of a replayed event
(docs/PERFORMANCE.md, "Measurements behind the code"). aiohttp is already a dependency (admin
port, bridge).

The request goes out as built: the URL is passed pre-encoded (`yarl.URL(encoded=True)`, no
re-quoting or normalisation of the checked path), no cookies are kept, redirects are never
followed, and no Content-Type is invented for a body that had none. Note that aiohttp
re-sends an idempotent request (PUT, DELETE) once by itself when the connection drops
without an answer (a keep-alive connection the service had closed); it carries the same
`Idempotency-Key`, like every retry.

    Exception
     └── UpstreamError           transport failure on the last attempt
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Self

import aiohttp
from aiohttp import hdrs
from prometheus_client import Histogram
from tenacity import RetryCallState, retry_if_exception_type, retry_if_result
from yarl import URL

from services.replayer.classify import TRANSPORT_ERRORS, Verdict, classify_status
from services.replayer.excerpt import EXCERPT_BYTES, excerpt
from services.replayer.metrics import UPSTREAM_DURATION, UPSTREAM_RETRIES
from services.replayer.request import ReplayRequest
from shared.lifecycle import Closeable
from shared.logs import get_logger
from shared.retry import RetryPolicy
from shared.settings import ReplayerSettings

__all__ = ["Answer", "Upstream", "UpstreamError"]

log = get_logger("xr.replayer")

# How much of a response body is read (and dropped) to keep its connection for reuse; a body
# longer than this is not read on, its connection is closed instead.
_DRAIN_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """The service's answer to one attempt: its status and, for a status other than 2xx, an
    excerpt of its body (`""` for a 2xx or an empty body)."""

    status: int
    excerpt: str = ""


# The answers of the hot path, built once: a 2xx keeps nothing of its body.
_BARE_2XX = {status: Answer(status) for status in range(200, 300)}


class UpstreamError(Exception):
    """Every attempt failed without a response; the last transport error is the cause."""


class _AttemptError(Exception):
    """One attempt failed at the transport level (translated from aiohttp/timeouts)."""


class Upstream(Closeable):
    """The pooled HTTP client for local services; an async context manager."""

    def __init__(self, settings: ReplayerSettings) -> None:
        self._settings = settings
        self._retry_policy = RetryPolicy.jittered(
            "replayer.upstream",
            base_s=settings.retry_base_s,
            max_s=settings.retry_max_s,
            jitter_s=settings.retry_base_s,
            attempts=settings.retry_attempts,
            timeout_s=settings.retry_total_s,
        )
        self._session: aiohttp.ClientSession | None = None
        self._durations: dict[str, Histogram] = {}

    async def __aenter__(self) -> Self:
        s = self._settings
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=s.upstream_max_connections, limit_per_host=0),
            timeout=aiohttp.ClientTimeout(
                total=s.upstream_timeout_s, sock_connect=s.upstream_connect_timeout_s
            ),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("Content-Type",),
            trust_env=False,
        )
        return self

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def call(self, request: ReplayRequest, service: str) -> Answer:
        """The answer to the last attempt; UpstreamError if no attempt got one."""
        started = time.monotonic()
        first: Answer | _AttemptError
        try:
            first = await self._once(request, service)
        except _AttemptError as exc:
            first = exc
        else:
            if classify_status(first.status) is not Verdict.RETRY:
                return first
        return await self._retry(request, service, first, time.monotonic() - started)

    async def _retry(
        self, request: ReplayRequest, service: str, first: Answer | _AttemptError, spent_s: float
    ) -> Answer:
        handed_over = False

        async def attempt() -> Answer:
            nonlocal handed_over
            if not handed_over:  # the first attempt already happened, in call()
                handed_over = True
                if isinstance(first, _AttemptError):
                    raise first
                return first
            return await self._once(request, service)

        retrying = self._retry_policy.retrying(
            retry=retry_if_exception_type(_AttemptError)
            | retry_if_result(lambda answer: classify_status(answer.status) is Verdict.RETRY),
            describe=lambda state: _scheduled(state, service),
            retry_error_callback=_last_outcome,
            spent_s=spent_s,
        )
        try:
            answer: Answer = await retrying(attempt)
        except _AttemptError as exc:
            raise UpstreamError(str(exc)) from exc.__cause__
        return answer

    async def _once(self, request: ReplayRequest, service: str) -> Answer:
        session = self._session
        assert session is not None, "Upstream used outside `async with`"
        started = time.perf_counter()
        try:
            async with session.request(
                request.method,
                URL(request.url, encoded=True),
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:  # the hot path: nothing of the body is kept
                    await _drain(response)
                    return _BARE_2XX[status]
                return await _answer(response)
        except TRANSPORT_ERRORS as exc:
            raise _AttemptError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._duration(service).observe(time.perf_counter() - started)

    def _duration(self, service: str) -> Histogram:
        child = self._durations.get(service)
        if child is None:
            child = self._durations[service] = UPSTREAM_DURATION.labels(service)
        return child


async def _answer(response: aiohttp.ClientResponse) -> Answer:
    """A non-2xx answer: its status and the excerpt of the body's head, kept while draining."""
    kept = _Kept()
    whole = await _drain(response, kept)
    said = excerpt(
        bytes(kept.head), response.headers.get(hdrs.CONTENT_ENCODING), size=kept.size, whole=whole
    )
    return Answer(response.status, said)


class _Kept:
    """The first `EXCERPT_BYTES` of a body, and how many bytes of it were read in all."""

    __slots__ = ("head", "size")

    def __init__(self) -> None:
        self.head = bytearray()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = EXCERPT_BYTES - len(self.head)
        if room > 0:
            self.head += chunk[:room]


async def _drain(response: aiohttp.ClientResponse, kept: _Kept | None = None) -> bool:
    """Read at most `_DRAIN_BYTES` of the body; close the connection if more is left. True if
    the body was read to its end. `kept` (a non-2xx answer) keeps its head as it goes by.

    The status is the outcome, so the body is read only to hand a kept-alive connection back
    to the pool: a typical short body is drained, a large or endless one is cut off by
    closing the connection (memory per call stays one read buffer plus at most
    `EXCERPT_BYTES` kept, whatever the service sends). A body that stalls is still bounded by
    the attempt's total timeout. An error while draining does not undo the status already
    received: the service has answered, and treating it as a transport failure would call it
    a second time.
    """
    budget = _DRAIN_BYTES
    try:
        while budget > 0 and not response.content.at_eof():
            chunk = await response.content.read(budget)
            if not chunk:
                break
            budget -= len(chunk)
            if kept is not None:
                kept.add(chunk)
    except TRANSPORT_ERRORS:
        pass  # the body broke off or timed out after the status: the status stands
    if response.content.at_eof():
        return True
    response.close()
    return False


def _scheduled(state: RetryCallState, service: str) -> tuple[str, dict[str, object]]:
    """The reason and log context of a scheduled retry; counts it for the service too."""
    UPSTREAM_RETRIES.labels(service).inc()
    outcome = state.outcome
    if outcome is None:
        return "transport", {"service": service, "cause": ""}
    if outcome.failed:
        return "transport", {"service": service, "cause": repr(outcome.exception())}
    answer: Answer = outcome.result()
    cause = {"cause": f"status {answer.status}", "service_answer": answer.excerpt}
    return "status", {"service": service, **cause}


def _last_outcome(state: RetryCallState) -> Answer:
    """When retries stop: the last answer, or re-raise the last transport error."""
    assert state.outcome is not None
    result: Answer = state.outcome.result()  # re-raises the last exception, if it failed
    return result
