"""Ordered, pipelined publishes of held events to one target, with go-back-N re-sends.

Happy path: every event the forwarder admits is published at once, in stream order, on the
one connection, so up to the whole window is in flight and one cross-region round trip is
paid per window, not per event (nor per key). Each PubAck goes to `on_acked`.

A transient failure (no answer in time, no responders, storage trouble...) opens the
target's breaker (`gate.py`) and goes back: the failed event and every publish still in
flight are forgotten (late answers are ignored) and queued in the window's unsent queue.
Once the breaker lets a probe through, the lowest queued event goes alone; its success closes
the breaker and the rest are re-sent in stream order, with the same headers, so the same
`Nats-Msg-Id`: what the target already stored is acked as a duplicate, nothing is stored
twice. While anything is queued, newly admitted events queue behind it, so the re-sends keep
stream order among themselves. An event stored before an earlier one failed stays ahead of it
in the target stream; the target's replayer settles that (docs/DESIGN.md "Broadcaster data
path").

A permanent failure (`publisher.py`: the frame exceeds `max_payload`, the permissions refuse
the subject, or the target refuses the message itself) goes to `on_refused` (a dead letter)
and does not open the breaker: a refusal the target answered ends a probe like a success, so
a half-open breaker cannot stall; an oversized frame or a denied subject, refused before the
target is asked, ends it without an outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from services.broadcaster.gate import Gate, State
from services.broadcaster.metrics import UNREACHABLE, PathCounters
from services.broadcaster.pending import HeldEvent, Pending
from services.broadcaster.policy import about
from services.broadcaster.publisher import Failure, PermissionErrors, Publisher
from services.broadcaster.window import Window
from shared.logs import get_logger

__all__ = ["Sender"]

log = get_logger("xr.broadcaster")


class Sender:
    """See the module docstring. Not thread-safe: one event loop."""

    def __init__(
        self,
        nc: Client,
        *,
        target: str,
        window: Window[Pending],
        gate: Gate,
        timeout_s: float,
        counters: PathCounters,
        on_acked: Callable[[HeldEvent, int, bool], Awaitable[None]],
        on_refused: Callable[[HeldEvent, Failure], None],
        permission_errors: PermissionErrors | None = None,
    ) -> None:
        self._target = target
        self._window = window
        self._gate = gate
        self._counters = counters
        self._on_acked = on_acked
        self._on_refused = on_refused
        self._publisher: Publisher[HeldEvent] = Publisher(
            nc,
            timeout_s=timeout_s,
            on_acked=self._acked,
            on_failed=self._failed,
            permission_errors=permission_errors,
        )
        self._queued = asyncio.Event()
        self._flushing = False
        self._unreachable = UNREACHABLE.labels(target)

    @property
    def in_flight(self) -> int:
        return len(self._publisher)

    async def start(self) -> None:
        await self._publisher.start()

    def expire(self) -> None:
        """Fail the publishes whose PubAck is overdue (called by the forwarder's tick)."""
        self._publisher.expire()

    def stop(self) -> None:
        """The re-send task returns (the gate is stopped by then)."""
        self._queued.set()

    async def aclose(self, timeout_s: float) -> None:
        """Let publishes under way be answered (bounded), then unsubscribe."""
        await self._publisher.wait_idle(timeout_s)
        await self._publisher.aclose()

    async def submit(self, held: HeldEvent) -> None:
        """Publish a newly held event now, or queue it behind what waits already."""
        if not (self._window.unsent or self._flushing):
            allowed = self._gate.try_acquire()
            if allowed:
                await self._send(held)
                return
            if allowed is False:
                return  # stopping: the event stays held and is nak'd
        self._queue(held)

    def refusal_answered(self, answered: bool) -> None:
        """A permanent refusal: the target answered (it is reachable) or it was not asked."""
        if answered:
            self.succeeded()
        else:
            self._gate.abandon()

    def succeeded(self) -> None:
        """A publish to the target was answered: close the breaker if it was open."""
        if self._gate.state is State.CLOSED:
            self._gate.success()
            return
        self._gate.success()
        self._unreachable.set(0)
        log.info("broadcaster.target_recovered", target=self._target)

    async def run(self) -> None:
        """Re-send queued events, lowest first, whenever the gate lets them."""
        while True:
            await self._queued.wait()
            if not await self._gate.acquire():
                return
            self._queued.clear()
            await self._flush()
            if self._window.unsent:
                self._queued.set()

    async def _flush(self) -> None:
        """Send queued events on the acquired permit: only the probe while half-open, else
        until the queue is empty or the gate stops letting publishes through."""
        probing = self._gate.state is not State.CLOSED
        held = self._window.pop_unsent()
        if held is None:
            self._gate.abandon()
            return
        self._flushing = True
        try:
            while held is not None:
                await self._send(held)
                if probing or self._gate.try_acquire() is not True:
                    return
                held = self._window.pop_unsent()
        finally:
            self._flushing = False

    async def _send(self, held: HeldEvent) -> None:
        pending = held.item
        await self._publisher.publish(
            held, pending.subject, pending.msg.data, pending.headers, held.size,
            block=pending.block,
        )  # fmt: skip

    def _queue(self, held: HeldEvent) -> None:
        self._window.queue(held)
        self._queued.set()

    async def _acked(self, held: HeldEvent, seq: int, duplicate: bool) -> None:
        self.succeeded()
        await self._on_acked(held, seq, duplicate)

    def _failed(self, held: HeldEvent, failure: Failure) -> None:
        if failure.permanent:
            self._on_refused(held, failure)
            return
        again = [held, *self._publisher.abandon()]
        for each in again:
            self._counters.inc(each.item.route.origin, "retried")
            self._queue(each)
        self._retry(held, failure.reason, len(again))

    def _retry(self, held: HeldEvent, error: str, events: int) -> None:
        opening = self._gate.state is State.CLOSED
        delay_s = self._gate.failure(target=self._target)
        self._unreachable.set(1)
        # One line when the target starts failing; each further retry at debug level.
        emit = log.warning if opening else log.debug
        emit(
            "broadcaster.retry",
            target=self._target,
            **about(held.item.route),
            stream_seq=held.seq,
            resent=events,
            delay_s=round(delay_s, 3),
            error=error,
        )
