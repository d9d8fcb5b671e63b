"""Dead letters of events a target refused for good, in this region's own DLQ.

An event the target can never store (its frame exceeds `max_payload`, or the target stream
refuses the message itself, e.g. over its `max_msg_size`) is filed in
`xr.dlq.<region>.<origin>.<service>` (the format of `shared/dlq.py`, reason
`forward_refused`, the error naming the target, `Xr-Dlq-Target` = the target, so `xregion
dlq replay` sends it back there, and `Nats-Msg-Id` = `fwd:<target>:<stream seq>` so a
redelivery is not stored twice). Only once the DLQ stream acked it does `on_settled` let the
forwarder ack the source for this target (outcome `dead_lettered`, one error line).

Dead letters are local publishes on a publisher of their own, so they bypass the target's
gate and its re-sends; one that fails is sent again after a backoff of its own, and the
source is never acked without it. A DLQ that refuses the letter itself for good (its own
limits) gets a slim one at once (the headers that name the event, no body:
`shared.dlq.slim`); if it refuses that too, the event is given up: `on_settled` acks the
source (outcome `dropped`, an error line `broadcaster.dropped`), since retrying would hold
it for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from services.broadcaster.metrics import PathCounters
from services.broadcaster.pending import HeldEvent
from services.broadcaster.policy import about
from services.broadcaster.publisher import Failure, PermissionErrors, Publisher
from shared.dlq import FORWARD_REFUSED, DeadLetter, dead_letter, fit, slim
from shared.envelope import HDR_DLQ_TARGET, HDR_MSG_ID
from shared.logs import get_logger
from shared.retry import RetryPolicy

__all__ = ["FORWARD_REFUSED", "DeadLetters"]

log = get_logger("xr.broadcaster")


class DeadLetters:
    """See the module docstring. Not thread-safe: one event loop."""

    def __init__(
        self,
        nc: Client,
        *,
        region: str,
        target: str,
        timeout_s: float,
        retry: RetryPolicy,
        counters: PathCounters,
        on_settled: Callable[[HeldEvent], Awaitable[None]],
        permission_errors: PermissionErrors | None = None,
    ) -> None:
        self._nc = nc
        self._region = region
        self._target = target
        self._retries = retry.retries()
        self._counters = counters
        self._on_settled = on_settled
        self._publisher: Publisher[HeldEvent] = Publisher(
            nc,
            timeout_s=timeout_s,
            on_acked=self._stored,
            on_failed=self._failed,
            permission_errors=permission_errors,
        )
        self._queue: list[HeldEvent] = []
        self._queued = asyncio.Event()
        self._failing = False
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self._publisher.start()

    def file(self, held: HeldEvent) -> None:
        """File the dead letter of `held` (its `refused` says why the target refused it)."""
        self._queue.append(held)
        self._queued.set()

    def expire(self) -> None:
        self._publisher.expire()

    def stop(self) -> None:
        """The run task returns; what still waits stays held (the forwarder nak's it)."""
        self._stopping.set()
        self._queued.set()

    async def aclose(self, timeout_s: float) -> None:
        await self._publisher.wait_idle(timeout_s)
        await self._publisher.aclose()

    async def run(self) -> None:
        """Publish queued letters, oldest first; after a failed one, wait a backoff first."""
        while True:
            await self._queued.wait()
            if self._failing and not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._next_delay())
            if self._stopping.is_set():
                return
            ready = sorted(self._queue, key=lambda h: h.seq)
            self._queue.clear()
            self._queued.clear()
            for held in ready:
                await self._send(held)

    def _next_delay(self) -> float:
        return self._retries.next_delay("publish_failed", target=self._target)

    async def _send(self, held: HeldEvent) -> None:
        if held.item.dropped is not None:
            await self._dropped(held)
            return
        subject, headers, payload = self._letter(held)
        await self._publisher.publish(held, subject, payload, headers)

    def _letter(self, held: HeldEvent) -> DeadLetter:
        """The dead letter of a refused event (without its body if the whole would exceed
        max_payload)."""
        pending = held.item
        letter = dead_letter(
            region=self._region, subject=pending.subject, headers=pending.headers,
            payload=pending.msg.data, stream_seq=held.seq, reason=FORWARD_REFUSED, status=None,
            attempts=pending.msg.metadata.num_delivered, error=pending.refused or "",
            now=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        subject, headers, payload = letter
        # One id per (target, source event): each target that refuses files its own letter.
        headers[HDR_MSG_ID] = f"fwd:{self._target}:{held.seq}"
        headers[HDR_DLQ_TARGET] = self._target
        letter = fit(DeadLetter((subject, headers, payload)), self._nc.max_payload)
        return letter if pending.slimmed is None else slim(letter, pending.slimmed)

    async def _stored(self, held: HeldEvent, seq: int, duplicate: bool) -> None:
        """The DLQ stored the letter: now the source may be acked for this target."""
        self._failing = False
        self._retries.reset()
        pending = held.item
        self._counters.inc(pending.route.origin, "dead_lettered")
        log.error(
            "broadcaster.dead_lettered",
            target=self._target,
            **about(pending.route),
            reason=FORWARD_REFUSED,
            error=pending.refused,
        )
        await self._on_settled(held)

    def _failed(self, held: HeldEvent, failure: Failure) -> None:
        """Refused for good: a slim letter next, then give up; else the letter goes again."""
        pending = held.item
        if failure.permanent and pending.slimmed is None:
            pending.slimmed = failure.reason
        elif failure.permanent:
            pending.dropped = failure.reason
        else:
            emit = log.debug if self._failing else log.warning
            self._failing = True
            self._counters.inc(pending.route.origin, "retried")
            emit(
                "broadcaster.dead_letter_failed",
                target=self._target,
                **about(pending.route),
                error=failure.reason,
            )
        self.file(held)

    async def _dropped(self, held: HeldEvent) -> None:
        """Neither the target nor this region's DLQ can ever store the event: the error line
        is all that is left of it."""
        pending = held.item
        self._counters.inc(pending.route.origin, "dropped")
        log.error(
            "broadcaster.dropped",
            target=self._target,
            **about(pending.route),
            stream_seq=held.seq,
            error=pending.refused,
            dead_letter_error=pending.dropped,
        )
        await self._on_settled(held)
