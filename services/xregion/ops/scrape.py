"""Scraping admin ports: `/metrics` (Prometheus text) and `/readyz` of every process, at once.

The IO edge of `xregion top` and `xregion status`. A scrape never raises for an endpoint that
does not answer: the result says `up = False` and why, so a dashboard shows it as down.
Parsing (`parse_metrics`) is pure.

Errors::

    MetricsFormatError   `/metrics` answered with text that is not Prometheus exposition
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.xregion.ops.deployment import AdminEndpoint

__all__ = [
    "ADMIN_TOKEN_ENV",
    "MetricsFormatError",
    "Sample",
    "Scrape",
    "admin_client",
    "parse_metrics",
    "read_ready",
    "scrape_all",
    "scrape_one",
]

_ERROR_TEXT_MAX = 80
# Not XR_*: those configure services, and this one is the operator's.
ADMIN_TOKEN_ENV = "XREGION_ADMIN_TOKEN"


class MetricsFormatError(Exception):
    """The text is not in the Prometheus exposition format."""


@dataclass(frozen=True, slots=True)
class Sample:
    name: str  # the sample's own name: `..._total`, `..._bucket`, a gauge's name
    labels: Mapping[str, str]
    value: float

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        return self.name == name and all(self.labels.get(k) == v for k, v in labels.items())


@dataclass(frozen=True, slots=True)
class Scrape:
    """One endpoint at one moment. `metrics` is None when `/metrics` did not answer."""

    endpoint: AdminEndpoint
    at: float  # monotonic seconds, when the answer arrived
    metrics: tuple[Sample, ...] | None = None
    ready: str | None = None  # `/readyz` status (ok|degraded|down); None: no answer
    error: str | None = None
    _index: dict[str, list[Sample]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        for sample in self.metrics or ():
            self._index.setdefault(sample.name, []).append(sample)

    @property
    def up(self) -> bool:
        return self.metrics is not None

    def samples(self, name: str, labels: Mapping[str, str] | None = None) -> list[Sample]:
        """Samples called `name` whose labels include `labels`."""
        wanted = labels or {}
        return [s for s in self._index.get(name, ()) if s.matches(name, wanted)]


def parse_metrics(text: str) -> tuple[Sample, ...]:
    """Every sample of a Prometheus text exposition (`_created` samples dropped)."""
    try:
        return tuple(
            Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if not s.name.endswith("_created")
        )
    except (ValueError, TypeError, IndexError) as exc:
        raise MetricsFormatError(f"not Prometheus text: {exc}") from exc


def admin_client(timeout_s: float) -> httpx.AsyncClient:
    """An HTTP client for admin ports: short timeouts, no proxies from the environment, and
    the admin token from `$XREGION_ADMIN_TOKEN` when set (docs/SECURITY.md)."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    token = os.environ.get(ADMIN_TOKEN_ENV)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout_s), limits=limits, trust_env=False, headers=headers
    )


async def scrape_all(client: httpx.AsyncClient, endpoints: Iterable[AdminEndpoint]) -> list[Scrape]:
    """`/metrics` and `/readyz` of every endpoint, concurrently, in the endpoints' order."""
    return list(await asyncio.gather(*(scrape_one(client, e) for e in endpoints)))


async def scrape_one(client: httpx.AsyncClient, endpoint: AdminEndpoint) -> Scrape:
    metrics, ready = await asyncio.gather(
        _read_metrics(client, endpoint.url), read_ready(client, endpoint.url)
    )
    at = time.monotonic()
    if isinstance(metrics, str):
        return Scrape(endpoint, at, ready=ready, error=metrics)
    return Scrape(endpoint, at, metrics=metrics, ready=ready)


async def _read_metrics(client: httpx.AsyncClient, base: str) -> tuple[Sample, ...] | str:
    """The samples, or why there are none (one short line)."""
    try:
        reply = await client.get(base + "/metrics")
        reply.raise_for_status()
        return parse_metrics(reply.text)
    except httpx.HTTPStatusError as exc:
        return f"/metrics answered {exc.response.status_code}"
    except httpx.HTTPError as exc:
        return _describe(exc)
    except MetricsFormatError as exc:
        return _short(str(exc))


async def read_ready(client: httpx.AsyncClient, base: str) -> str | None:
    """The `status` of `/readyz` (it answers 503 with a body when down); None: no answer."""
    try:
        reply = await client.get(base + "/readyz")
        status = reply.json().get("status")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"  # httpx says "All connection attempts failed": no more
    return _short(f"{type(exc).__name__}: {exc}")


def _short(text: str) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= _ERROR_TEXT_MAX else line[: _ERROR_TEXT_MAX - 1] + "…"
