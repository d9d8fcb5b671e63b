"""One retry policy for every component (docs/DESIGN.md §5c).

A `RetryPolicy` names the component that retries and holds a tenacity wait strategy, with the
bounds of a bounded retry (`attempts`, `timeout_s`). It serves three shapes of retry:

* a call retried in place (the replayer's upstream call): `policy.retrying(...)` is a
  tenacity `AsyncRetrying` with the policy's waits, bounds and hook;
* a loop that retries for ever and sleeps in between (the outbox drainer, NATS reconnects, the
  broadcaster's breaker, fetches and dead letters): `policy.retries()` is a `Retries`, whose
  `next_delay(reason)` is the wait before the next try and whose `reset()` follows a success;
* a retry scheduled for later (the bridge's version records): `policy.schedule(retry, reason)`
  is the wait before retry number `retry`, or None once the attempts are spent.

Every scheduled retry goes through one hook, `RetryPolicy.scheduled`: it counts
`xr_retries_total{component,reason}` and logs one line, `<component>_retry` (`attempt`,
`wait_s`, `reason` and what the caller adds). `reason` is a short fixed word (a metric label).

Waits: `backoff(base_s, max_s)` waits uniform(c/2, c) before retry n, c = min(max_s,
base_s * 2**(n-1)) (exponential with equal jitter, built from tenacity's strategies);
`jittered` is tenacity's `wait_exponential_jitter`; `fixed(delays_s)` waits the given delays
in turn.

The test switch: `set_waits(False)` makes every wait 0 (the retries still happen, are counted
and logged), process-wide, until `set_waits(True)`. Tests use the `no_retry_waits` fixture
(tests/conftest.py), which restores the waits afterwards. Do not use it in a test that leaves
a component retrying a dead dependency for ever: with no wait, that loop spins.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_chain,
    wait_exponential,
    wait_exponential_jitter,
    wait_fixed,
    wait_random_exponential,
)
from tenacity.retry import retry_base
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from shared.logs import get_logger
from shared.metrics import RETRIES

__all__ = ["Retries", "RetryPolicy", "set_waits", "waits_enabled"]

log = get_logger("xr.retry")

_waits = True
# The retrying object a lone wait computation is made for (a wait reads the attempt number).
_FOR_WAITS = AsyncRetrying()


def set_waits(enabled: bool) -> None:
    """The test switch (module docstring): False makes every retry wait 0."""
    global _waits
    _waits = enabled


def waits_enabled() -> bool:
    return _waits


@dataclass(frozen=True)
class RetryPolicy:
    """How one component retries; see the module docstring."""

    component: str
    wait: wait_base
    attempts: int | None = None  # tries in all, the first included; None: no limit
    timeout_s: float | None = None  # from the first try; None: no limit

    @classmethod
    def backoff(
        cls,
        component: str,
        *,
        base_s: float,
        max_s: float,
        attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> RetryPolicy:
        """Equal-jitter exponential backoff: uniform(c/2, c), c = min(max_s, base_s*2**(n-1))."""
        half = wait_exponential(multiplier=base_s / 2, max=max_s / 2)
        spread = wait_random_exponential(multiplier=base_s / 2, max=max_s / 2)
        return cls(component, half + spread, attempts, timeout_s)

    @classmethod
    def jittered(
        cls,
        component: str,
        *,
        base_s: float,
        max_s: float,
        jitter_s: float,
        attempts: int | None = None,
        timeout_s: float | None = None,
    ) -> RetryPolicy:
        """min(max_s, base_s * 2**(n-1) + uniform(0, jitter_s)): tenacity's own jitter."""
        wait = wait_exponential_jitter(multiplier=base_s, max=max_s, jitter=jitter_s)
        return cls(component, wait, attempts, timeout_s)

    @classmethod
    def fixed(cls, component: str, delays_s: Sequence[float]) -> RetryPolicy:
        """One retry after each of `delays_s`, in turn, then no more."""
        if not delays_s:
            raise ValueError("a fixed retry policy needs at least one delay")
        wait = wait_chain(*(wait_fixed(d) for d in delays_s))
        return cls(component, wait, attempts=len(delays_s) + 1)

    def delay_s(self, retry: int) -> float:
        """The wait before retry number `retry` (1 is the first); 0 while waits are off."""
        if not _waits:
            return 0.0
        state = RetryCallState(_FOR_WAITS, fn=None, args=(), kwargs={})
        state.attempt_number = retry
        return float(self.wait(state))

    def schedule(self, retry: int, reason: str, **context: object) -> float | None:
        """The wait before retry number `retry`, through the hook; None (and nothing
        counted) once `attempts` are spent."""
        if self.attempts is not None and retry >= self.attempts:
            return None
        wait_s = self.delay_s(retry)
        self.scheduled(reason, attempt=retry, wait_s=wait_s, **context)
        return wait_s

    def scheduled(self, reason: str, *, attempt: int, wait_s: float, **context: object) -> None:
        """The hook of every scheduled retry: one count, one log line."""
        RETRIES.labels(self.component, reason).inc()
        log.info(
            f"{self.component}_retry",
            reason=reason,
            attempt=attempt,
            wait_s=round(wait_s, 3),
            **context,
        )

    def retries(self) -> Retries:
        """The retry state of a loop that retries for ever."""
        return Retries(self)

    def retrying(
        self,
        *,
        retry: retry_base,
        describe: Callable[[RetryCallState], tuple[str, dict[str, object]]],
        retry_error_callback: Callable[[RetryCallState], object] | None = None,
        spent_s: float = 0.0,
    ) -> AsyncRetrying:
        """A tenacity loop with this policy's waits and bounds (less `spent_s` already spent);
        `describe(state)` gives the reason and log context of each scheduled retry."""

        def before_sleep(state: RetryCallState) -> None:
            reason, context = describe(state)
            wait_s = state.upcoming_sleep
            self.scheduled(reason, attempt=state.attempt_number, wait_s=wait_s, **context)

        return AsyncRetrying(
            stop=self._stop(spent_s),
            wait=lambda state: self.delay_s(state.attempt_number),
            retry=retry,
            before_sleep=before_sleep,
            retry_error_callback=retry_error_callback,
            reraise=False,
        )

    def _stop(self, spent_s: float) -> stop_base:
        stop: stop_base = stop_never
        if self.attempts is not None:
            stop = stop | stop_after_attempt(self.attempts)
        if self.timeout_s is not None:
            stop = stop | stop_after_delay(max(0.0, self.timeout_s - spent_s))
        return stop


class Retries:
    """The retry count of a loop that retries for ever: `next_delay` before each retry,
    `reset` after a success."""

    def __init__(self, policy: RetryPolicy) -> None:
        if policy.attempts is not None:
            raise ValueError(f"{policy.component}: a retry loop needs a policy without attempts")
        self._policy = policy
        self.attempt = 0

    def next_delay(self, reason: str, **context: object) -> float:
        """The wait before the next retry, counted and logged by the policy's hook."""
        self.attempt += 1
        wait_s = self._policy.schedule(self.attempt, reason, **context)
        assert wait_s is not None  # no attempts limit
        return wait_s

    def reset(self) -> None:
        self.attempt = 0
