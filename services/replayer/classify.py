"""What to do with an event, decided from what is known without calling anyone (docs/DESIGN.md §5).
Pure.

An HTTP status or a transport error:

* 2xx → `applied`;
* 409, 412 → `stale` (the service holds a newer version);
* 408, 425, 429, 5xx, connection errors and timeouts → `retry`;
* every other status (other 4xx, 1xx, 3xx: a replayed call never follows redirects) → `poison`.

Where and when a decoded (and, with signing on, verified) event arrived, `misplaced`: its
dead-letter reason when the region must not apply it (a validly signed event copied onto
another replay subject, into a region it was not meant for, re-published after its key's
version record may have expired, or stamped further ahead of the local clock than clocks can
drift apart), else None. `canary_refusal` is the same for a canary, whose
time is only trusted once it is shown to be this region's canary from its origin.
"""

from __future__ import annotations

import enum

import aiohttp

from shared.dlq import EXPIRED, FUTURE_HLC, NOT_A_TARGET, SUBJECT_MISMATCH
from shared.envelope import CANARY_SERVICE, Event
from shared.regions import replay_subject

__all__ = [
    "TRANSPORT_ERRORS",
    "Verdict",
    "canary_refusal",
    "classify_error",
    "classify_status",
    "misplaced",
]

# What one HTTP attempt raises when it got no response: connect, read, write, protocol
# errors and timeouts (aiohttp's own, the total-time limit, and OS-level socket errors).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, TimeoutError, OSError)


class Verdict(enum.StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    RETRY = "retry"
    POISON = "poison"


_STALE = frozenset({409, 412})
_RETRY = frozenset({408, 425, 429})


def classify_status(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.APPLIED
    if status in _STALE:
        return Verdict.STALE
    if status in _RETRY or 500 <= status < 600:
        return Verdict.RETRY
    return Verdict.POISON


def classify_error(exc: BaseException) -> Verdict:
    """Transport errors (connect, read, timeouts, protocol) are retried; nothing else is."""
    if isinstance(exc, TRANSPORT_ERRORS):
        return Verdict.RETRY
    return Verdict.POISON


def misplaced(
    event: Event,
    *,
    subject: str,
    region: str,
    now_s: float,
    max_age_s: float | None,
    max_ahead_s: float | None = None,
) -> tuple[str, str] | None:
    """(reason, error) when `region` must not apply `event`, which arrived on `subject`."""
    expected = replay_subject(region, event.origin, event.service)
    if subject != expected:
        return SUBJECT_MISMATCH, f"arrived on {subject!r}, its headers say {expected!r}"
    if event.origin == region:
        return NOT_A_TARGET, f"an event of {region} is never replayed there"
    if event.targets is not None and region not in event.targets:
        return NOT_A_TARGET, f"{region} is not among its targets {','.join(event.targets)}"
    age_s = now_s - event.hlc.wall_time_s
    if max_age_s is not None and age_s > max_age_s:
        return EXPIRED, (
            f"written {age_s:.0f} s ago (Xr-Hlc {event.hlc}), over replayer.max_event_age_s "
            f"{max_age_s:g} s: its key's version record may be gone"
        )
    if max_ahead_s is not None and -age_s > max_ahead_s:
        return FUTURE_HLC, (
            f"written {-age_s:.0f} s in the future (Xr-Hlc {event.hlc}), over "
            f"replayer.max_event_ahead_s {max_ahead_s:g} s: it would win its key for good"
        )
    return None


def canary_refusal(event: Event, *, target: str | None, subject: str, region: str) -> str | None:
    """Why a canary (`target`: its `Xr-Canary`) is not one of `region`'s, or None."""
    if target != region:
        return "other_target"
    if event.service != CANARY_SERVICE or event.path != f"/{CANARY_SERVICE}/{region}":
        return "not_a_canary"  # the signed path names the target, the header does not
    if subject != replay_subject(region, event.origin, CANARY_SERVICE) or event.origin == region:
        return "subject_mismatch"
    if event.targets is not None and region not in event.targets:
        return "other_target"
    return None
