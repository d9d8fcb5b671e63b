"""May a forwarder publish now? A pause switch plus a circuit breaker, for one target.

The breaker keeps a failing target from being hammered and keeps the others unaffected:

    closed ──failure──▶ open (for a jittered, growing backoff) ──delay over──▶ half-open
      ▲                   ▲                                                  │
      └────success────────┴──────────────failure (one probe at a time)───────┘

* closed: every held event may be published; the forwarder fetches.
* open: nobody publishes and the forwarder does not fetch; the events it holds wait.
* half-open: exactly one publish (the probe) may go; its success closes the breaker.

`acquire()` returns True when the caller may publish, False once the gate is stopped. A caller
that got True reports `success()` or `failure()`; a probe that ends otherwise (cancelled)
calls `abandon()` so the next caller probes instead. Pausing blocks `acquire()` the same way;
publishes already under way finish. `changed` callbacks let the forwarder wake its fetch loop.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable

from shared.retry import RetryPolicy

__all__ = ["Gate", "State"]

# Upper bound of one wait inside acquire(), so a missed wake-up costs at most this long.
_MAX_WAIT_S = 1.0


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class Gate:
    """See the module docstring. Not thread-safe: one event loop."""

    def __init__(
        self,
        retry: RetryPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._retries = retry.retries()
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._open_until = 0.0
        self._probing = False
        self._paused = False
        self._stopped = False
        self._changed = asyncio.Event()

    @property
    def state(self) -> State:
        return self._state

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def may_fetch(self) -> bool:
        """True when fetching more events makes sense: running, not paused, target healthy."""
        return not (self._stopped or self._paused) and self._state is State.CLOSED

    def set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            self._notify()

    def stop(self) -> None:
        """No further publish may start; waiting callers get False."""
        self._stopped = True
        self._notify()

    def try_acquire(self) -> bool | None:
        """True: publish now; False: stopped; None: not now (paused, open, probe under way)."""
        if self._stopped:
            return False
        if self._paused:
            return None
        if self._state is State.CLOSED:
            return True
        if self._state is State.OPEN and self._clock() >= self._open_until:
            self._state = State.HALF_OPEN
        if self._state is State.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return None

    async def acquire(self) -> bool:
        """Wait until a publish may start (True) or the gate is stopped (False)."""
        while True:
            allowed = self.try_acquire()
            if allowed is not None:
                return allowed
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), self._wait_s())
            except TimeoutError:
                pass

    def success(self) -> None:
        self._probing = False
        if self._state is not State.CLOSED:
            self._state = State.CLOSED
            self._retries.reset()
            self._notify()

    def failure(self, **context: object) -> float:
        """Open the breaker; returns how long it stays open (seconds). `context` goes into
        the retry's log line."""
        delay = self._retries.next_delay("publish_failed", **context)
        self._probing = False
        self._state = State.OPEN
        self._open_until = max(self._open_until, self._clock() + delay)
        self._notify()
        return delay

    def abandon(self) -> None:
        """A caller that acquired gives up without an outcome (e.g. it was cancelled)."""
        if self._probing:
            self._probing = False
            self._notify()

    def _wait_s(self) -> float:
        if self._state is State.OPEN and not self._paused:
            return min(_MAX_WAIT_S, max(0.0, self._open_until - self._clock()))
        return _MAX_WAIT_S

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if self._on_change is not None:
            self._on_change()
