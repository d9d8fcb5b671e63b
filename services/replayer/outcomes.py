"""What handling one event decided (arq style): return → ack, raise → nak or dead-letter.

    Exception
     └── Outcome
          ├── Retry(delay_s, reason)      nak(delay): try again later
          └── Poison(reason, status, error)  publish to the DLQ, then ack

A handler that returns gives a `Done` value naming the ack label (`applied`, `stale`,
`duplicate`, `canary`).
"""

from __future__ import annotations

import enum

__all__ = ["Done", "Outcome", "Poison", "Retry"]


class Done(enum.StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    DUPLICATE = "duplicate"
    CANARY = "canary"


class Outcome(Exception):
    """Base of the non-ack outcomes."""


class Retry(Outcome):
    """Not now: nak with `delay_s`, redelivered later (counted `retried`)."""

    def __init__(self, delay_s: float, reason: str, status: int | None = None) -> None:
        super().__init__(f"retry in {delay_s:.2f} s: {reason}")
        self.delay_s = delay_s
        self.reason = reason
        self.status = status


class Poison(Outcome):
    """Never: dead-letter with `reason`, then ack (counted `dead_lettered`)."""

    def __init__(self, reason: str, error: str = "", status: int | None = None) -> None:
        super().__init__(f"{reason}: {error}" if error else reason)
        self.reason = reason
        self.error = error
        self.status = status
