"""What a replay stream may carry that no bridge writes: oversized headers, bytes that were
not UTF-8 on the wire (the NATS client hands them over as U+FFFD)."""

from __future__ import annotations

import pytest

from shared.envelope import HEADER_BUDGET_BYTES, Event, MalformedEventError, decode, encode
from shared.hlc import HlcStamp
from shared.ids import uuid7_str


def _event() -> Event:
    return Event(
        event_id=uuid7_str(),
        origin="us-east",
        service="chaos",
        method="PUT",
        path="/configs/k",
        hlc=HlcStamp(1_700_000_000_000, 0),
        key="/configs/k",
        body=b"{}",
        trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
    )


def test_headers_over_the_budget_are_malformed_naming_the_largest() -> None:
    headers, payload = encode(_event())
    headers["Xr-Req-X-Big"] = "b" * HEADER_BUDGET_BYTES
    with pytest.raises(MalformedEventError) as caught:
        decode(headers, payload)
    assert caught.value.reason == "bad_header"
    assert caught.value.header == "Xr-Req-X-Big"


def test_headers_within_the_budget_decode() -> None:
    headers, payload = encode(_event())
    headers["Xr-Req-X-Big"] = "b" * (HEADER_BUDGET_BYTES // 2)
    assert decode(headers, payload).req_headers == (("x-big", headers["Xr-Req-X-Big"]),)


def test_a_replacement_character_is_refused_as_not_utf8() -> None:
    headers, payload = encode(_event())
    headers["Xr-Path"] = "/configs/k\ufffd"
    with pytest.raises(MalformedEventError, match="not valid UTF-8") as caught:
        decode(headers, payload)
    assert caught.value.header == "Xr-Path"
