"""Dead letters (docs/DESIGN.md §5): the original message, kept whole, in `XR_DLQ_<region>`.

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
  `bad_signature`), or must not apply where or when they arrived (`NOT_A_TARGET`,
  `SUBJECT_MISMATCH`, `EXPIRED`, `FUTURE_HLC`);
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

An operator replays with rights no filer has, so `replay_message` takes only what the letter's
own subject `xr.dlq.<region>.<origin>.<service>` can vouch for (every filer may publish only
under its own prefix) and refuses the rest (`NotReplayableError`, the letter stays):

* `publish_refused` only under the region's own origin (its bridge), to its events stream;
* `forward_refused` only under the region's own origin (its broadcaster) and with an
  `Xr-Dlq-Target` naming another region, to that region's replay stream;
* any other reason only under another region's origin (its replayer, which only ever receives
  other regions' events), without `Xr-Dlq-Target`, to the region's own replay stream;
* in every case the letter must hold a valid event of that origin and service (and, when it
  names targets, one that includes where it goes), and with a `Verifier` (signing on) one
  signed by a key of its origin.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping, Sequence

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
    MalformedEventError,
    decode,
)
from shared.frames import wire_size
from shared.regions import REGION_RE, SERVICE_RE, dlq_subject, events_subject, replay_subject
from shared.signing import SignatureError, Verifier

__all__ = [
    "EXPIRED",
    "FORWARD_REFUSED",
    "FUTURE_HLC",
    "HDR_DLQ_BODY",
    "NOT_A_TARGET",
    "PUBLISH_REFUSED",
    "SUBJECT_MISMATCH",
    "DeadLetter",
    "NotReplayableError",
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
# Reasons a replayer refuses an event for where or when it arrived, without calling anyone:
# its region is not among the event's targets (or is its origin);
NOT_A_TARGET = "not_a_target"
# its replay subject names another origin or service than the event's (signed) headers;
SUBJECT_MISMATCH = "subject_mismatch"
# it was written, by its HLC, longer ago than `replayer.max_event_age_s`;
EXPIRED = "expired"
# its HLC is further ahead of the replayer's clock than `replayer.max_event_ahead_s`.
FUTURE_HLC = "future_hlc"

# Set instead of the body when original body + dead-letter headers would exceed max_payload
# (an oversized frame makes the server close the connection for good, docs/NATS.md §2.2).
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


class NotReplayableError(ValueError):
    """A dead letter whose reason, target or event its own subject does not vouch for (see
    the module docstring); `str()` says why, in one line."""


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
    *,
    region: str,
    subject: str,
    headers: Mapping[str, str] | None,
    payload: bytes,
    regions: Sequence[str] | None = None,
    verifier: Verifier | None = None,
) -> tuple[str, dict[str, str], bytes]:
    """The original event of a dead letter, addressed to the stream it failed to get through:
    its origin's events stream (a bridge's `publish_refused` letter, with `Nats-Msg-Id` = its
    event id), this region's replay stream (a replayer's dead letter), or the target region's
    that refused it (a broadcaster's, `Xr-Dlq-Target`). NotReplayableError when the letter's
    subject does not vouch for it (module docstring); `regions`, when given, are the only
    origins and targets accepted, and `verifier` checks the event's signature."""
    letter = headers or {}
    origin, service = path_of(subject)
    if not subject.startswith(f"xr.dlq.{region}.") or _UNKNOWN in (origin, service):
        raise NotReplayableError(f"its subject {subject!r} names no origin and service here")
    out = {k: v for k, v in letter.items() if not _is_ours(k)}
    to = _filed_for(region, origin, letter.get(HDR_DLQ_REASON) or "", letter.get(HDR_DLQ_TARGET))
    for name, what in ((origin, "origin"), (to, "target")):
        if regions is not None and name not in regions:
            raise NotReplayableError(f"its {what} {name!r} is not one of the regions")
    if letter.get(HDR_DLQ_REASON) == PUBLISH_REFUSED:  # its own events stream: any targets
        _check_event(out, payload, origin=origin, service=service, to=None, verifier=verifier)
        return _back_to_events(region, service, out), out, payload
    _check_event(out, payload, origin=origin, service=service, to=to, verifier=verifier)
    return replay_subject(to, origin, service), out, payload


def _filed_for(region: str, origin: str, reason: str, refused_by: str | None) -> str:
    """Where a letter of `reason` filed under `origin` in `region`'s DLQ goes back to, if its
    filer could have filed it so; NotReplayableError if not."""
    if reason in (PUBLISH_REFUSED, FORWARD_REFUSED):
        if origin != region:
            raise NotReplayableError(
                f"a {reason} letter is filed under its own region's origin {region}, not {origin}"
            )
        if reason == PUBLISH_REFUSED:
            if refused_by is not None:
                raise NotReplayableError(f"a {reason} letter names no target")
            return region
        if refused_by is None or not REGION_RE.fullmatch(refused_by) or refused_by == region:
            raise NotReplayableError(f"its target {refused_by!r} is not another region")
        return refused_by
    if origin == region:
        raise NotReplayableError(
            f"a {reason or 'reasonless'} letter under {region}'s own origin was not filed by "
            "its replayer, which only receives other regions' events"
        )
    if refused_by is not None:
        raise NotReplayableError(f"a {reason or 'reasonless'} letter names no target")
    return region


def _check_event(
    headers: Mapping[str, str],
    payload: bytes,
    *,
    origin: str,
    service: str,
    to: str | None,
    verifier: Verifier | None,
) -> None:
    """NotReplayableError unless `headers` + `payload` are an event of `origin` and `service`
    meant for `to` (when given; and signed by its origin, with `verifier`)."""
    try:
        event = decode(headers, payload)
    except MalformedEventError as exc:
        raise NotReplayableError(f"it holds no valid event: {exc}") from None
    if (event.origin, event.service) != (origin, service):
        raise NotReplayableError(
            f"its event is of {event.origin}/{event.service}, its subject says {origin}/{service}"
        )
    if to is not None and event.targets is not None and to not in event.targets:
        raise NotReplayableError(f"its event is not meant for {to}")
    if verifier is not None:
        try:
            verifier.verify(event)
        except SignatureError as exc:
            raise NotReplayableError(f"its event's signature fails ({exc.reason}: {exc})") from None


def _back_to_events(region: str, service: str, headers: dict[str, str]) -> str:
    """The events subject a refused publish goes back to; gives `headers` the event's own
    `Nats-Msg-Id` (the events stream's dedup key, as the bridge published it)."""
    event_id = headers.get(HDR_EVENT_ID)
    if event_id:
        headers[HDR_MSG_ID] = event_id
    return events_subject(region, service)


def _is_ours(name: str) -> bool:
    low = name.lower()
    return low.startswith(_DLQ_PREFIX_LOWER) or low == HDR_MSG_ID.lower()


def one_line(text: str) -> str:
    """`text` with its whitespace (newlines included) collapsed to single spaces, at most
    `_ERROR_MAX` characters: a longer line is cut to end in `...`."""
    line = " ".join(text.split())
    return line if len(line) <= _ERROR_MAX else line[: _ERROR_MAX - len(_CUT)] + _CUT
