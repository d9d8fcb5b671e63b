"""What handling one event decided (arq style): return → ack, raise → nak or dead-letter.

    Exception
     └── Outcome
          ├── Retry(delay_s, reason, status, answer)   nak(delay): try again later
          └── Poison(reason, error, status, answer)    publish to the DLQ, then ack

`status` and `answer` are set when the service answered: its HTTP status and an excerpt of
its response body (services/replayer/excerpt.py, `""` for none).

A handler that returns gives a `Done` value naming the ack label (`applied`, `stale`,
`duplicate`, `repeated`, `canary`).
"""

from __future__ import annotations

import enum

__all__ = ["Done", "Outcome", "Poison", "Retry"]


class Done(enum.StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    DUPLICATE = "duplicate"
    # Called again after an earlier call of the same event may have landed (its claim was
    # never settled: a replayer killed mid-call); the service saw the same Idempotency-Key.
    REPEATED = "repeated"
    CANARY = "canary"


class Outcome(Exception):
    """Base of the non-ack outcomes."""


class Retry(Outcome):
    """Not now: nak with `delay_s`, redelivered later (counted `retried`)."""

    def __init__(
        self, delay_s: float, reason: str, status: int | None = None, answer: str = ""
    ) -> None:
        super().__init__(f"retry in {delay_s:.2f} s: {reason}")
        self.delay_s = delay_s
        self.reason = reason
        self.status = status
        self.answer = answer


class Poison(Outcome):
    """Never: dead-letter with `reason`, then ack (counted `dead_lettered`)."""

    def __init__(
        self, reason: str, error: str = "", status: int | None = None, answer: str = ""
    ) -> None:
        super().__init__(f"{reason}: {error}" if error else reason)
        self.reason = reason
        self.error = error
        self.status = status
        self.answer = answer

    @property
    def letter_error(self) -> str:
        """The dead letter's `Xr-Dlq-Error`: the error, then what the service said, if any."""
        return ": ".join(part for part in (self.error, self.answer) if part)
