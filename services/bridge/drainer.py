"""Republishing the outbox, oldest first (docs/DESIGN.md §5 bridge).

A pass reads a batch of the oldest entries, publishes them (pipelined, in order, each with its
original `Nats-Msg-Id`), and deletes exactly the ones JetStream acked. A pass that could not
publish everything ends the pass; the next one waits a jittered, growing delay (reset by a
pass that succeeds; `shared/retry.py`, component `bridge.outbox`), so a NATS outage costs one
attempt every `retry_max_s` at most. An error the drainer does not know (anything but the
outbox's and the publisher's own) ends `run()`: the bridge treats that as a failed part and
stops (`shared.lifecycle`), rather than answer writes whose outbox no longer drains. The
drainer sleeps while the outbox is empty and is woken by `wake()` when an event is spooled.

An entry that can never be published would fail every pass for ever, and with it the whole
outbox would drain at one batch per `retry_max_s`: the events stream refuses it for good
(`PublishRefusedError`: over the stream's `max_msg_size`, headers over 64 KiB), or its frame
is over the server's max_payload (`EventTooLargeError`, after the cluster lowered it). Such an
entry is dead-lettered in the region's DLQ (`deadletters.py`: headers and body, the body left
out only if the letter would not fit max_payload, reason `publish_refused`, `Nats-Msg-Id`
`pub:<event id>`). Only once the DLQ acked the letter is the entry deleted, counted `failed`
and logged once (`bridge.outbox.refused`, error level, with its event id); the rest of its
batch is published in the same pass. If the dead letter is not stored (NATS trouble), the
entry stays and the pass counts as failed, like an unacked publish (a warning per entry and
pass, `bridge.outbox.dead_letter_failed`). If the DLQ refuses even a slim letter for good,
the entry is dropped (`failed`, an error line `bridge.outbox.dropped` naming the event and
its key): kept, it would fail every pass for ever.

Version records: a write spooled because NATS was down got no version record either (its
record failed with the publish, `services/bridge/versions.py`), and nothing would write it
later, so an older event replayed here once NATS is back could overwrite it. Given `record`
(`LocalVersions.record_published`), a pass records every entry JetStream acked before deleting
it (a record never raises; one
already written makes this one `superseded` at no cost). A bridge that stops in between
leaves the entry, which the next pass publishes again (a duplicate JetStream drops) and
records again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from services.bridge.deadletters import DeadLetterError, DeadLetterRefusedError, DeadLetters
from services.bridge.metrics import EVENTS, OUTBOX_DRAINED
from services.bridge.outbox import Outbox, OutboxEntry, OutboxError
from services.bridge.publisher import EventPublisher, PublishRefusedError, PublishUnknownError
from shared.dlq import path_of
from shared.envelope import HDR_TRACE, EventTooLargeError
from shared.logs import get_logger
from shared.retry import RetryPolicy

__all__ = ["Drainer"]

log = get_logger("xr.bridge.outbox")

# What a pass did with one entry (`_publish`): only a kept entry stays in the outbox.
_ACKED, _DEAD_LETTERED, _KEPT = "acked", "dead_lettered", "kept"


class Drainer:
    """Empties an `Outbox` into JetStream; `run()` is its long-lived task."""

    def __init__(
        self,
        outbox: Outbox,
        publisher: EventPublisher,
        *,
        dead_letters: DeadLetters,
        batch: int,
        timeout_s: float,
        retry: RetryPolicy,
        record: Callable[[Mapping[str, str], bytes], Awaitable[object]] | None = None,
    ) -> None:
        self._record = record
        self._outbox = outbox
        self._publisher = publisher
        self._dead_letters = dead_letters
        self._batch = batch
        self._timeout_s = timeout_s
        self._retries = retry.retries()
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
                self._retries.reset()
            else:
                await asyncio.sleep(self._next_delay())

    async def drain(self, timeout_s: float) -> bool:
        """Drain until empty or `timeout_s` passes (start-up, shutdown); True when empty."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._outbox.depth:
                    if not await self.drain_pass():
                        await asyncio.sleep(self._next_delay())
        except TimeoutError:
            return False
        self._retries.reset()
        return True

    def _next_delay(self) -> float:
        return self._retries.next_delay("not_drained", outbox_depth=self._outbox.depth)

    async def drain_pass(self) -> bool:
        """Publish one batch; True when all of it was acked (or dead-lettered) and deleted."""
        try:
            entries = await self._outbox.oldest(self._batch)
            results = await asyncio.gather(*(self._publish(e) for e in entries))
            if self._record is not None:
                await asyncio.gather(
                    *(
                        self._record(e.headers, e.payload)
                        for e, done in zip(entries, results, strict=True)
                        if done == _ACKED
                    )
                )
            await self._outbox.remove(
                e.seq for e, done in zip(entries, results, strict=True) if done != _KEPT
            )
        except OutboxError as exc:
            log.error("bridge.outbox.error", error=str(exc))
            return False
        acked = results.count(_ACKED)
        if acked:  # dead-lettered entries are counted `failed` (xr_bridge_events_total)
            OUTBOX_DRAINED.inc(acked)
            log.info("bridge.outbox.drained", events=acked, outbox_depth=self._outbox.depth)
        return _KEPT not in results

    async def _publish(self, entry: OutboxEntry) -> str:
        """What became of the entry: acked, dead-lettered as unpublishable, or kept."""
        try:
            await self._publisher.publish(
                entry.subject, entry.headers, entry.payload, timeout_s=self._timeout_s
            )
        except PublishUnknownError as exc:
            log.debug("bridge.outbox.retry", event_id=entry.event_id, error=str(exc))
            return _KEPT
        except (PublishRefusedError, EventTooLargeError) as exc:
            return _DEAD_LETTERED if await self._dead_letter(entry, str(exc)) else _KEPT
        return _ACKED

    async def _dead_letter(self, entry: OutboxEntry, refusal: str) -> bool:
        """File an entry that can never be published in the DLQ; True once it is stored."""
        try:
            await self._dead_letters.file(
                entry.subject,
                entry.headers,
                entry.payload,
                event_id=entry.event_id,
                error=refusal,
            )
        except DeadLetterRefusedError as exc:  # nowhere to keep it: kept, it blocks for ever
            EVENTS.labels(entry.subject.rpartition(".")[2], "failed").inc()
            log.error(
                "bridge.outbox.dropped", refusal=refusal, error=str(exc), dead_lettered=False,
                key=entry.key, **_about(entry),
            )  # fmt: skip
            return True
        except DeadLetterError as exc:
            log.warning(
                "bridge.outbox.dead_letter_failed", refusal=refusal, error=str(exc), **_about(entry)
            )
            return False
        EVENTS.labels(entry.subject.rpartition(".")[2], "failed").inc()
        log.error("bridge.outbox.refused", error=refusal, dead_lettered=True, **_about(entry))
        return True


def _about(entry: OutboxEntry) -> dict[str, str]:
    """What a log line about an outbox entry's event carries (docs/DESIGN.md §8)."""
    origin, service = path_of(entry.subject)
    trace = entry.headers.get(HDR_TRACE, "")
    return {
        "event_id": entry.event_id,
        "origin": origin,
        "service": service,
        "trace_id": trace[3:35],
    }
