"""Dead letters (DESIGN §5): the original message, kept whole, in `XR_DLQ_<region>`.

A dead letter is the original payload and headers, published to
`xr.dlq.<region>.<origin>.<service>` with `Xr-Dlq-Reason`, `Xr-Dlq-Status` (the HTTP status,
or empty), `Xr-Dlq-Attempts` (deliveries), `Xr-Dlq-Error` and `Xr-Dlq-At` (ISO UTC). Origin
and service come from the subject the message took (a replay subject, or for an event its own
events stream refused, `PUBLISH_REFUSED`, the events subject), so even a message that is not a
valid event is filed under the path it took.

`Xr-Dlq-Error` is one line (`one_line`: whitespace collapsed, at most `_ERROR_MAX`
characters, a longer text cut to end in `...`), the cut applied to the whole text. When the
service answered (the replayer's `http_<status>`, and `retries_exhausted` or `too_old` after
an HTTP answer), it ends with what the service said in the last answer: `the service answered
422: {"error":"field x is required"}`, or `<N bytes, gzip>` / `<N bytes, not text>` for a body
that is compressed or binary (services/replayer/excerpt.py); an answer without a body leaves
`the service answered 422`.

Who files what, in their own region's DLQ:

* the replayer: events it cannot apply (reasons such as `http_422`, `retries_exhausted`,
  `bad_signature`);
* the broadcaster: events a target region refused for good (`FORWARD_REFUSED`, with
  `Xr-Dlq-Target`);
* the bridge: events its own events stream refused for good (`PUBLISH_REFUSED`, e.g. over the
  stream's `max_msg_size`), filed under `xr.dlq.<region>.<region>.<service>`.

Its `Nats-Msg-Id` is `dlq:<replay stream sequence>` unless the caller names one (`msg_id`): a
redelivery of the same message (a crash between the dead-letter publish and the ack) is
dropped by the DLQ's duplicate window, while the same event replayed by an operator (a new
replay sequence) can be dead-lettered again. The bridge uses `pub:<event id>`.

`replay_message` turns a dead letter back into the original (no `Xr-Dlq-*`), addressed to the
stream it did not get through:

* a `publish_refused` letter: the origin's events stream, `xr.events.<origin>.<service>`,
  with `Nats-Msg-Id` = its event id, as the bridge publishes it (the events stream never
  stored it, so nothing there holds that id but an earlier replay of the same letter, which
  the duplicate window then drops);
* every other letter: the replay stream of the region's own (a replayer's dead letter), or,
  for an event a target region refused (a broadcaster's dead letter, `Xr-Dlq-Target`), that
  target's; without `Nats-Msg-Id` (the replay stream may still hold the event's id in its
  duplicate window, and would drop the replay; decode only requires the header to equal the
  event id when it is present).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping

from shared.envelope import (
    HDR_DLQ_AT,
    HDR_DLQ_ATTEMPTS,
    HDR_DLQ_ERROR,
    HDR_DLQ_REASON,
    HDR_DLQ_STATUS,
    HDR_DLQ_TARGET,
    HDR_EVENT_ID,
    HDR_HLC,
    HDR_KEY,
    HDR_METHOD,
    HDR_MSG_ID,
    HDR_ORIGIN,
    HDR_PATH,
    HDR_SERVICE,
    HDR_TRACE,
)
from shared.frames import wire_size
from shared.regions import REGION_RE, SERVICE_RE, dlq_subject, events_subject, replay_subject

__all__ = [
    "FORWARD_REFUSED",
    "HDR_DLQ_BODY",
    "PUBLISH_REFUSED",
    "DeadLetter",
    "dead_letter",
    "fit",
    "one_line",
    "path_of",
    "replay_message",
    "slim",
]

# `Xr-Dlq-Reason` of an event a target region refused for good (filed by the broadcaster).
FORWARD_REFUSED = "forward_refused"
# `Xr-Dlq-Reason` of an event the origin's own events stream refused for good (filed by the
# bridge); `replay_message` sends it back to that events stream.
PUBLISH_REFUSED = "publish_refused"

# Set instead of the body when original body + dead-letter headers would exceed max_payload
# (an oversized frame makes the server close the connection for good, NATS_NOTES §2.2).
HDR_DLQ_BODY = "Xr-Dlq-Body"

# What a slim letter keeps of its event's headers: what names the event and the write.
_NAMING = frozenset(
    {
        HDR_MSG_ID, HDR_EVENT_ID, HDR_ORIGIN, HDR_SERVICE, HDR_METHOD, HDR_PATH, HDR_KEY,
        HDR_HLC, HDR_TRACE,
    }
)  # fmt: skip
_UNKNOWN = "unknown"
_ERROR_MAX = 512
_CUT = "..."
_DLQ_PREFIX_LOWER = "xr-dlq-"


class DeadLetter(tuple[str, dict[str, str], bytes]):
    """(subject, headers, payload) ready to publish."""


@functools.lru_cache(maxsize=1024)  # a handful of subjects, one lookup per event
def path_of(subject: str) -> tuple[str, str]:
    """(origin, service) from `xr.replay.<target>.<origin>.<service>`, `xr.dlq.…` (same
    shape) or `xr.events.<origin>.<service>`; `unknown` for a token that is not valid."""
    parts = subject.split(".")
    if len(parts) == 4 and parts[:2] == ["xr", "events"]:
        origin, service = parts[2], parts[3]
    elif len(parts) == 5:
        origin, service = parts[3], parts[4]
    else:
        return _UNKNOWN, _UNKNOWN
    return (
        origin if REGION_RE.fullmatch(origin) else _UNKNOWN,
        service if SERVICE_RE.fullmatch(service) else _UNKNOWN,
    )


def dead_letter(
    *,
    region: str,
    subject: str,
    headers: Mapping[str, str] | None,
    payload: bytes,
    reason: str,
    status: int | None,
    attempts: int,
    error: str,
    now: dt.datetime,
    stream_seq: int | None = None,
    msg_id: str | None = None,
) -> DeadLetter:
    """The dead letter of a message that took `subject`; its `Nats-Msg-Id` is `msg_id`, or
    `dlq:<stream_seq>` when none is given (one of the two is required)."""
    if msg_id is None:
        if stream_seq is None:
            raise ValueError("a dead letter needs a msg_id or the stream sequence of its message")
        msg_id = f"dlq:{stream_seq}"
    origin, service = path_of(subject)
    out = {k: v for k, v in (headers or {}).items() if not _is_ours(k)}
    out.update(
        {
            HDR_MSG_ID: msg_id,
            HDR_DLQ_REASON: reason,
            HDR_DLQ_STATUS: "" if status is None else str(status),
            HDR_DLQ_ATTEMPTS: str(attempts),
            HDR_DLQ_ERROR: one_line(error) or reason,
            HDR_DLQ_AT: now.astimezone(dt.UTC).isoformat(timespec="milliseconds"),
        }
    )
    subject_out = dlq_subject(region, origin if origin != _UNKNOWN else "*", service)
    return DeadLetter((subject_out.replace("*", _UNKNOWN), out, payload))


def fit(letter: DeadLetter, max_payload: int) -> DeadLetter:
    """`letter`, or the same without its body when it would not fit in `max_payload`."""
    subject, headers, payload = letter
    if wire_size(headers, payload) <= max_payload:
        return letter
    dropped = {**headers, HDR_DLQ_BODY: f"dropped {len(payload)} bytes: over max_payload"}
    return DeadLetter((subject, dropped, b""))


def slim(letter: DeadLetter, why: str) -> DeadLetter:
    """`letter` with only the headers that name its event (and its `Xr-Dlq-*` ones) and no
    body, for a DLQ that refuses the whole letter for good (`why`): the write stays on record,
    though it can no longer be replayed (`Xr-Dlq-Body` says what was left out)."""
    subject, headers, payload = letter
    kept = {k: v for k, v in headers.items() if k in _NAMING or _is_ours(k)}
    dropped = headers.get(HDR_DLQ_BODY) or f"dropped {len(payload)} bytes"
    kept[HDR_DLQ_BODY] = f"{dropped}, and the request headers: the DLQ refused them ({why})"
    return DeadLetter((subject, kept, b""))


def replay_message(
    *, region: str, subject: str, headers: Mapping[str, str] | None, payload: bytes
) -> tuple[str, dict[str, str], bytes]:
    """The original event of a dead letter, addressed to the stream it failed to get through:
    its origin's events stream (a bridge's `publish_refused` letter, with `Nats-Msg-Id` = its
    event id), this region's replay stream (a replayer's dead letter), or the target region's
    that refused it (a broadcaster's, `Xr-Dlq-Target`)."""
    origin, service = path_of(subject)
    out = {k: v for k, v in (headers or {}).items() if not _is_ours(k)}
    if (headers or {}).get(HDR_DLQ_REASON) == PUBLISH_REFUSED:
        return _back_to_events(region, origin, service, out), out, payload
    refused_by = (headers or {}).get(HDR_DLQ_TARGET, "")
    to = refused_by if REGION_RE.fullmatch(refused_by) else region
    target = replay_subject(to, origin if origin != _UNKNOWN else "*", service)
    return target.replace("*", _UNKNOWN), out, payload


def _back_to_events(region: str, origin: str, service: str, headers: dict[str, str]) -> str:
    """The events subject a refused publish goes back to; gives `headers` the event's own
    `Nats-Msg-Id` (the events stream's dedup key, as the bridge published it)."""
    event_id = headers.get(HDR_EVENT_ID)
    if event_id:
        headers[HDR_MSG_ID] = event_id
    return events_subject(origin if origin != _UNKNOWN else region, service)


def _is_ours(name: str) -> bool:
    low = name.lower()
    return low.startswith(_DLQ_PREFIX_LOWER) or low == HDR_MSG_ID.lower()


def one_line(text: str) -> str:
    """`text` with its whitespace (newlines included) collapsed to single spaces, at most
    `_ERROR_MAX` characters: a longer line is cut to end in `...`."""
    line = " ".join(text.split())
    return line if len(line) <= _ERROR_MAX else line[: _ERROR_MAX - len(_CUT)] + _CUT
