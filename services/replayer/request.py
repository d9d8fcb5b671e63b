"""The HTTP call a replayed event becomes (docs/DESIGN.md §5, §9). Pure.

The service name picks this region's configured base URL; the event only ever contributes a
checked path (`pathsafe.request_target`: non-ASCII percent-encoded, escapes kept as they
are), a method from the service's allow-list, a body and forwarded headers. Hop-by-hop
headers and `Host` are never forwarded, nor are forwarded headers allowed to override the
ones the replayer sets.

With a signer, the call carries a signed replay marker (`shared.signing.sign_replay_marker`)
over exactly the `Xr-*` headers it sends and the request target as sent, so a bridge in front
of the service can check it against what it received.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.replayer.pathsafe import UnsafePathError, request_target
from shared.envelope import (
    HDR_EVENT_ID,
    HDR_HLC,
    HDR_REPLAYED_FROM,
    HDR_REPLAYED_SIG,
    HTTP_IDEMPOTENCY_KEY,
    HTTP_TRACEPARENT,
    Event,
)
from shared.settings import ServiceSettings
from shared.signing import ReplayMarker, Signer, sign_replay_marker

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
    signer: Signer | None = None,
    marker_expires_at: int | None = None,
) -> ReplayRequest:
    """The call for `event`; a RequestError (its `reason` says why) when there must be none.

    With `signer`, the call's replay marker is signed, valid until `marker_expires_at` (unix
    seconds, required then)."""
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
    extra = dict(extra_headers or {})
    if signer is not None:
        if marker_expires_at is None:
            raise ValueError("a signed replay marker needs marker_expires_at")
        extra[HDR_REPLAYED_SIG] = _marker_sig(event, path, signer, marker_expires_at)
    return ReplayRequest(
        method=event.method,
        url=service.upstream + path,
        headers=_headers(event, extra),
        body=event.body,
    )


def _marker_sig(event: Event, path: str, signer: Signer, expires_at: int) -> str:
    marker = ReplayMarker(
        origin=event.origin,
        event_id=event.event_id,
        hlc=str(event.hlc),
        method=event.method,
        path=path,
        body=event.body,
    )
    return sign_replay_marker(signer, marker, expires_at=expires_at)


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
