"""One forwarder per target region: events stream -> `xr.replay.<target>.<origin>.<service>`.

Each forwarder reads (no API call, so no meta leader needed) its own durable pull consumer
`xr-broadcast-<target>` on the region's events stream, which every broadcaster instance of
the region shares. For every event it asks the policy whether the target needs it:

* not needed: acked at once (outcome `skipped`);
* needed: held in the window (`window.py`) and published, payload and headers unchanged
  (the headers dict is forwarded as received) but for `Nats-Expected-*` (conditions on the
  origin stream), which are dropped, and `Nats-Msg-Id` = event id, added when missing and
  the frame stays within `max_payload`. The source message is acked only after the target
  stream's PubAck. Every publish is bounded by `publish_timeout_s` (NATS_NOTES §3.1.1).

Throughput: up to `window_events` events are held at once and publishes of different keys
are in flight together, so one cross-region round trip is paid per window, not per event.
The hot path has no task, future or timer per event: messages come in through one callback
subscription (`puller.py`, pull requests of `fetch_batch`), PubAcks through another
(`publisher.py`), and each PubAck acks its source and sends the next event of its lane
right there. The route of an event is computed once for all targets (`RouteCache`).

Order of one key: only the head of a lane (service, Xr-Key) is ever in flight. A failed
publish is retried (same headers, so the same `Nats-Msg-Id`) before anything later of that
key is sent, so a retried event never lands after a later event of its key. The price: one
key alone moves at most one event per round trip to a given target.

Failures: the publisher (`publisher.py`) says whether a failure is permanent or transient.

* Transient (no answer in time, no responders, storage trouble...): the target's breaker
  opens (`gate.py`): publishes stop, fetching stops, one probe per jittered, growing backoff;
  the first success resumes all. Failed lane heads wait, in stream order, for the retry task
  to send them again.
* Permanent (the frame exceeds `max_payload`, or the target stream refuses the message itself,
  e.g. over its `max_msg_size`): retrying would block the event's lane, and with it every
  later event of its key, forever. The breaker does not open (the failure is the event's, not
  the target's): a refusal the target answered ends a probe like a success, so a half-open
  breaker cannot stall; an oversized frame, refused before the target is asked, ends it
  without an outcome. The event is dead-lettered in this region's own DLQ,
  `xr.dlq.<region>.<origin>.<service>` (the format of `shared/dlq.py`, reason
  `forward_refused`, the error naming the target, `Xr-Dlq-Target` = the target, so `xregion
  dlq replay` sends it back there, and `Nats-Msg-Id` = `fwd:<target>:<stream seq>` so a
  redelivery is not stored twice). Only once the DLQ stream acked it is the source acked for
  this target (outcome `dead_lettered`, one error line); then the lane goes on. Dead letters
  are local publishes, so they bypass the target's gate; one that fails is retried by the
  dead-letter task after a backoff of its own, and the source is never acked without it. A
  DLQ that refuses the letter itself for good (its own limits) gets a slim one at once (the
  headers that name the event, no body: `shared.dlq.slim`); if it refuses that too, the event
  is given up: the source is acked (outcome `dropped`, an error line `broadcaster.dropped`),
  since retrying it would hold its key back for ever.

Other targets have their own consumer, window, breaker and subscriptions, so a slow, paused
or unreachable target never holds them back. Held events are kept alive with `in_progress()`
every ack_wait/3, so they are not redelivered to another instance while this one retries or
is paused.

A consumer that disappears while running (deleted by mistake, or its stream re-created):
pull requests then end with 409 "Consumer Deleted", later ones with 503 no responders, which
a leader election also causes for a moment; a 503 is therefore confirmed with a consumer info
request, at most every `_CONSUMER_CHECK_S` (no answer, e.g. no meta leader: nothing is
concluded). While the consumer is missing, `consumer_problem` says so (readiness turns red,
naming the consumer and `xregion provision`) and fetching goes on with its backoff; the first
pull request that ends well (the consumer was provisioned again) clears it.

Shutdown (`stop`): stop fetching (an open pull request is let finish) and starting
publishes; publishes under way finish and are acked (bounded); everything still held is
nak'd in stream order, so another instance (or the next start) gets it at once and in order.

Known limits: with several instances, two events of one key may be fetched by different
instances and race, and after an instance dies its held events come back only after
ack_wait, possibly after later events of their key. Then the older event lands second and
the target's replayer acks it as `stale` (last-writer-wins, DESIGN §5a). Retries inside one
instance never reorder. A dead letter that would exceed `max_payload` is filed without its
body (`Xr-Dlq-Body`; always so for a frame refused as over `max_payload`): the event itself
stays in the events stream until its age limit. A consumer provisioned again starts from the
beginning of the stream (deliver all) unless `xregion provision --broadcast-start` says
otherwise: what the target already has is dropped by its duplicate window, older events reach
its replayer again (duplicate or stale there).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.broadcaster.gate import Gate, State
from services.broadcaster.metrics import FORWARDED, HELD, UNREACHABLE
from services.broadcaster.policy import Route, RouteCache
from services.broadcaster.publisher import Failure, Publisher, frame_size
from services.broadcaster.puller import Puller, PullFailedError, PullStalledError
from services.broadcaster.window import Held, Window
from shared.dlq import FORWARD_REFUSED, DeadLetter, dead_letter, fit, slim
from shared.envelope import HDR_DLQ_TARGET, HDR_MSG_ID
from shared.logs import get_logger
from shared.natsconn import Backoff, NatsConnection
from shared.regions import broadcast_consumer, events_stream, replay_subject
from shared.settings import BroadcasterSettings
from shared.tasks import TaskSet

__all__ = ["FORWARD_REFUSED", "ConsumerMissingError", "Forwarder"]

log = get_logger("xr.broadcaster")

# nats-py's default pending-bytes limit of a pull subscription.
_SUB_PENDING_BYTES = 256 * 1024 * 1024
# Conditions on the origin stream that must not be re-applied to the target stream.
_DROPPED_HEADER_PREFIX = "nats-expected-"
# How often publishes are checked for their timeout and the held gauge is refreshed.
_TICK_S = 0.1
# Replay subjects remembered per (origin, service); cleared when a flood of odd services
# would grow it without bound.
_SUBJECTS_MAX = 4096
# Least time between two consumer info requests that check a failing consumer still exists.
_CONSUMER_CHECK_S = 5.0


class ConsumerMissingError(Exception):
    """The durable consumer does not exist: the region was not provisioned."""


@dataclass(slots=True)
class Pending:
    """An event held for the target: the source message and what to publish."""

    msg: Msg
    route: Route
    subject: str
    headers: dict[str, str]
    # Set once the target refused the event for good (the dead letter's error): from then on
    # the event is dead-lettered instead of forwarded.
    refused: str | None = None
    # Set once the DLQ refused the whole dead letter for good (why): a slim one goes instead.
    slimmed: str | None = None
    # Set once the DLQ refused the slim letter too: the event is given up (acked, logged).
    dropped: str | None = None


class Forwarder:
    """Forwards the region's events to one target; see the module docstring."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        region: str,
        target: str,
        routes: RouteCache,
        settings: BroadcasterSettings,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        self.region = region
        self.target = target
        self._conn = conn
        self._routes = routes
        self._s = settings
        self._stream = events_stream(region)
        self._consumer = broadcast_consumer(target)
        self._js: JetStreamContext = conn.nc.jetstream(timeout=settings.publish_timeout_s)
        self._window: Window[Pending] = Window(settings.window_events, settings.window_max_bytes)
        # A request is sent once this much room is free, so requests stay large.
        self._min_request = max(1, min(settings.fetch_batch, settings.window_events) // 2)
        self._puller = Puller(
            conn.nc,
            stream=self._stream,
            consumer=self._consumer,
            on_msg=self._guarded_admit,
            pending_bytes_limit=max(_SUB_PENDING_BYTES, 2 * settings.window_max_bytes),
        )
        self._publisher: Publisher[Held[Pending]] = Publisher(
            conn.nc,
            timeout_s=settings.publish_timeout_s,
            on_acked=self._guarded_acked,
            on_failed=self._failed,
        )
        self._wake_event = asyncio.Event()
        self._blocked: list[Held[Pending]] = []  # lane heads waiting for the gate
        self._blocked_event = asyncio.Event()
        self._refused: list[Held[Pending]] = []  # lane heads waiting for their dead letter
        self._refused_event = asyncio.Event()
        self._dlq_failing = False
        self._dlq_backoff = Backoff(settings.retry_base_s, settings.retry_max_s)
        self.gate = Gate(Backoff(settings.retry_base_s, settings.retry_max_s), on_change=self._wake)
        # Paused until the control bucket has been read: an operator's pause must hold
        # from the first event on.
        self.gate.set_paused(True)
        self._on_failure = on_failure
        task_failed = None if on_failure is None else _ignore_arg(on_failure)
        self._tasks = TaskSet(f"forwarder-{target}", on_failure=task_failed)
        self._background = TaskSet(f"keepalive-{target}", on_failure=task_failed)
        self._ack_wait_s = settings.ack_wait_s
        self._held = HELD.labels(target)
        self._unreachable = UNREACHABLE.labels(target)
        self._counters: dict[tuple[str, str], Any] = {}
        self._subjects: dict[tuple[str, str], str] = {}
        self._unknown_services: set[str] = set()
        self._fetch_failing = False
        self._fetch_backoff = Backoff(settings.retry_base_s, settings.retry_max_s)
        self._consumer_missing = False
        self._consumer_check_at = 0.0  # monotonic time before which no check is made
        self._stopping = asyncio.Event()
        self.bound = False

    @property
    def held(self) -> int:
        return len(self._window)

    @property
    def consumer_problem(self) -> str | None:
        """Why the consumer cannot be read from (for readiness), or None while it can."""
        return self._missing_text() if self._consumer_missing else None

    # ------------------------------------------------------------------ lifecycle

    async def check_consumer(self, timeout_s: float) -> None:
        """Make sure the consumer exists and learn its ack_wait (for the keep-alives).

        Raises ConsumerMissingError if it does not exist. Other failures (the consumer's
        leader not answering in time) are logged and the forwarder runs anyway.
        """
        try:
            info = await self._js.consumer_info(self._stream, self._consumer, timeout=timeout_s)
        except NotFoundError as exc:
            raise ConsumerMissingError(self._missing_text()) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("broadcaster.consumer_unchecked", target=self.target, error=repr(exc))
            return
        self._check_config(info.config.ack_wait, info.config.max_ack_pending)

    def _missing_text(self) -> str:
        return (
            f"consumer {self._stream}/{self._consumer} does not exist "
            "(run `xregion provision` for this region)"
        )

    def _check_config(self, ack_wait_s: float | None, max_ack_pending: int | None) -> None:
        if ack_wait_s:
            self._ack_wait_s = ack_wait_s
        if max_ack_pending is not None and 0 < max_ack_pending < self._s.window_events:
            log.warning(
                "broadcaster.window_over_max_ack_pending",
                target=self.target,
                window_events=self._s.window_events,
                max_ack_pending=max_ack_pending,
                note="run `xregion provision` to apply the broadcaster settings",
            )

    def start(self) -> None:
        _ = self._tasks.spawn(self._run(), name=f"fetch-{self.target}")
        _ = self._tasks.spawn(self._resend_blocked(), name=f"retry-{self.target}")
        _ = self._tasks.spawn(self._send_dead_letters(), name=f"dead-letters-{self.target}")
        _ = self._background.spawn(self._keepalive(), name=f"keepalive-{self.target}")
        _ = self._background.spawn(self._tick(), name=f"tick-{self.target}")

    async def stop(self, timeout_s: float) -> None:
        """The shutdown sequence of the module docstring; idempotent."""
        self.gate.stop()
        self._stopping.set()
        self._wake()
        self._blocked_event.set()  # the retry task sees the stop and returns
        self._refused_event.set()  # so does the dead-letter task
        deadline = time.monotonic() + timeout_s
        if not await self._tasks.wait(timeout_s):
            await self._tasks.cancel("broadcaster shutdown deadline passed")
        await self._publisher.wait_idle(max(0.0, deadline - time.monotonic()))
        await self._background.cancel("broadcaster stopping")
        await self._puller.aclose()
        await self._publisher.aclose()
        given_back = self._window.take_all()
        for held in given_back:
            with contextlib.suppress(nats.errors.Error):
                await held.item.msg.nak()
        self._held.set(0)
        log.info("broadcaster.forwarder_stopped", target=self.target, given_back=len(given_back))

    # ------------------------------------------------------------------ fetching

    async def _run(self) -> None:
        await self._publisher.start()
        await self._puller.start()
        self.bound = True
        try:
            while batch := await self._room():
                await self._puller.request(batch, self._s.fetch_timeout_s)
                await self._pulled()
            if self._puller.is_open:
                # Stopping: what the open request still brings is held, then nak'd.
                await self._pulled()
        finally:
            self.bound = False

    async def _room(self) -> int:
        """Wait until a pull request makes sense; its batch size, or 0 when stopping."""
        while True:
            self._wake_event.clear()
            if self.gate.stopped:
                return 0
            room = self._window.room()
            self._held.set(len(self._window))
            if room >= min(self._min_request, self._window.max_events) and self.gate.may_fetch:
                return min(room, self._s.fetch_batch)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_event.wait(), 1.0)

    async def _pulled(self) -> None:
        """Wait for the open pull request to end; back off after a failed one."""
        try:
            await self._puller.wait_closed(self._s.fetch_timeout_s)
        except PullStalledError:
            log.warning("broadcaster.fetch_stalled", target=self.target)
        except PullFailedError as exc:
            await self._fetch_failed(exc)
        else:
            self._fetched()

    def _fetched(self) -> None:
        """A pull request ended well: the consumer exists and answers."""
        self._consumer_check_at = 0.0
        if self._consumer_missing:
            self._consumer_missing = False
            log.info("broadcaster.consumer_restored", target=self.target, consumer=self._consumer)
        if self._fetch_failing:
            self._fetch_failing = False
            self._fetch_backoff.reset()
            log.info("broadcaster.fetch_recovered", target=self.target)

    async def _fetch_failed(self, exc: PullFailedError) -> None:
        if not self._fetch_failing:
            log.warning("broadcaster.fetch_failed", target=self.target, error=str(exc))
        self._fetch_failing = True
        if not self._consumer_missing and await self._consumer_gone(exc):
            self._consumer_missing = True
            log.error(
                "broadcaster.consumer_missing",
                target=self.target,
                consumer=self._consumer,
                error=str(exc),
                note=self._missing_text(),
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._fetch_backoff.next_delay())

    async def _consumer_gone(self, exc: PullFailedError) -> bool:
        """Does this failed pull request mean the consumer no longer exists? A 503 is checked
        with a consumer info request (not more often than every `_CONSUMER_CHECK_S`); when
        that gets no clear answer (no meta leader, a timeout), nothing is concluded."""
        if exc.consumer_deleted:
            return True
        now = time.monotonic()
        if not exc.no_responders or now < self._consumer_check_at:
            return False
        self._consumer_check_at = now + _CONSUMER_CHECK_S
        try:
            await self._js.consumer_info(self._stream, self._consumer)
        except NotFoundError:
            return True
        except (TimeoutError, nats.errors.Error) as exc_info:
            log.debug("broadcaster.consumer_unchecked", target=self.target, error=repr(exc_info))
        return False

    def _wake(self) -> None:
        self._wake_event.set()

    # ------------------------------------------------------------------ one event

    async def _guarded_admit(self, msg: Msg) -> None:
        # The subscription's callback boundary: nats-py would only hand an error to its
        # error callback and go on, so a bug here stops the service instead.
        try:
            await self._admit(msg)
        except Exception as exc:
            self._crashed("admit", exc)
            raise

    async def _admit(self, msg: Msg) -> None:
        seq = _stream_seq(msg)
        route = self._routes.route(seq, msg.subject, msg.headers, msg.data)
        if self.target not in route.targets:
            await self._ack(msg)
            self._count(route, "skipped")
            return
        self._note(route)
        headers, size = self._headers(msg, route)
        pending = Pending(msg, route, self._subject(route), headers)
        held = Held(seq, route.lane, size, pending, touched_s=time.monotonic())
        if self._window.add(held):
            await self._start(held)

    def _subject(self, route: Route) -> str:
        key = (route.origin, route.service)
        subject = self._subjects.get(key)
        if subject is None:
            if len(self._subjects) >= _SUBJECTS_MAX:
                self._subjects.clear()
            subject = replay_subject(self.target, route.origin, route.service)
            self._subjects[key] = subject
        return subject

    def _headers(self, msg: Msg, route: Route) -> tuple[dict[str, str], int]:
        """The headers to publish (the received dict itself when nothing must change) and
        the size of the message."""
        received = msg.headers or {}
        size = len(msg.data)
        clean = True
        for name, value in received.items():
            size += len(name) + len(value) + 4
            if name[:14].lower() == _DROPPED_HEADER_PREFIX:
                clean = False
        if clean and HDR_MSG_ID in received:
            return received, size
        headers = {
            name: value
            for name, value in received.items()
            if not name.lower().startswith(_DROPPED_HEADER_PREFIX)
        }
        if HDR_MSG_ID not in headers:
            # A valid event's msg id is its event id; a malformed one gets a stable id,
            # unless that would take its frame past max_payload (it is then sent as stored).
            seq = msg.metadata.sequence.stream
            with_id = {**headers, HDR_MSG_ID: route.event_id or f"{self._stream}:{seq}"}
            if frame_size(msg.data, with_id) <= self._conn.nc.max_payload:
                headers = with_id
        return headers, size

    def _note(self, route: Route) -> None:
        if route.kind == "malformed":
            log.warning(
                "broadcaster.malformed_event",
                target=self.target,
                origin=route.origin,
                service=route.service,
                problem=route.problem,
            )
        elif not route.known_service and route.service not in self._unknown_services:
            self._unknown_services.add(route.service)
            log.warning(
                "broadcaster.unknown_service",
                target=self.target,
                service=route.service,
                note="not in this region's configuration: forwarded to every peer region",
            )

    async def _start(self, held: Held[Pending]) -> None:
        """Publish a lane head now if the gate allows, else leave it to the retry task."""
        allowed = self.gate.try_acquire()
        if allowed:
            await self._send(held)
        elif allowed is None:
            self._block(held)
        # False: stopping; the event stays held and is nak'd by stop().

    async def _send(self, held: Held[Pending]) -> None:
        pending = held.item
        await self._publisher.publish(held, pending.subject, pending.msg.data, pending.headers)

    def _block(self, held: Held[Pending]) -> None:
        self._blocked.append(held)
        self._blocked_event.set()

    async def _guarded_acked(self, held: Held[Pending], seq: int, duplicate: bool) -> None:
        try:
            await self._acked(held, seq, duplicate)
        except Exception as exc:
            self._crashed("acked", exc)
            raise

    async def _acked(self, held: Held[Pending], seq: int, duplicate: bool) -> None:
        """The target stored the event (or the DLQ its dead letter): ack the source, go on
        with the lane."""
        pending = held.item
        if pending.refused is not None:
            await self._dead_lettered(held)
            return
        self._succeeded()
        await self._ack(pending.msg)
        self._forwarded(pending, seq, duplicate)
        await self._next_in_lane(held)

    async def _next_in_lane(self, held: Held[Pending]) -> None:
        following = self._window.done(held)
        self._wake()
        if following is not None:
            await self._start(following)

    def _failed(self, held: Held[Pending], failure: Failure) -> None:
        """The publish was not acked: a transient failure waits for the gate and goes again;
        a permanent refusal is dead-lettered; a failed dead letter is sent again later."""
        if held.item.refused is not None and failure.permanent:
            self._dead_letter_refused(held, failure.reason)
        elif held.item.refused is not None:
            self._dead_letter_failed(held, failure.reason)
        elif failure.permanent:
            self._refuse(held, failure)
        else:
            self._retry(held.item, failure.reason)
            self._block(held)

    async def _resend_blocked(self) -> None:
        """Send blocked lane heads again, oldest first, whenever the gate lets them."""
        while True:
            await self._blocked_event.wait()
            if not await self.gate.acquire():
                return
            ready = sorted(self._blocked, key=_seq_of)
            self._blocked.clear()
            self._blocked_event.clear()
            if not ready:
                self.gate.abandon()
                continue
            probing = self.gate.state is not State.CLOSED
            for index, held in enumerate(ready):
                # The first one goes on the acquired permit; in half-open only that probe.
                if index and (probing or self.gate.try_acquire() is not True):
                    self._blocked.extend(ready[index:])
                    self._blocked_event.set()
                    break
                await self._send(held)

    # ------------------------------------------------------------------ dead letters

    def _refuse(self, held: Held[Pending], failure: Failure) -> None:
        """The event can never be stored by the target: dead-letter it. A refusal the target
        answered counts as a success for the breaker (the target is reachable: a half-open
        breaker closes); one found out here (a frame over max_payload) says nothing about the
        target, so a probe it was ends without an outcome."""
        held.item.refused = f"target {self.target} refused the event for good: {failure.reason}"
        if failure.answered:
            self._succeeded()
        else:
            self.gate.abandon()
        self._queue_dead_letter(held)

    def _queue_dead_letter(self, held: Held[Pending]) -> None:
        self._refused.append(held)
        self._refused_event.set()

    async def _send_dead_letters(self) -> None:
        """Publish the dead letters of refused events, oldest first; after a failed one, wait a
        backoff first (the DLQ is local: the target's gate does not apply)."""
        while True:
            await self._refused_event.wait()
            if self._dlq_failing and not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._dlq_backoff.next_delay())
            if self._stopping.is_set():
                return  # what waits here is still held: stop() nak's it
            ready = sorted(self._refused, key=_seq_of)
            self._refused.clear()
            self._refused_event.clear()
            for held in ready:
                if held.item.dropped is not None:
                    await self._dropped(held)
                    continue
                subject, headers, payload = self._dead_letter(held)
                await self._publisher.publish(held, subject, payload, headers)

    def _dead_letter(self, held: Held[Pending]) -> DeadLetter:
        """The dead letter of a refused event, in this region's DLQ (without its body if the
        whole would exceed max_payload)."""
        pending = held.item
        letter = dead_letter(
            region=self.region, subject=pending.subject, headers=pending.headers,
            payload=pending.msg.data, stream_seq=held.seq, reason=FORWARD_REFUSED, status=None,
            attempts=pending.msg.metadata.num_delivered, error=pending.refused or "",
            now=dt.datetime.now(dt.UTC),
        )  # fmt: skip
        subject, headers, payload = letter
        # One id per (target, source event): each target that refuses files its own letter,
        # and `xregion dlq replay` sends it back to that target.
        headers[HDR_MSG_ID] = f"fwd:{self.target}:{held.seq}"
        headers[HDR_DLQ_TARGET] = self.target
        letter = fit(DeadLetter((subject, headers, payload)), self._conn.nc.max_payload)
        return letter if pending.slimmed is None else slim(letter, pending.slimmed)

    def _dead_letter_refused(self, held: Held[Pending], reason: str) -> None:
        """The DLQ refused the dead letter for good (its own limits): a slim letter next, and
        if that is refused too, the event is given up rather than retried for ever."""
        pending = held.item
        if pending.slimmed is None:
            pending.slimmed = reason
        else:
            pending.dropped = reason
        self._queue_dead_letter(held)

    async def _dropped(self, held: Held[Pending]) -> None:
        """Neither the target nor this region's DLQ can ever store the event: ack the source
        so its key goes on; the error line is all that is left of it."""
        pending = held.item
        await self._ack(pending.msg)
        self._count(pending.route, "dropped")
        log.error(
            "broadcaster.dropped",
            target=self.target,
            **_about(pending.route),
            stream_seq=held.seq,
            error=pending.refused,
            dead_letter_error=pending.dropped,
        )
        await self._next_in_lane(held)

    async def _dead_lettered(self, held: Held[Pending]) -> None:
        """The DLQ stored the dead letter: now the source may be acked for this target."""
        pending = held.item
        self._dlq_failing = False
        self._dlq_backoff.reset()
        await self._ack(pending.msg)
        route = pending.route
        self._count(route, "dead_lettered")
        log.error(
            "broadcaster.dead_lettered",
            target=self.target,
            **_about(route),
            reason=FORWARD_REFUSED,
            error=pending.refused,
        )
        await self._next_in_lane(held)

    def _dead_letter_failed(self, held: Held[Pending], reason: str) -> None:
        """The dead letter was not stored: the source stays unacked, the letter goes again."""
        route = held.item.route
        emit = log.debug if self._dlq_failing else log.warning
        self._dlq_failing = True
        self._count(route, "retried")
        emit(
            "broadcaster.dead_letter_failed",
            target=self.target,
            **_about(route),
            error=reason,
        )
        self._queue_dead_letter(held)

    # ------------------------------------------------------------------ transient failures

    def _retry(self, pending: Pending, error: str) -> None:
        opening = self.gate.state is State.CLOSED
        delay_s = self.gate.failure()
        self._count(pending.route, "retried")
        self._unreachable.set(1)
        route = pending.route
        # One line when the target starts failing; each further retry at debug level.
        emit = log.warning if opening else log.debug
        emit(
            "broadcaster.retry",
            target=self.target,
            **_about(route),
            delay_s=round(delay_s, 3),
            error=error,
        )

    def _succeeded(self) -> None:
        if self.gate.state is State.CLOSED:
            self.gate.success()
            return
        self.gate.success()
        self._unreachable.set(0)
        log.info("broadcaster.target_recovered", target=self.target)

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except nats.errors.Error as exc:
            # Redelivered after ack_wait; the target's duplicate window drops the copy.
            log.warning("broadcaster.ack_failed", target=self.target, error=repr(exc))

    def _forwarded(self, pending: Pending, seq: int, duplicate: bool) -> None:
        route = pending.route
        outcome = "duplicate" if duplicate else _OUTCOMES[route.kind]
        self._count(route, outcome)
        log.debug(
            "broadcaster.forwarded",
            target=self.target,
            **_about(route),
            outcome=outcome,
            seq=seq,
        )

    def _count(self, route: Route, outcome: str) -> None:
        counter = self._counters.get((route.origin, outcome))
        if counter is None:
            counter = FORWARDED.labels(route.origin, self.target, outcome)
            self._counters[(route.origin, outcome)] = counter
        counter.inc()

    def _crashed(self, where: str, exc: Exception) -> None:
        log.error("broadcaster.callback_failed", target=self.target, where=where, error=repr(exc))
        if self._on_failure is not None:
            self._on_failure()

    # ------------------------------------------------------------------ background

    async def _keepalive(self) -> None:
        """Reset ack_wait of events held longer than ack_wait/3, so none is redelivered."""
        while True:
            interval_s = self._ack_wait_s / 3
            await asyncio.sleep(interval_s)
            now = time.monotonic()
            for held in list(self._window):
                if now - held.touched_s >= interval_s:
                    held.touched_s = now
                    with contextlib.suppress(nats.errors.Error):
                        await held.item.msg.in_progress()

    async def _tick(self) -> None:
        """Time out publishes that got no PubAck; refresh the held gauge."""
        while True:
            await asyncio.sleep(min(_TICK_S, self._s.publish_timeout_s / 4))
            self._publisher.expire()
            self._held.set(len(self._window))


_OUTCOMES = {"event": "forwarded", "canary": "canary", "malformed": "malformed"}


def _about(route: Route) -> dict[str, object]:
    """What every log line about an event carries (DESIGN §8)."""
    return {
        "event_id": route.event_id,
        "origin": route.origin,
        "service": route.service,
        "trace_id": route.trace_id,
    }


def _stream_seq(msg: Msg) -> int:
    """The stream sequence of a delivered message, read from its ack subject:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`
    (the longer form with a domain goes through nats-py's parser)."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    return int(msg.metadata.sequence.stream)


def _seq_of(held: Held[Pending]) -> int:
    return held.seq


def _ignore_arg(callback: Callable[[], None]) -> Callable[[object], None]:
    def call(_: object) -> None:
        callback()

    return call
