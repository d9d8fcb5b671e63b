"""Events the origin's own events stream refuses for good, the pure parts: which PubAck errors
the bridge's publisher treats as a refusal for good, the shape of the bridge's dead letter,
and where `xregion dlq replay` sends it back to (its events stream, as a valid event)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from nats.js.api import PubAck

from services.bridge.publisher import PublishRefusedError, PublishUnknownError, _pub_ack
from shared.dlq import HDR_DLQ_BODY, PUBLISH_REFUSED, dead_letter, fit, path_of, replay_message
from shared.envelope import (
    HDR_DLQ_AT,
    HDR_DLQ_ATTEMPTS,
    HDR_DLQ_ERROR,
    HDR_DLQ_REASON,
    HDR_DLQ_STATUS,
    HDR_MSG_ID,
    Event,
    decode,
    encode,
    new_traceparent,
)
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.pubacks import PERMANENT_ERR_CODES, describe, is_permanent

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
EVENTS_SUBJECT = "xr.events.us-east.catalog"
TOO_BIG = {"code": 400, "err_code": 10054, "description": "message size exceeds maximum allowed"}


def answer(reply: object, headers: dict[str, str] | None = None) -> Msg:
    """A PubAck message as the publisher's ack inbox receives it."""
    return Msg(
        cast(Any, None), subject="_INBOX.x.1", data=json.dumps(reply).encode(), headers=headers
    )


def refused_event(body: bytes = b"x" * 1024) -> tuple[Event, dict[str, str], bytes]:
    event = Event(
        event_id=uuid7_str(), origin="us-east", service="catalog", method="PUT",
        path="/catalog/items/1?v=2", hlc=HlcStamp(1_700_000_000_000, 3), key="/catalog/items/1",
        body=body, trace=new_traceparent(), req_headers=(("content-type", "text/plain"),),
    )  # fmt: skip
    headers, payload = encode(event)
    return event, headers, payload


def bridge_letter(headers: dict[str, str], payload: bytes, event_id: str) -> Any:
    return dead_letter(
        region="us-east", subject=EVENTS_SUBJECT, headers=headers, payload=payload,
        reason=PUBLISH_REFUSED, status=None, attempts=1, now=NOW, msg_id=f"pub:{event_id}",
        error="JetStream refused the event for good: message size exceeds maximum allowed "
        "(err_code 10054)",
    )  # fmt: skip


# ------------------------------------------------------------------ classification


@pytest.mark.parametrize("err_code", sorted(PERMANENT_ERR_CODES))
def test_a_permanent_error_reply_is_a_refusal_for_good(err_code: int) -> None:
    error = {"code": 400, "err_code": err_code, "description": "about the message"}
    with pytest.raises(PublishRefusedError) as refused:
        _pub_ack(answer({"error": error, "stream": "XR_EVENTS_US_EAST", "seq": 0}))
    assert (refused.value.err_code, refused.value.description) == (err_code, "about the message")
    assert f"err_code {err_code}" in str(refused.value)


@pytest.mark.parametrize(
    "error",
    [
        {"code": 400, "err_code": 10060, "description": "expected stream does not match"},
        {"code": 503, "err_code": 10077, "description": "insufficient resources"},
        {"code": 500, "err_code": 10008, "description": "JetStream system temporarily unavailable"},
        {"code": 400, "description": "no err_code"},
        "not an object",
    ],
)
def test_any_other_error_reply_leaves_the_outcome_unknown(error: object) -> None:
    with pytest.raises(PublishUnknownError, match="refused"):
        _pub_ack(answer({"error": error}))


def test_an_ack_and_an_unreadable_answer_are_not_refusals() -> None:
    ack = _pub_ack(answer({"stream": "XR_EVENTS_US_EAST", "seq": 7, "duplicate": True}))
    assert ack == PubAck(stream="XR_EVENTS_US_EAST", seq=7, duplicate=True)
    with pytest.raises(PublishUnknownError, match="unreadable"):
        _pub_ack(answer(["no", "object"]))


def test_the_shared_classification_and_its_one_line() -> None:
    assert is_permanent(TOO_BIG)
    assert not is_permanent({**TOO_BIG, "err_code": 10077})
    assert describe(TOO_BIG) == "message size exceeds maximum allowed (err_code 10054)"
    assert describe("odd") == "odd"


# ------------------------------------------------------------------ the dead letter


def test_path_of_reads_an_events_subject() -> None:
    assert path_of(EVENTS_SUBJECT) == ("us-east", "catalog")
    assert path_of("xr.events.US.catalog") == ("unknown", "catalog")
    assert path_of("xr.events.us-east") == ("unknown", "unknown")
    assert path_of("xr.other.us-east.catalog") == ("unknown", "unknown")
    assert path_of("xr.dlq.us-east.us-east.catalog") == ("us-east", "catalog")


def test_the_bridges_dead_letter_keeps_the_event_under_its_own_origin() -> None:
    event, headers, payload = refused_event()
    subject, out, body = bridge_letter(headers, payload, event.event_id)
    assert subject == "xr.dlq.us-east.us-east.catalog"
    assert body == payload
    assert {k: v for k, v in out.items() if k in headers and k != HDR_MSG_ID} == {
        k: v for k, v in headers.items() if k != HDR_MSG_ID
    }
    assert out[HDR_MSG_ID] == f"pub:{event.event_id}"
    assert out[HDR_DLQ_REASON] == "publish_refused"
    assert "message size exceeds maximum allowed (err_code 10054)" in out[HDR_DLQ_ERROR]
    assert (out[HDR_DLQ_STATUS], out[HDR_DLQ_ATTEMPTS]) == ("", "1")
    assert out[HDR_DLQ_AT] == "2026-01-01T00:00:00.000+00:00"
    # Over max_payload it goes without its body (and can then not be replayed).
    _, slim, nothing = fit(bridge_letter(headers, payload, event.event_id), 1024)
    assert nothing == b""
    assert slim[HDR_DLQ_BODY] == f"dropped {len(payload)} bytes: over max_payload"


def test_a_dead_letter_needs_an_id() -> None:
    with pytest.raises(ValueError, match="msg_id"):
        dead_letter(
            region="us-east", subject=EVENTS_SUBJECT, headers={}, payload=b"",
            reason=PUBLISH_REFUSED, status=None, attempts=1, error="x", now=NOW,
        )  # fmt: skip


# ------------------------------------------------------------------ replay


def test_a_refused_publish_replays_to_its_events_stream_as_a_valid_event() -> None:
    event, headers, payload = refused_event()
    subject, out, body = bridge_letter(headers, payload, event.event_id)
    back_subject, back, back_body = replay_message(
        region="us-east", subject=subject, headers=out, payload=body
    )
    assert back_subject == EVENTS_SUBJECT
    assert back == headers  # exactly what the bridge published: Nats-Msg-Id = the event id
    assert back[HDR_MSG_ID] == event.event_id
    assert decode(back, back_body) == event


def test_other_dead_letters_still_replay_to_a_replay_stream_without_a_msg_id() -> None:
    _, headers, payload = refused_event()
    subject, out, body = dead_letter(
        region="eu-west", subject="xr.replay.eu-west.us-east.catalog", headers=headers,
        payload=payload, stream_seq=4, reason="client_error", status=400, attempts=1,
        error="400", now=NOW,
    )  # fmt: skip
    assert out[HDR_MSG_ID] == "dlq:4"
    back_subject, back, _ = replay_message(region="eu-west", subject=subject, headers=out,
                                           payload=body)  # fmt: skip
    assert back_subject == "xr.replay.eu-west.us-east.catalog"
    assert HDR_MSG_ID not in back
