"""Building an event from a write (pure)."""

from __future__ import annotations

import pytest

from services.bridge.event import WriteRequest, build_event, trace_context
from services.bridge.routing import Route
from shared.envelope import MalformedEventError, decode, encode
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.settings import ServiceSettings

ROUTE = Route.from_settings(
    "orders",
    ServiceSettings(upstream="http://127.0.0.1:1", routes=["/orders"], key="header:X-Tenant"),
)


def write(path_qs: str, *headers: tuple[str, str], body: bytes = b"{}") -> WriteRequest:
    return WriteRequest("PUT", path_qs, path_qs.partition("?")[0], tuple(headers), body)


def test_event_round_trips_through_the_envelope() -> None:
    event_id = uuid7_str()
    event = build_event(
        write("/orders/1?x=1", ("X-Tenant", "acme"), ("Content-Type", "text/plain")),
        ROUTE,
        event_id=event_id,
        origin="us-east",
        hlc=HlcStamp(1_700_000_000_000, 3),
        forward=frozenset({"content-type"}),
        targets=("eu-west",),
    )
    assert (event.key, event.path, event.method) == ("acme", "/orders/1?x=1", "PUT")
    assert event.req_headers == (("content-type", "text/plain"),)
    assert decode(*encode(event)) == event


def test_trace_context_is_kept_when_valid_and_minted_otherwise() -> None:
    valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert trace_context([("TraceParent", valid)]) == valid
    minted = trace_context([("traceparent", "garbage")])
    assert minted != "garbage"
    assert minted.startswith("00-")


def test_a_path_the_envelope_refuses_is_an_error_before_the_upstream() -> None:
    with pytest.raises(MalformedEventError):
        build_event(
            write("//evil.example.com/x"),
            ROUTE,
            event_id=uuid7_str(),
            origin="us-east",
            hlc=HlcStamp(1, 0),
            forward=frozenset(),
        )
