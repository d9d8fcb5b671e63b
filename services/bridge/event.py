"""Turning a write request into an `Event` (pure; docs/DESIGN.md §4).

The bridge builds the event *before* it calls the upstream, so a write that could not be
replicated (a path or key the envelope refuses, a frame over NATS' max_payload) is refused
before the service sees it, never after it has happened.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

from services.bridge.headers import event_headers
from services.bridge.routing import Route
from shared.envelope import Event, new_traceparent, parse_traceparent
from shared.hlc import HlcStamp

__all__ = ["WriteRequest", "build_event", "create_key", "trace_context"]


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """What the bridge knows of a write when it builds its event."""

    method: str
    path_qs: str  # raw path plus query string, as sent
    path: str  # raw path without the query string
    headers: tuple[tuple[str, str], ...]  # the client's headers, in order, repeats kept
    body: bytes


def trace_context(headers: Iterable[tuple[str, str]]) -> str:
    """The client's `traceparent` if it sent a valid one, else a freshly minted one."""
    for name, value in headers:
        if name.lower() == "traceparent":
            parsed = parse_traceparent(value)
            if parsed is not None:
                return parsed
    return new_traceparent()


def build_event(
    request: WriteRequest,
    route: Route,
    *,
    event_id: str,
    origin: str,
    hlc: HlcStamp,
    forward: frozenset[str],
    targets: tuple[str, ...] | None = None,
    lookup: Mapping[str, str] | None = None,
) -> Event:
    """The event of `request` (unsigned). Raises MalformedEventError naming the bad field.

    `lookup`: the same headers as a case-insensitive mapping, if the caller has one already.
    """
    if lookup is None:
        lookup = CIMultiDict(request.headers)
    rule = route.rule_for(request.method, request.path)
    key = None
    if rule == "apply" and request.method == "POST" and route.settings.create_key is not None:
        key = create_key(route.settings.create_key, request.path, request.body)
    return Event(
        event_id=event_id,
        origin=origin,
        service=route.service,
        method=request.method,
        path=request.path_qs,
        hlc=hlc,
        key=key or route.key.key_for(request.path, lookup),
        rule=rule,
        body=request.body,
        trace=trace_context(request.headers),
        req_headers=event_headers(request.headers, forward),
        targets=targets,
    )


def create_key(rule: str, path: str, body: bytes) -> str | None:
    """The key of the resource a create makes, by `rule` ("json:<field>"): `path/<value>`;
    None when the body does not name it (the create is then keyed like any write)."""
    field = rule.removeprefix("json:")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    value = document.get(field) if isinstance(document, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    text = str(value)
    if not text or text != text.strip() or not text.isprintable():
        return None  # not a key the envelope takes: the write is keyed by its path instead
    return f"{path.rstrip('/')}/{text}"
