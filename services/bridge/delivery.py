"""Getting one event durable before the client's response: JetStream, else the outbox.

`Delivery.deliver` publishes and awaits the ack within `publish_timeout_s`. If the ack does
not come (NATS down, stream unavailable, timeout: an *unknown* outcome), the event goes to
the local outbox, which a `Drainer` republishes later with the same `Nats-Msg-Id`.

Two cases skip the publish attempt and spool at once: NATS is disconnected (the client need
not wait for a timeout), or the outbox still holds an event with the same partition key (the
new one queues behind it, so events of one key reach the stream in order; other keys go
straight through, so an outbox being drained under load does not hold every write back).

Outcomes (the `outcome` label of `xr_bridge_events_total`):

* `published` — JetStream acked it;
* `spooled`   — it is in the outbox, committed to disk;
* `failed`    — neither: the frame can never fit NATS, or the outbox cannot take it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping

from services.bridge.metrics import EVENTS, PUBLISH_DURATION
from services.bridge.outbox import Outbox, OutboxError
from services.bridge.publisher import EventPublisher, PublishUnknownError
from shared.envelope import Event, EventTooLargeError
from shared.logs import get_logger

__all__ = ["Delivery", "Outcome"]

log = get_logger("xr.bridge")


class Outcome(enum.StrEnum):
    PUBLISHED = "published"
    SPOOLED = "spooled"
    FAILED = "failed"


class Delivery:
    """Publish-or-spool for one event at a time; see the module docstring."""

    def __init__(
        self,
        publisher: EventPublisher,
        outbox: Outbox,
        *,
        timeout_s: float,
        connected: Callable[[], bool],
        on_spooled: Callable[[], None],
    ) -> None:
        self._publisher = publisher
        self._outbox = outbox
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
        wire_bytes: int | None = None,
    ) -> Outcome:
        """Make the event durable somewhere; never raises for NATS or disk trouble.

        `wire_bytes`: the frame's size, if the caller measured it already.
        """
        outcome = await self._publish_or_spool(event, subject, headers, payload, wire_bytes)
        EVENTS.labels(event.service, outcome.value).inc()
        return outcome

    async def _publish_or_spool(
        self,
        event: Event,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        wire_bytes: int | None,
    ) -> Outcome:
        if not self._connected():
            reason = "NATS disconnected"
        elif self._outbox.holds(event.key):
            reason = "an earlier event of this key is in the outbox"
        else:
            started = time.perf_counter()
            try:
                await self._publisher.publish(
                    subject, headers, payload, timeout_s=self._timeout_s, wire_bytes=wire_bytes
                )
            except PublishUnknownError as exc:
                reason = str(exc)
            except EventTooLargeError as exc:
                log.error("bridge.event.too_large", error=str(exc), **_fields(event))
                return Outcome.FAILED
            else:
                return Outcome.PUBLISHED
            finally:
                PUBLISH_DURATION.observe(time.perf_counter() - started)
        return await self._spool(event, subject, headers, payload, reason)

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


def _fields(event: Event) -> dict[str, str]:
    """What every log line about an event carries (DESIGN §8)."""
    return {
        "event_id": event.event_id,
        "origin": event.origin,
        "service": event.service,
        "trace_id": event.trace_id,
    }
