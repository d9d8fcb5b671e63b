"""The replay stream consumer: fetch, hand each message to the applier in per-key order, map
each outcome to exactly one NATS action, one metric label and one log line.

* Reads the pre-created durable with pull requests of its own (`shared/puller.py`: no
  JetStream API call, so no meta leader needed), each expiring after `fetch_timeout_s` so a
  shutdown is obeyed soon (docs/NATS.md §3.1.5). Every message is dispatched the moment it
  arrives, not when its request's batch is complete.
* At most `concurrency` messages are held at once (applying, or queued behind an earlier
  message of the same key); a request asks for no more than the free slots, and waits until a
  quarter of them are free (one pull request per freed slot cost as much as the event).
  Messages that still arrive after `stop()` are nak'ed at once, for another instance.
* Held messages get `in_progress()` every third of `ack_wait_s`, so queued ones never time out;
  also after `stop()`, until `drain()` has settled every held message.
* `Done` → ack; `Retry` → nak(delay); `Poison` → publish the dead letter, then ack (if the
  dead-letter publish fails: nak, so it is tried again). The `Done` acks go out through the
  `Coalescer` (a burst per millisecond; queued synchronously, so a cancellation cannot lose
  one; the service sends the queue before it closes NATS).
* Each event is handled inside `bound_contextvars(event_id, origin, service, trace_id)`, so
  every line logged about it carries them (docs/DESIGN.md §8), also the upstream's retry lines.
* After an HTTP answer, the `replayer.retried` and `replayer.dead_lettered` lines carry what
  the service said as `service_answer` (its body's excerpt), and the dead letter's
  `Xr-Dlq-Error` ends with it (`Poison.letter_error`).
* `stop()`: no new pull requests; `drain(timeout)`: in-flight work finishes, then the rest is
  cancelled and nak'ed, so it is redelivered at once (its claim is its own, still valid);
  messages cancelled while still queued behind their key never started, so `drain` naks them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import Counter
from structlog.contextvars import bound_contextvars

from services.replayer.apply import Applier, Delivery
from services.replayer.metrics import EVENTS, INFLIGHT, REPLAY_BACKLOG
from services.replayer.outcomes import Done, Poison, Retry
from services.replayer.partitions import KeyedRunner, commutes, order_key
from shared.coalesce import Coalescer
from shared.dlq import dead_letter, fit, path_of
from shared.envelope import HDR_EVENT_ID, HDR_TRACE
from shared.logs import get_logger
from shared.puller import PENDING_BYTES, Puller, PullFailedError, PullStalledError
from shared.settings import ReplayerSettings

__all__ = ["ReplayConsumer"]

log = get_logger("xr.replayer")
_NATS_ERRORS = (nats.errors.Error, TimeoutError, OSError)


class ReplayConsumer:
    """One intake loop over the region's shared replayer consumer."""

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        applier: Applier,
        settings: ReplayerSettings,
        *,
        region: str,
        stream: str,
        durable: str,
        max_payload: Callable[[], int],
        coalescer: Coalescer | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._coalescer = coalescer
        self._js = js
        self._applier = applier
        self._settings = settings
        self._region = region
        self._clock = clock
        self._max_payload = max_payload
        self._runner = KeyedRunner()
        self._held: dict[int, Msg] = {}  # by id(): Msg is an unhashable dataclass
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._puller = Puller(
            nc, stream=stream, consumer=durable, on_msg=self._arrived,
            pending_bytes_limit=PENDING_BYTES,
        )  # fmt: skip
        self._arrivals = 0  # messages the open pull request brought
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._counters: dict[tuple[str, str, str], Counter] = {}
        # Refill when a quarter of the window is free (or nothing is held).
        self._refill = max(1, min(settings.fetch_batch, settings.concurrency // 4))
        self.bound = False

    @property
    def inflight(self) -> int:
        return len(self._held)

    async def bind(self) -> None:
        if not self.bound:
            await self._puller.start()
            self.bound = True

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, *, until_idle: bool = False) -> None:
        """Pull and dispatch until `stop()` (or, with `until_idle`, until nothing is left)."""
        await self.bind()
        if self._heartbeat_task is None:
            self._heartbeat_task = asyncio.get_running_loop().create_task(self._heartbeat())
        try:
            while not self._stopping.is_set():
                got = await self._fetch_once()
                if until_idle and not got and not self._held:
                    return
        finally:
            if not self._held:  # else held messages stay alive until drain() settles them
                await self._stop_heartbeat()

    async def drain(self, timeout_s: float) -> bool:
        """Let held messages finish within `timeout_s` (kept alive meanwhile); cancel and nak
        the rest."""
        try:
            finished = await self._runner.wait(timeout_s)
            if not finished:
                log.warning("replayer.shutdown_cancelling", held=len(self._held))
                await self._runner.cancel("replayer shutdown deadline")
            # Cancelled while queued behind their key: `_process` never ran for them.
            for msg in list(self._held.values()):
                await _settle(msg.nak())
            self._held.clear()
            INFLIGHT.set(0)
        finally:
            await self._stop_heartbeat()
        return finished

    async def _stop_heartbeat(self) -> None:
        task, self._heartbeat_task = self._heartbeat_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def aclose(self) -> None:
        await self._stop_heartbeat()
        self.bound = False
        await self._puller.aclose()

    async def _fetch_once(self) -> int:
        """One pull request, waited for until it is over; how many messages it brought."""
        free = self._settings.concurrency - len(self._held)
        if free <= 0 or (self._held and free < self._refill):
            # Pull in batches, not one request per freed slot.
            self._slot_freed.clear()
            await self._wait_for_slot()
            return 1
        self._arrivals = 0
        expires_s = self._settings.fetch_timeout_s
        await self._puller.request(min(free, self._settings.fetch_batch), expires_s)
        try:
            await self._puller.wait_closed(expires_s)
        except PullStalledError:
            log.warning("replayer.fetch_stalled")
        except PullFailedError as exc:
            log.warning("replayer.fetch_failed", error=str(exc))
            await self._pause(expires_s)
        else:
            if not self._arrivals:
                REPLAY_BACKLOG.set(0)
        return self._arrivals

    async def _wait_for_slot(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.fetch_timeout_s):
                await self._slot_freed.wait()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _arrived(self, msg: Msg) -> None:
        """The intake subscription's callback: one message of the open pull request."""
        self._arrivals += 1
        if self._stopping.is_set():
            await _settle(msg.nak())  # not started here: another instance takes it now
            return
        self._dispatch(msg)
        REPLAY_BACKLOG.set(msg.metadata.num_pending)

    def _dispatch(self, msg: Msg) -> None:
        self._held[id(msg)] = msg
        INFLIGHT.set(len(self._held))
        self._runner.submit(
            order_key(msg.headers), lambda: self._process(msg), shared=commutes(msg.headers)
        )

    async def _process(self, msg: Msg) -> None:
        headers = msg.headers or {}
        origin, service = path_of(msg.subject)
        # Every line logged while handling this event carries these (docs/DESIGN.md §8).
        with bound_contextvars(
            event_id=headers.get(HDR_EVENT_ID, ""),
            origin=origin,
            service=service,
            trace_id=headers.get(HDR_TRACE, "")[3:35],
        ):
            try:
                await self._decide(msg, origin, service)
            except asyncio.CancelledError:
                with contextlib.suppress(*_NATS_ERRORS):
                    await asyncio.shield(msg.nak())
                raise
            finally:
                self._held.pop(id(msg), None)
                INFLIGHT.set(len(self._held))
                self._slot_freed.set()

    async def _decide(self, msg: Msg, origin: str, service: str) -> None:
        delivery = _delivery(msg)
        try:
            done = await self._applier.handle(delivery)
        except Retry as retry:
            await _settle(msg.nak(delay=retry.delay_s))
            self._count(origin, service, "retried")
            log.info(
                "replayer.retried", reason=retry.reason, delay_s=retry.delay_s,
                **_service_answer(retry.status, retry.answer),
            )  # fmt: skip
        except Poison as poison:
            await self._dead_letter(msg, delivery, poison, origin, service)
        except _NATS_ERRORS as exc:  # the versions bucket or NATS hiccuped: try again soon
            await _settle(msg.nak(delay=self._settings.nak_base_s))
            self._count(origin, service, "retried")
            log.warning("replayer.nats_error", error=repr(exc))
        except Exception as exc:  # noqa: BLE001 - the per-event boundary: a bug loses no event
            await self._internal_error(msg, delivery, exc, origin, service)
        else:
            await self._ack(msg)
            if done is not Done.CANARY:
                self._count(origin, service, done.value)
                log.info(f"replayer.{done.value}")  # the event's one canonical line

    async def _internal_error(
        self, msg: Msg, delivery: Delivery, exc: Exception, origin: str, service: str
    ) -> None:
        """An error nobody translated (a bug, or a library's surprise): logged with its
        traceback, retried like a transient failure, dead-lettered as `internal_error` once
        the deliveries are used up, so an operator can `dlq replay` it after the fix. Without
        this the server would drop the event after `max_deliver`, silently."""
        log.exception("replayer.internal_error")
        if delivery.num_delivered < self._settings.max_deliveries:
            await _settle(msg.nak(delay=self._settings.nak_base_s))
            self._count(origin, service, "retried")
            return
        await self._dead_letter(msg, delivery, Poison("internal_error", repr(exc)), origin, service)

    async def _dead_letter(
        self, msg: Msg, delivery: Delivery, poison: Poison, origin: str, service: str
    ) -> None:
        letter = dead_letter(
            region=self._region, subject=msg.subject, headers=msg.headers, payload=msg.data,
            stream_seq=delivery.stream_seq, reason=poison.reason, status=poison.status,
            attempts=delivery.num_delivered, error=poison.letter_error, now=self._clock(),
        )  # fmt: skip
        subject, headers, payload = fit(letter, self._max_payload())
        try:
            await self._js.publish(subject, payload, headers=headers)
        except _NATS_ERRORS as exc:
            await _settle(msg.nak(delay=self._settings.nak_base_s))
            log.warning("replayer.dead_letter_failed", error=repr(exc))
            return
        await _settle(msg.ack())
        self._count(origin, service, "dead_lettered")
        log.warning(
            "replayer.dead_lettered", reason=poison.reason, status=poison.status,
            error=poison.error, **_service_answer(poison.status, poison.answer),
        )  # fmt: skip

    async def _ack(self, msg: Msg) -> None:
        if self._coalescer is None or not msg.reply:
            await _settle(msg.ack())
        else:  # an ack is an empty message to the reply subject (what msg.ack() sends)
            self._coalescer.publish(msg.reply)

    def _count(self, origin: str, service: str, outcome: str) -> None:
        labels = (origin, service, outcome)
        counter = self._counters.get(labels)
        if counter is None:
            counter = self._counters[labels] = EVENTS.labels(*labels)
        counter.inc()

    async def _heartbeat(self) -> None:
        period = self._settings.ack_wait_s / 3
        while True:
            await asyncio.sleep(period)
            for msg in list(self._held.values()):
                with contextlib.suppress(*_NATS_ERRORS):
                    await msg.in_progress()


async def _settle(action: Awaitable[None]) -> None:
    """Ack or nak, shielded from cancellation. If it cannot reach the server the message is
    redelivered after ack_wait, where the version record makes it `duplicate` or re-claims it."""
    try:
        await asyncio.shield(action)
    except _NATS_ERRORS as exc:
        log.warning("replayer.settle_failed", error=repr(exc))


def _service_answer(status: int | None, answer: str) -> dict[str, str]:
    """The `service_answer` log field, on lines about an event the service answered."""
    return {} if status is None else {"service_answer": answer}


def _delivery(msg: Msg) -> Delivery:
    meta = msg.metadata
    return Delivery(
        subject=msg.subject,
        headers=msg.headers,
        data=msg.data,
        num_delivered=int(meta.num_delivered or 1),
        stream_seq=int(meta.sequence.stream),
        stored_at=meta.timestamp,
    )
