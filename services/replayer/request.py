"""The HTTP call a replayed event becomes (DESIGN §5, §9). Pure.

The service name picks this region's configured base URL; the event only ever contributes a
checked path (`pathsafe.request_target`: non-ASCII percent-encoded, escapes kept as they
are), a method from the service's allow-list, a body and forwarded headers. Hop-by-hop
headers and `Host` are never forwarded, nor are forwarded headers allowed to override the
ones the replayer sets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.replayer.pathsafe import UnsafePathError, request_target
from shared.envelope import (
    HDR_EVENT_ID,
    HDR_HLC,
    HDR_REPLAYED_FROM,
    HTTP_IDEMPOTENCY_KEY,
    HTTP_TRACEPARENT,
    Event,
)
from shared.settings import ServiceSettings

__all__ = [
    "HOP_BY_HOP",
    "MethodNotAllowedError",
    "ReplayRequest",
    "RequestError",
    "UnknownServiceError",
    "UnsafeRequestPathError",
    "build_request",
]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


class RequestError(ValueError):
    """An event that cannot become a call; `reason` is the dead-letter reason."""

    reason = "bad_request"


class UnknownServiceError(RequestError):
    reason = "unknown_service"


class MethodNotAllowedError(RequestError):
    reason = "method_not_allowed"


class UnsafeRequestPathError(RequestError):
    reason = "unsafe_path"


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def build_request(
    event: Event,
    services: Mapping[str, ServiceSettings],
    *,
    extra_headers: Mapping[str, str] | None = None,
) -> ReplayRequest:
    """The call for `event`; a RequestError (its `reason` says why) when there must be none."""
    service = services.get(event.service)
    if service is None:
        raise UnknownServiceError(f"service {event.service!r} is not configured here")
    if event.method not in service.replicate:
        raise MethodNotAllowedError(
            f"method {event.method} is not replicated for service {event.service!r}"
        )
    try:
        path = request_target(event.path)
    except UnsafePathError as exc:
        raise UnsafeRequestPathError(str(exc)) from exc
    return ReplayRequest(
        method=event.method,
        url=service.upstream + path,
        headers=_headers(event, extra_headers or {}),
        body=event.body,
    )


def _headers(event: Event, extra: Mapping[str, str]) -> dict[str, str]:
    ours = {
        HTTP_IDEMPOTENCY_KEY: event.event_id,
        HDR_REPLAYED_FROM: event.origin,
        HDR_EVENT_ID: event.event_id,
        HDR_HLC: str(event.hlc),
        HTTP_TRACEPARENT: event.trace,
        **extra,
    }
    taken = {name.lower() for name in ours}
    headers = {
        name: value
        for name, value in event.req_headers
        if name not in HOP_BY_HOP and name not in taken and not name.startswith("xr-")
    }
    headers.update(ours)
    return headers
