"""Calls to this region's services: one pooled aiohttp client, short in-process retries.

`Upstream.call(request, service)` returns the final HTTP status (never a body: a replayed
write's response is of no use) or raises `UpstreamError` when every attempt failed at the
transport level. An attempt has an outcome as soon as the status line is in: at most 64 KiB of
the body are then drained (so a kept-alive connection goes back to the pool), a longer or
endless body is cut off by closing the connection, and a body that breaks off or times out
after the status does not turn the answer into a transport failure. `upstream_timeout_s`
bounds the whole attempt (connect, send, status, drain).

Retries are bounded twice (attempts and total time), use jittered exponential backoff, and
log and count each scheduled retry. Retryable statuses (429, 5xx…) are retried the same way;
`wait=False` removes the waits (tests).

The common case is one attempt that answers: it runs without building any retry machinery.
Only a retryable first outcome enters the tenacity loop, which takes that outcome as its
first attempt, so attempts, total time, waits, logs and counts are those of one loop.

Why aiohttp and not httpx (the design card's client): measured on the 2-core dev machine,
64 concurrent keep-alive PUTs of 256 bytes to a local aiohttp service cost the client
~85 µs of CPU per request with aiohttp and ~600 µs with httpx (pool split into shards of 16;
~1,400 µs unsplit). httpx + httpcore + anyio were half of the replayer's CPU, the largest
single cost of a replayed event. aiohttp is already a dependency (admin port, bridge).

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
from types import TracebackType
from typing import Self

import aiohttp
from prometheus_client import Histogram
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
    wait_none,
)
from yarl import URL

from services.replayer.classify import TRANSPORT_ERRORS, Verdict, classify_status
from services.replayer.metrics import UPSTREAM_DURATION, UPSTREAM_RETRIES
from services.replayer.request import ReplayRequest
from shared.logs import get_logger
from shared.settings import ReplayerSettings

__all__ = ["Upstream", "UpstreamError"]

log = get_logger("xr.replayer")

# How much of a response body is read (and dropped) to keep its connection for reuse; a body
# longer than this is not read on, its connection is closed instead.
_DRAIN_BYTES = 64 * 1024


class UpstreamError(Exception):
    """Every attempt failed without a response; the last transport error is the cause."""


class _AttemptError(Exception):
    """One attempt failed at the transport level (translated from aiohttp/timeouts)."""


class Upstream:
    """The pooled HTTP client for local services; an async context manager."""

    def __init__(self, settings: ReplayerSettings, *, wait: bool = True) -> None:
        self._settings = settings
        self._wait = wait
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def call(self, request: ReplayRequest, service: str) -> int:
        """The status of the last attempt; UpstreamError if no attempt got one."""
        started = time.monotonic()
        first: int | _AttemptError
        try:
            first = await self._once(request, service)
        except _AttemptError as exc:
            first = exc
        else:
            if classify_status(first) is not Verdict.RETRY:
                return first
        return await self._retry(request, service, first, time.monotonic() - started)

    async def _retry(
        self, request: ReplayRequest, service: str, first: int | _AttemptError, spent_s: float
    ) -> int:
        s = self._settings
        handed_over = False

        async def attempt() -> int:
            nonlocal handed_over
            if not handed_over:  # the first attempt already happened, in call()
                handed_over = True
                if isinstance(first, _AttemptError):
                    raise first
                return first
            return await self._once(request, service)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(s.retry_attempts)
            | stop_after_delay(max(0.0, s.retry_total_s - spent_s)),
            wait=self._waits(),
            retry=retry_if_exception_type(_AttemptError)
            | retry_if_result(lambda status: classify_status(status) is Verdict.RETRY),
            before_sleep=lambda state: _scheduled(state, service),
            retry_error_callback=_last_outcome,
            reraise=False,
        )
        try:
            status: int = await retrying(attempt)
        except _AttemptError as exc:
            raise UpstreamError(str(exc)) from exc.__cause__
        return status

    def _waits(self) -> wait_exponential_jitter | wait_none:
        if not self._wait:
            return wait_none()
        s = self._settings
        return wait_exponential_jitter(
            multiplier=s.retry_base_s, max=s.retry_max_s, jitter=s.retry_base_s
        )

    async def _once(self, request: ReplayRequest, service: str) -> int:
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
                await _drain(response)
                return response.status
        except TRANSPORT_ERRORS as exc:
            raise _AttemptError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._duration(service).observe(time.perf_counter() - started)

    def _duration(self, service: str) -> Histogram:
        child = self._durations.get(service)
        if child is None:
            child = self._durations[service] = UPSTREAM_DURATION.labels(service)
        return child


async def _drain(response: aiohttp.ClientResponse) -> None:
    """Read and drop at most `_DRAIN_BYTES` of the body; close the connection if more is left.

    The status is the outcome, so the body is read only to hand a kept-alive connection back
    to the pool: a typical short body is drained, a large or endless one is cut off by
    closing the connection (memory per call stays one read buffer, whatever the service
    sends). A body that stalls is still bounded by the attempt's total timeout. An error
    while draining does not undo the status already received: the service has answered, and
    treating it as a transport failure would call it a second time.
    """
    budget = _DRAIN_BYTES
    try:
        while budget > 0 and not response.content.at_eof():
            chunk = await response.content.read(budget)
            if not chunk:
                break
            budget -= len(chunk)
    except TRANSPORT_ERRORS:
        pass  # the body broke off or timed out after the status: the status stands
    if not response.content.at_eof():
        response.close()


def _scheduled(state: RetryCallState, service: str) -> None:
    UPSTREAM_RETRIES.labels(service).inc()
    outcome = state.outcome
    detail = (
        ""
        if outcome is None
        else (repr(outcome.exception()) if outcome.failed else f"status {outcome.result()}")
    )
    log.info(
        "replayer.upstream_retry",
        service=service,
        attempt=state.attempt_number,
        wait_s=round(state.upcoming_sleep, 3),
        cause=detail,
    )


def _last_outcome(state: RetryCallState) -> int:
    """When retries stop: the last status, or re-raise the last transport error."""
    assert state.outcome is not None
    result: int = state.outcome.result()  # re-raises the last exception, if it failed
    return result
