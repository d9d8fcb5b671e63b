"""Calls to this region's services: one pooled httpx client, short in-process retries.

`Upstream.call(request, service)` returns the final `httpx.Response` status (never a body: a
replayed write's response is of no use) or raises `UpstreamError` when every attempt failed
at the transport level. Retries are bounded twice (attempts and total time), use jittered
exponential backoff, and log and count each scheduled retry. Retryable statuses (429, 5xx…)
are retried the same way; `wait=False` removes the waits (tests).

    Exception
     └── UpstreamError           transport failure on the last attempt (.status is None)
"""

from __future__ import annotations

import itertools
import time
from types import TracebackType
from typing import Self

import httpx
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

from services.replayer.classify import Verdict, classify_status
from services.replayer.metrics import UPSTREAM_DURATION, UPSTREAM_RETRIES
from services.replayer.request import ReplayRequest
from shared.logs import get_logger
from shared.settings import ReplayerSettings

__all__ = ["Upstream", "UpstreamError"]

log = get_logger("xr.replayer")
_SHARD_CONNECTIONS = 16


class UpstreamError(Exception):
    """Every attempt failed without a response; the last transport error is the cause."""


class Upstream:
    """The pooled HTTP client for local services; an async context manager."""

    def __init__(
        self,
        settings: ReplayerSettings,
        *,
        wait: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._settings = settings
        self._wait = wait
        # httpcore's pool scans every connection for every queued request (quadratic in the
        # pool size under load), so the pool is split into small shards used in turn.
        shards = max(1, -(-settings.upstream_max_connections // _SHARD_CONNECTIONS))
        per_shard = -(-settings.upstream_max_connections // shards)
        self._clients = [self._client(settings, per_shard, transport) for _ in range(shards)]
        self._next = itertools.cycle(self._clients)

    @staticmethod
    def _client(
        settings: ReplayerSettings, connections: int, transport: httpx.AsyncBaseTransport | None
    ) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(
                settings.upstream_timeout_s, connect=settings.upstream_connect_timeout_s
            ),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            follow_redirects=False,
            trust_env=False,
            transport=transport,
        )

    async def call(self, request: ReplayRequest, service: str) -> int:
        """The status of the last attempt; UpstreamError if no attempt got one."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.retry_attempts)
            | stop_after_delay(self._settings.retry_total_s),
            wait=self._waits(),
            retry=retry_if_exception_type(httpx.TransportError)
            | retry_if_result(lambda status: classify_status(status) is Verdict.RETRY),
            before_sleep=lambda state: _scheduled(state, service),
            retry_error_callback=_last_outcome,
            reraise=False,
        )
        try:
            status: int = await retrying(self._once, request, service)
        except httpx.TransportError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        return status

    def _waits(self) -> wait_exponential_jitter | wait_none:
        if not self._wait:
            return wait_none()
        s = self._settings
        return wait_exponential_jitter(
            multiplier=s.retry_base_s, max=s.retry_max_s, jitter=s.retry_base_s
        )

    async def _once(self, request: ReplayRequest, service: str) -> int:
        started = time.perf_counter()
        try:
            response = await next(self._next).request(
                request.method, request.url, headers=request.headers, content=request.body
            )
            await response.aclose()
        finally:
            UPSTREAM_DURATION.labels(service).observe(time.perf_counter() - started)
        return response.status_code

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


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
