"""HTTP status or transport error → what to do with the event (DESIGN §5). Pure.

* 2xx → `applied`;
* 409, 412 → `stale` (the service holds a newer version);
* 408, 425, 429, 5xx, connection errors and timeouts → `retry`;
* every other status (other 4xx, 1xx, 3xx: a replayed call never follows redirects) → `poison`.
"""

from __future__ import annotations

import enum

import aiohttp

__all__ = ["TRANSPORT_ERRORS", "Verdict", "classify_error", "classify_status"]

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
