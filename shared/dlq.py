"""Dead letters (DESIGN §5): the original message, kept whole, in `XR_DLQ_<region>`.

A dead letter is the original payload and headers, published to
`xr.dlq.<region>.<origin>.<service>` with `Xr-Dlq-Reason`, `Xr-Dlq-Status` (the HTTP status,
or empty), `Xr-Dlq-Attempts` (deliveries), `Xr-Dlq-Error` (one line) and `Xr-Dlq-At` (ISO
UTC). Origin and service come from the replay subject, so even a message that is not a valid
event is filed under the path it took.

Its `Nats-Msg-Id` is `dlq:<replay stream sequence>`: a redelivery of the same message (a crash
between the dead-letter publish and the ack) is dropped by the DLQ's duplicate window, while
the same event replayed by an operator (a new replay sequence) can be dead-lettered again.
`replay_message` turns a dead letter back into the original (no `Xr-Dlq-*`, no
`Nats-Msg-Id`, since decode requires that header to equal the event id), addressed to the
replay stream it did not get through: the region's own, or, for an event a target region
refused (a broadcaster's dead letter, `Xr-Dlq-Target`), that target's.
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
    HDR_MSG_ID,
    wire_size,
)
from shared.regions import REGION_RE, SERVICE_RE, dlq_subject, replay_subject

__all__ = [
    "FORWARD_REFUSED",
    "HDR_DLQ_BODY",
    "DeadLetter",
    "dead_letter",
    "fit",
    "path_of",
    "replay_message",
]

# `Xr-Dlq-Reason` of an event a target region refused for good (filed by the broadcaster).
FORWARD_REFUSED = "forward_refused"

# Set instead of the body when original body + dead-letter headers would exceed max_payload
# (an oversized frame makes the server close the connection for good, NATS_NOTES §2.2).
HDR_DLQ_BODY = "Xr-Dlq-Body"

_UNKNOWN = "unknown"
_ERROR_MAX = 512
_DLQ_PREFIX_LOWER = "xr-dlq-"


class DeadLetter(tuple[str, dict[str, str], bytes]):
    """(subject, headers, payload) ready to publish."""


@functools.lru_cache(maxsize=1024)  # a handful of subjects, one lookup per event
def path_of(subject: str) -> tuple[str, str]:
    """(origin, service) from `xr.replay.<target>.<origin>.<service>` or `xr.dlq.…`."""
    parts = subject.split(".")
    origin = parts[3] if len(parts) == 5 and REGION_RE.fullmatch(parts[3]) else _UNKNOWN
    service = parts[4] if len(parts) == 5 and SERVICE_RE.fullmatch(parts[4]) else _UNKNOWN
    return origin, service


def dead_letter(
    *,
    region: str,
    subject: str,
    headers: Mapping[str, str] | None,
    payload: bytes,
    stream_seq: int,
    reason: str,
    status: int | None,
    attempts: int,
    error: str,
    now: dt.datetime,
) -> DeadLetter:
    origin, service = path_of(subject)
    out = {k: v for k, v in (headers or {}).items() if not _is_ours(k)}
    out.update(
        {
            HDR_MSG_ID: f"dlq:{stream_seq}",
            HDR_DLQ_REASON: reason,
            HDR_DLQ_STATUS: "" if status is None else str(status),
            HDR_DLQ_ATTEMPTS: str(attempts),
            HDR_DLQ_ERROR: _one_line(error) or reason,
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


def replay_message(
    *, region: str, subject: str, headers: Mapping[str, str] | None, payload: bytes
) -> tuple[str, dict[str, str], bytes]:
    """The original event of a dead letter, addressed to the replay stream it failed to get
    through: this region's (a replayer's dead letter), or the target region's that refused it
    (a broadcaster's, `Xr-Dlq-Target`)."""
    origin, service = path_of(subject)
    out = {k: v for k, v in (headers or {}).items() if not _is_ours(k)}
    refused_by = (headers or {}).get(HDR_DLQ_TARGET, "")
    to = refused_by if REGION_RE.fullmatch(refused_by) else region
    target = replay_subject(to, origin if origin != _UNKNOWN else "*", service)
    return target.replace("*", _UNKNOWN), out, payload


def _is_ours(name: str) -> bool:
    low = name.lower()
    return low.startswith(_DLQ_PREFIX_LOWER) or low == HDR_MSG_ID.lower()


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _ERROR_MAX else line[:_ERROR_MAX] + "..."
