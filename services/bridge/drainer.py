"""Republishing the outbox, oldest first (DESIGN §5 bridge).

A pass reads a batch of the oldest entries, publishes them (pipelined, in order, each with its
original `Nats-Msg-Id`), and deletes exactly the ones JetStream acked. A pass that could not
publish everything ends the pass; the next one waits a jittered, growing delay (reset by a
pass that succeeds), so a NATS outage costs one attempt every `retry_max_s` at most. The
drainer sleeps while the outbox is empty and is woken by `wake()` when an event is spooled.

An entry that can never be published (its frame is over the server's max_payload, which can
happen after the cluster lowered it) would block the queue for ever: it is logged with its
event id and dropped, and counted as `failed`.
"""

from __future__ import annotations

import asyncio

from services.bridge.metrics import EVENTS, OUTBOX_DRAINED
from services.bridge.outbox import Outbox, OutboxEntry, OutboxError
from services.bridge.publisher import EventPublisher, PublishUnknownError
from shared.envelope import EventTooLargeError
from shared.logs import get_logger
from shared.natsconn import Backoff

__all__ = ["Drainer"]

log = get_logger("xr.bridge.outbox")


class Drainer:
    """Empties an `Outbox` into JetStream; `run()` is its long-lived task."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: EventPublisher,
        *,
        batch: int,
        timeout_s: float,
        backoff: Backoff,
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._batch = batch
        self._timeout_s = timeout_s
        self._backoff = backoff
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        """Something was spooled: start a pass now (unless one is waiting out a backoff)."""
        self._wakeup.set()

    async def run(self) -> None:
        """Drain for ever (until cancelled)."""
        while True:
            if not self._outbox.depth:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if await self.drain_pass():
                self._backoff.reset()
            else:
                await asyncio.sleep(self._backoff.next_delay())

    async def drain(self, timeout_s: float) -> bool:
        """Drain until empty or `timeout_s` passes (start-up, shutdown); True when empty."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._outbox.depth:
                    if not await self.drain_pass():
                        await asyncio.sleep(self._backoff.next_delay())
        except TimeoutError:
            return False
        self._backoff.reset()
        return True

    async def drain_pass(self) -> bool:
        """Publish one batch; True when all of it was acked (and deleted)."""
        try:
            entries = await self._outbox.oldest(self._batch)
            results = await asyncio.gather(*(self._publish(e) for e in entries))
            await self._outbox.remove(
                e.seq for e, done in zip(entries, results, strict=True) if done
            )
        except OutboxError as exc:
            log.error("bridge.outbox.error", error=str(exc))
            return False
        acked = sum(results)
        if acked:
            OUTBOX_DRAINED.inc(acked)
            log.info("bridge.outbox.drained", events=acked, outbox_depth=self._outbox.depth)
        return all(results)

    async def _publish(self, entry: OutboxEntry) -> bool:
        """True when the entry is done with: acked, or dropped as unpublishable."""
        try:
            await self._publisher.publish(
                entry.subject, entry.headers, entry.payload, timeout_s=self._timeout_s
            )
        except PublishUnknownError as exc:
            log.debug("bridge.outbox.retry", event_id=entry.event_id, error=str(exc))
            return False
        except EventTooLargeError as exc:
            EVENTS.labels(entry.subject.rpartition(".")[2], "failed").inc()
            log.error("bridge.outbox.dropped", event_id=entry.event_id, error=str(exc))
        return True
