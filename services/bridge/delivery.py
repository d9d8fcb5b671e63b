"""Getting one event durable before the client's response: JetStream, else the outbox.

`Delivery.deliver` publishes and awaits the ack within `publish_timeout_s`. If the ack does
not come (NATS down, stream unavailable, timeout: an *unknown* outcome), the event goes to
the local outbox, which a `Drainer` republishes later with the same `Nats-Msg-Id`.

Two cases skip the publish attempt and spool at once: NATS is disconnected (the client need
not wait for a timeout), or the outbox still holds an event with the same partition key (the
new one queues behind it, so events of one key reach the stream in order; other keys go
straight through, so an outbox being drained under load does not hold every write back).

An event the events stream refuses for good (`PublishRefusedError`, e.g. over its
`max_msg_size`) is not spooled, since no retry could ever store it: it is dead-lettered in the
region's DLQ (`deadletters.py`, awaiting the DLQ's ack within `publish_timeout_s`), counted
`failed` and logged once (`bridge.event.refused`, error level); the client then gets 503
`event_not_stored` (proxy.py). If the dead letter cannot be stored either (NATS trouble), the
event goes to the outbox like any other, so nothing is lost, and the drainer files it later.
If the DLQ refuses even a slim letter for good, the event is stored nowhere: `failed`, the
same 503, and the error line is all that is left of it (spooled, it would only block its key
in the outbox for ever).

Cancelled callers: the publish runs in the caller's task (the request's handler), because a
task of its own costs the response two hand-offs on the event loop (docs/PERFORMANCE.md,
"Measurements behind the code"). A caller can still be cancelled on the way (the HTTP server's
shutdown deadline): the event is then handed to a new delivery in a task of its own, which
publishes it again under the same `Nats-Msg-Id` (JetStream drops the copy if the first attempt
landed after all) or spools it. What follows a failed publish (dead letter, outbox) always runs
in a task of its own, shielded, so a cancellation never stops it half way. The tasks belong to
`tasks`, which the bridge waits for on shutdown.

Outcomes (the `outcome` label of `xr_bridge_events_total`):

* `published` — JetStream acked it;
* `spooled`   — it is in the outbox, committed to disk;
* `failed`    — neither: the frame can never fit NATS, the outbox cannot take it, or the
  events stream refused it for good and it is kept in the DLQ instead (then
  `Delivered.dead_lettered` is true).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from services.bridge.deadletters import DeadLetterError, DeadLetterRefusedError, DeadLetters
from services.bridge.metrics import EVENTS, PUBLISH_DURATION
from services.bridge.outbox import Outbox, OutboxError
from services.bridge.publisher import EventPublisher, PublishRefusedError, PublishUnknownError
from shared.envelope import Event, EventTooLargeError
from shared.logs import get_logger
from shared.tasks import TaskSet

__all__ = ["Delivered", "Delivery", "Outcome"]

log = get_logger("xr.bridge")


class Outcome(enum.StrEnum):
    PUBLISHED = "published"
    SPOOLED = "spooled"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Delivered:
    """What became of one event: its `outcome`, and whether it was refused for good by the
    events stream and is kept in the region's DLQ instead (`outcome` is then `failed`)."""

    outcome: Outcome
    dead_lettered: bool = False


class Delivery:
    """Publish-or-spool for one event at a time; see the module docstring."""

    def __init__(
        self,
        publisher: EventPublisher,
        outbox: Outbox,
        *,
        dead_letters: DeadLetters,
        timeout_s: float,
        connected: Callable[[], bool],
        on_spooled: Callable[[], None],
        tasks: TaskSet,
    ) -> None:
        self._tasks = tasks
        self._publisher = publisher
        self._outbox = outbox
        self._dead_letters = dead_letters
        self._timeout_s = timeout_s
        self._connected = connected
        self._on_spooled = on_spooled

    async def deliver(
        self,
        event: Event,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        *,
        block: bytes | None = None,
        hand_off: bool = True,
    ) -> Delivered:
        """Make the event durable somewhere; never raises for NATS or disk trouble, and a
        cancelled caller never loses the event (module docstring, "Cancelled callers").

        `block`: the header block of `headers`, if the caller built it already
        (`shared.frames.header_block`). `hand_off=False` (the delivery a cancelled caller
        handed its event to): a cancellation ends the delivery, as the shutdown deadline
        means it to.
        """
        failure: str | PublishRefusedError  # why the event is not published: spool, DLQ
        if not self._connected():
            failure = "NATS disconnected"
        elif self._outbox.holds(event.key):
            failure = "an earlier event of this key is in the outbox"
        else:
            try:
                outcome = await self._publish(event, subject, headers, payload, block)
            except PublishUnknownError as exc:
                failure = str(exc)
            except PublishRefusedError as exc:
                failure = exc
            except asyncio.CancelledError:
                if hand_off:
                    _ = self._tasks.spawn(
                        self.deliver(event, subject, headers, payload, block=block, hand_off=False),
                        name=f"deliver-{event.event_id}",
                    )
                raise
            else:
                return _counted(event, Delivered(outcome))
        # Dead letter or outbox, in a task of its own that a cancelled caller does not stop
        # half way (a row in the outbox, say, and the counts not yet raised).
        settling = self._dead_letter_or_spool(event, subject, headers, payload, failure)
        return await asyncio.shield(self._tasks.spawn(settling, name=f"settle-{event.event_id}"))

    async def _dead_letter_or_spool(
        self,
        event: Event,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        failure: str | PublishRefusedError,
    ) -> Delivered:
        if isinstance(failure, PublishRefusedError):
            settled = await self._dead_letter(event, subject, headers, payload, failure)
            if settled is not None:
                return _counted(event, settled)
            failure = f"{failure}, and its dead letter was not stored"
        outcome = await self._spool(event, subject, headers, payload, failure)
        return _counted(event, Delivered(outcome))

    async def _publish(
        self,
        event: Event,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        block: bytes | None,
    ) -> Outcome:
        """`published`, or `failed` for a frame that can never fit NATS; raises
        PublishUnknownError and PublishRefusedError."""
        started = time.perf_counter()
        try:
            await self._publisher.publish(
                subject, headers, payload, timeout_s=self._timeout_s, block=block
            )
        except EventTooLargeError as exc:
            log.error("bridge.event.too_large", error=str(exc), **_fields(event))
            return Outcome.FAILED
        finally:
            PUBLISH_DURATION.observe(time.perf_counter() - started)
        return Outcome.PUBLISHED

    async def _dead_letter(
        self,
        event: Event,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        refused: PublishRefusedError,
    ) -> Delivered | None:
        """File a refused event in the DLQ: `failed`, kept there or (the DLQ refuses it too,
        for good) nowhere; None when the letter was not stored this time (spool the event).
        One error line."""
        settled: Delivered | None = Delivered(Outcome.FAILED, dead_lettered=True)
        problem = None
        try:
            await self._dead_letters.file(
                subject, headers, payload, event_id=event.event_id, error=str(refused)
            )
        except DeadLetterRefusedError as exc:
            settled, problem = Delivered(Outcome.FAILED), str(exc)
        except DeadLetterError as exc:
            settled, problem = None, str(exc)
        log.error(
            "bridge.event.refused",
            err_code=refused.err_code,
            error=str(refused),
            dead_lettered=problem is None,
            dead_letter_error=problem,
            **_fields(event),
        )
        return settled

    async def _spool(
        self,
        event: Event,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        reason: str,
    ) -> Outcome:
        try:
            await self._outbox.put(event.event_id, event.key, subject, headers, payload)
        except OutboxError as exc:
            log.error("bridge.event.unspoolable", reason=reason, error=str(exc), **_fields(event))
            return Outcome.FAILED
        log.warning(
            "bridge.event.spooled",
            reason=reason,
            outbox_depth=self._outbox.depth,
            **_fields(event),
        )
        self._on_spooled()
        return Outcome.SPOOLED


def _counted(event: Event, delivered: Delivered) -> Delivered:
    EVENTS.labels(event.service, delivered.outcome.value).inc()
    return delivered


def _fields(event: Event) -> dict[str, str]:
    """What every log line about an event carries (docs/DESIGN.md §8)."""
    return {
        "event_id": event.event_id,
        "origin": event.origin,
        "service": event.service,
        "trace_id": event.trace_id,
    }
