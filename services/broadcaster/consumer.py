"""Health of one forwarder's durable consumer: checked at start, watched while fetching.

At start, `check()` makes sure the consumer exists (ConsumerMissingError if not) and learns
its ack_wait, for the keep-alives; a window larger than its max_ack_pending is logged.

A consumer that disappears while running (deleted by mistake, or its stream re-created):
pull requests then end with 409 "Consumer Deleted", later ones with 503 no responders, which
a leader election also causes for a moment; a 503 is therefore confirmed with a consumer info
request, at most every `_CHECK_S` (no answer, e.g. no meta leader: nothing is concluded).
While the consumer is missing, `problem` says so (readiness turns red, naming the consumer
and `xregion provision`) and fetching goes on with its backoff; the first pull request that
ends well (the consumer was provisioned again) clears it.
"""

from __future__ import annotations

import time

import nats.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.logs import get_logger
from shared.puller import PullFailedError
from shared.retry import RetryPolicy

__all__ = ["ConsumerHealth", "ConsumerMissingError"]

log = get_logger("xr.broadcaster")

# Least time between two consumer info requests that check a failing consumer still exists.
_CHECK_S = 5.0


class ConsumerMissingError(Exception):
    """The durable consumer does not exist: the region was not provisioned."""


class ConsumerHealth:
    """See the module docstring. Not thread-safe: one event loop."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        consumer: str,
        target: str,
        window_events: int,
        retry: RetryPolicy,
    ) -> None:
        self._js = js
        self._stream = stream
        self._consumer = consumer
        self._target = target
        self._window_events = window_events
        self._retries = retry.retries()
        self._failing = False
        self._missing = False
        self._check_at = 0.0  # monotonic time before which no check is made

    @property
    def problem(self) -> str | None:
        """Why the consumer cannot be read from (for readiness), or None while it can."""
        return self.missing_text() if self._missing else None

    def missing_text(self) -> str:
        return (
            f"consumer {self._stream}/{self._consumer} does not exist "
            "(run `xregion provision` for this region)"
        )

    async def check(self, timeout_s: float) -> float | None:
        """The consumer's ack_wait (None if unknown); ConsumerMissingError if it does not
        exist. Other failures (its leader not answering in time) are logged, not raised."""
        try:
            info = await self._js.consumer_info(self._stream, self._consumer, timeout=timeout_s)
        except NotFoundError as exc:
            raise ConsumerMissingError(self.missing_text()) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("broadcaster.consumer_unchecked", target=self._target, error=repr(exc))
            return None
        self._check_window(info.config.max_ack_pending)
        return info.config.ack_wait or None

    def _check_window(self, max_ack_pending: int | None) -> None:
        if max_ack_pending is not None and 0 < max_ack_pending < self._window_events:
            log.warning(
                "broadcaster.window_over_max_ack_pending",
                target=self._target,
                window_events=self._window_events,
                max_ack_pending=max_ack_pending,
                note="run `xregion provision` to apply the broadcaster settings",
            )

    def fetched(self) -> None:
        """A pull request ended well: the consumer exists and answers."""
        self._check_at = 0.0
        if self._missing:
            self._missing = False
            log.info("broadcaster.consumer_restored", target=self._target, consumer=self._consumer)
        if self._failing:
            self._failing = False
            self._retries.reset()
            log.info("broadcaster.fetch_recovered", target=self._target)

    async def fetch_failed(self, exc: PullFailedError) -> float:
        """A pull request failed: log it, find out whether the consumer is gone; how long to
        wait before the next request."""
        if not self._failing:
            log.warning("broadcaster.fetch_failed", target=self._target, error=str(exc))
        self._failing = True
        if not self._missing and await self._gone(exc):
            self._missing = True
            log.error(
                "broadcaster.consumer_missing",
                target=self._target,
                consumer=self._consumer,
                error=str(exc),
                note=self.missing_text(),
            )
        reason = "consumer_missing" if self._missing else "fetch_failed"
        return self._retries.next_delay(reason, target=self._target)

    async def _gone(self, exc: PullFailedError) -> bool:
        """Does this failed pull request mean the consumer no longer exists? A 503 is checked
        with a consumer info request (not more often than every `_CHECK_S`); when that gets
        no clear answer (no meta leader, a timeout), nothing is concluded."""
        if exc.consumer_deleted:
            return True
        now = time.monotonic()
        if not exc.no_responders or now < self._check_at:
            return False
        self._check_at = now + _CHECK_S
        try:
            await self._js.consumer_info(self._stream, self._consumer)
        except NotFoundError:
            return True
        except (TimeoutError, nats.errors.Error) as exc_info:
            log.debug("broadcaster.consumer_unchecked", target=self._target, error=repr(exc_info))
        return False
