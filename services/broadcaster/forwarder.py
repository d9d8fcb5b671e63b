"""One forwarder per target region: events stream -> `xr.replay.<target>.<origin>.<service>`.

Each forwarder reads (no API call, so no meta leader needed) its own durable pull consumer
`xr-broadcast-<target>` on the region's events stream, which every broadcaster instance of
the region shares. For every event it asks the policy whether the target needs it:

* not needed: acked at once (outcome `skipped`);
* needed: held in the window (`window.py`) and published by the sender (`sender.py`),
  payload and headers unchanged (the headers dict is forwarded as received) but for
  `Nats-Expected-*` (conditions on the origin stream), which are dropped, and `Nats-Msg-Id`
  = event id, added when missing and the frame stays within `max_payload`. The source
  message is acked only after the target stream's PubAck. Every publish is bounded by
  `publish_timeout_s` (a PubAck that never comes is a failure, not a hang).

Throughput: up to `window_events` events are held and in flight at once, whatever their
keys, in stream order on one connection (docs/DESIGN.md "Broadcaster data path"). The hot
path has no task, future or timer per event: messages come in through one callback
subscription (`shared/puller.py`, pull requests of `fetch_batch`), PubAcks through another
(`publisher.py`), and each PubAck acks its source right there. The route of an event is
computed once for all targets (`RouteCache`).

Failures: transient ones open the target's breaker and re-send from the first unacked event
(`sender.py`); events the target refuses for good are dead-lettered (`deadletters.py`);
a consumer that goes missing is watched by `consumer.py`; held events are kept from
redelivery by `keepalive.py`. Other targets have their own consumer, window, breaker and
subscriptions, so a slow, paused or unreachable target never holds them back.

Shutdown (`stop`): stop fetching (an open pull request is let finish) and starting
publishes; publishes under way finish and are acked (bounded); everything still held is
nak'd in stream order, so another instance (or the next start) gets it at once and in order.

Known limits: an event stored in the target stream after a later one (a failure re-sent
behind events that had been stored already; two instances fetching events of one key; the
held events of a killed instance, redelivered after ack_wait) is settled by the target's
replayer: `stale` for a `replace`, applied and counted for an `apply` (docs/DESIGN.md "Write
rules"). A dead letter that would exceed `max_payload` is filed without its body
(`Xr-Dlq-Body`; always so for a frame refused as over `max_payload`): the event itself stays
in the events stream until its age limit. A consumer provisioned again starts from the
beginning of the stream (deliver all) unless `xregion provision --broadcast-start` says
otherwise: what the target already has is dropped by its duplicate window, older events reach
its replayer again (duplicate or stale there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from services.broadcaster.consumer import ConsumerHealth, ConsumerMissingError
from services.broadcaster.deadletters import FORWARD_REFUSED, DeadLetters
from services.broadcaster.gate import Gate
from services.broadcaster.keepalive import keep_alive
from services.broadcaster.metrics import HELD, PathCounters
from services.broadcaster.pending import HeldEvent, Pending
from services.broadcaster.policy import Route, RouteCache, about
from services.broadcaster.publisher import Failure, frame_size
from services.broadcaster.sender import Sender
from services.broadcaster.window import Held, Window
from shared.envelope import HDR_MSG_ID
from shared.frames import header_block
from shared.logs import get_logger
from shared.natsconn import NatsConnection
from shared.puller import PENDING_BYTES, Puller, PullFailedError, PullStalledError
from shared.regions import broadcast_consumer, events_stream, replay_subject
from shared.retry import RetryPolicy
from shared.settings import BroadcasterSettings
from shared.tasks import TaskSet

__all__ = ["FORWARD_REFUSED", "ConsumerMissingError", "Forwarder"]

log = get_logger("xr.broadcaster")

# Conditions on the origin stream that must not be re-applied to the target stream.
_DROPPED_HEADER_PREFIX = "nats-expected-"
# How often publishes are checked for their timeout and the held gauge is refreshed.
_TICK_S = 0.1
# Replay subjects remembered per (origin, service); cleared when a flood of odd services
# would grow it without bound.
_SUBJECTS_MAX = 4096
_OUTCOMES = {"event": "forwarded", "canary": "canary", "malformed": "malformed"}


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
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        s = settings
        self.region = region
        self.target = target
        self._conn = conn
        self._routes = routes
        self._s = s
        self._stream = events_stream(region)
        self._ack_wait_s = s.ack_wait_s
        self._window: Window[Pending] = Window(s.window_events, s.window_max_bytes)
        # A request is sent once this much room is free, so requests stay large.
        self._min_request = max(1, min(s.fetch_batch, s.window_events) // 2)
        self._counters = PathCounters(target)
        self._held = HELD.labels(target)
        self._wake_event = asyncio.Event()
        self.gate = Gate(self._retry("broadcaster.gate"), on_change=self._wake)
        # Paused until the control bucket has been read: an operator's pause must hold
        # from the first event on.
        self.gate.set_paused(True)
        self._health = self._consumer_health(conn, s)
        self._puller = self._intake(conn, s)
        self._sender = Sender(
            conn.nc, target=target, window=self._window, gate=self.gate,
            timeout_s=s.publish_timeout_s, counters=self._counters,
            on_acked=self._guarded_acked, on_refused=self._refused, permission_errors=conn,
        )  # fmt: skip
        self._dead_letters = DeadLetters(
            conn.nc, region=region, target=target, timeout_s=s.publish_timeout_s,
            retry=self._retry("broadcaster.dead_letter"), counters=self._counters,
            on_settled=self._settled, permission_errors=conn,
        )  # fmt: skip
        self._on_failure = on_failure
        task_failed = None if on_failure is None else _task_failed(on_failure)
        self._tasks = TaskSet(f"forwarder-{target}", on_failure=task_failed)
        self._background = TaskSet(f"keepalive-{target}", on_failure=task_failed)
        self._subjects: dict[tuple[str, str], str] = {}
        self._unknown_services: set[str] = set()
        self._stopping = asyncio.Event()
        # Read once: the line per forwarded event is built only when it would be written.
        self._debug = log.is_enabled_for(logging.DEBUG)
        self.bound = False

    def _consumer_health(self, conn: NatsConnection, s: BroadcasterSettings) -> ConsumerHealth:
        return ConsumerHealth(
            conn.nc.jetstream(timeout=s.publish_timeout_s),
            stream=self._stream,
            consumer=broadcast_consumer(self.target),
            target=self.target,
            window_events=s.window_events,
            retry=self._retry("broadcaster.fetch"),
        )

    def _retry(self, component: str) -> RetryPolicy:
        return RetryPolicy.backoff(
            component, base_s=self._s.retry_base_s, max_s=self._s.retry_max_s
        )

    def _intake(self, conn: NatsConnection, s: BroadcasterSettings) -> Puller:
        return Puller(
            conn.nc,
            stream=self._stream,
            consumer=broadcast_consumer(self.target),
            on_msg=self._guarded_admit,
            pending_bytes_limit=max(PENDING_BYTES, 2 * s.window_max_bytes),
        )

    @property
    def held(self) -> int:
        return len(self._window)

    @property
    def in_flight(self) -> int:
        """Publishes to the target not yet answered."""
        return self._sender.in_flight

    @property
    def consumer_problem(self) -> str | None:
        """Why the consumer cannot be read from (for readiness), or None while it can."""
        return self._health.problem

    # ------------------------------------------------------------------ lifecycle

    async def check_consumer(self, timeout_s: float) -> None:
        """Make sure the consumer exists (ConsumerMissingError if not) and learn its
        ack_wait (for the keep-alives)."""
        ack_wait_s = await self._health.check(timeout_s)
        if ack_wait_s:
            self._ack_wait_s = ack_wait_s

    def start(self) -> None:
        _ = self._tasks.spawn(self._run(), name=f"fetch-{self.target}")
        _ = self._tasks.spawn(self._sender.run(), name=f"retry-{self.target}")
        _ = self._tasks.spawn(self._dead_letters.run(), name=f"dead-letters-{self.target}")
        keepalive = keep_alive(self._window, lambda: self._ack_wait_s)
        _ = self._background.spawn(keepalive, name=f"keepalive-{self.target}")
        _ = self._background.spawn(self._tick(), name=f"tick-{self.target}")

    async def stop(self, timeout_s: float) -> None:
        """The shutdown sequence of the module docstring; idempotent."""
        self.gate.stop()
        self._stopping.set()
        self._wake()
        self._sender.stop()
        self._dead_letters.stop()
        deadline = time.monotonic() + timeout_s
        if not await self._tasks.wait(timeout_s):
            log.warning(
                "broadcaster.shutdown_deadline_passed", target=self.target, timeout_s=timeout_s
            )
            await self._tasks.cancel("broadcaster shutdown deadline passed")
        await self._sender.aclose(max(0.0, deadline - time.monotonic()))
        await self._dead_letters.aclose(max(0.0, deadline - time.monotonic()))
        await self._background.cancel("broadcaster stopping")
        await self._puller.aclose()
        given_back = self._window.take_all()
        for held in given_back:
            with contextlib.suppress(nats.errors.Error):
                await held.item.msg.nak()
        self._held.set(0)
        log.info("broadcaster.forwarder_stopped", target=self.target, given_back=len(given_back))

    # ------------------------------------------------------------------ fetching

    async def _run(self) -> None:
        await self._sender.start()
        await self._dead_letters.start()
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
            if room >= self._min_request and self.gate.may_fetch:
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
            delay_s = await self._health.fetch_failed(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay_s)
        else:
            self._health.fetched()

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
            self._counters.inc(route.origin, "skipped")
            return
        if route.kind == "malformed" or not route.known_service:
            self._note(route)
        headers, block, size = self._headers(msg, route)
        pending = Pending(msg, route, self._subject(route), headers, block)
        held = Held(seq, size, pending, touched_s=time.monotonic())
        if not self._window.add(held):
            return
        if route.origin != self.region:
            self._foreign(held)
            return
        if route.unverified is not None:
            self._unverified(held, route.unverified)
            return
        await self._sender.submit(held)

    def _unverified(self, held: HeldEvent, reason: str) -> None:
        """An event whose signature does not verify (`verify.py`): every target would refuse
        it, so it is dead-lettered here, once, instead of being forwarded."""
        route = held.item.route
        held.item.refused = reason
        log.error(
            "broadcaster.unverified_event", target=self.target, service=route.service,
            event_id=route.event_id, reason=reason,
        )  # fmt: skip
        self._dead_letters.file(held)

    def _foreign(self, held: HeldEvent) -> None:
        """An event in this region's stream that names another origin (forged, or written with
        a stolen credential): its replay subject is another region's, which the permissions
        refuse for ever, so it is dead-lettered here instead of holding the target's path."""
        route = held.item.route
        held.item.refused = (
            f"its origin {route.origin!r} is not {self.region!r}, whose events stream holds it: "
            "never forwarded"
        )
        log.error(
            "broadcaster.foreign_origin", target=self.target, origin=route.origin,
            service=route.service, event_id=route.event_id,
        )  # fmt: skip
        self._dead_letters.file(held)

    def _subject(self, route: Route) -> str:
        key = (route.origin, route.service)
        subject = self._subjects.get(key)
        if subject is None:
            if len(self._subjects) >= _SUBJECTS_MAX:
                self._subjects.clear()
            subject = replay_subject(self.target, route.origin, route.service)
            self._subjects[key] = subject
        return subject

    def _headers(self, msg: Msg, route: Route) -> tuple[dict[str, str], bytes | None, int]:
        """The headers to publish (the received dict itself when nothing must change), their
        block as sent (`_encoded`) and the size of the frame (`frame_size`)."""
        received = msg.headers or {}
        clean = not any(name[:14].lower() == _DROPPED_HEADER_PREFIX for name in received)
        if clean and HDR_MSG_ID in received:
            return received, *_encoded(msg.data, received)
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
        return headers, *_encoded(msg.data, headers)

    def _note(self, route: Route) -> None:
        if route.kind == "malformed":
            log.warning(
                "broadcaster.malformed_event",
                target=self.target,
                origin=route.origin,
                service=route.service,
                problem=route.problem,
            )
        elif route.service not in self._unknown_services:
            self._unknown_services.add(route.service)
            log.warning(
                "broadcaster.unknown_service",
                target=self.target,
                service=route.service,
                note="not in this region's configuration: forwarded to every peer region",
            )

    async def _guarded_acked(self, held: HeldEvent, seq: int, duplicate: bool) -> None:
        try:
            await self._acked(held, seq, duplicate)
        except Exception as exc:
            self._crashed("acked", exc)
            raise

    async def _acked(self, held: HeldEvent, seq: int, duplicate: bool) -> None:
        """The target stored the event: ack the source, let the window take the next."""
        pending = held.item
        route = pending.route
        outcome = "duplicate" if duplicate else _OUTCOMES[route.kind]
        self._counters.inc(route.origin, outcome)
        if self._debug:
            log.debug(
                "broadcaster.forwarded", target=self.target, **about(route), outcome=outcome,
                seq=seq,
            )  # fmt: skip
        await self._settled(held)

    def _refused(self, held: HeldEvent, failure: Failure) -> None:
        """The target can never store the event: dead-letter it (`deadletters.py`)."""
        held.item.refused = f"target {self.target} refused the event for good: {failure.reason}"
        self._sender.refusal_answered(failure.answered)
        self._dead_letters.file(held)

    async def _settled(self, held: HeldEvent) -> None:
        """Done with the event for this target (stored, dead-lettered or given up)."""
        self._window.done(held)
        self._wake()
        await self._ack(held.item.msg)

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except nats.errors.Error as exc:
            # Redelivered after ack_wait; the target's duplicate window drops the copy.
            log.warning("broadcaster.ack_failed", target=self.target, error=repr(exc))

    def _crashed(self, where: str, exc: Exception) -> None:
        if self._on_failure is not None:  # the owner reports it, and stops
            self._on_failure(f"forwarder {self.target} {where}", exc)
            return
        log.error("broadcaster.callback_failed", target=self.target, where=where, error=repr(exc))

    # ------------------------------------------------------------------ background

    async def _tick(self) -> None:
        """Time out publishes that got no PubAck; refresh the held gauge."""
        while True:
            await asyncio.sleep(min(_TICK_S, self._s.publish_timeout_s / 4))
            self._sender.expire()
            self._dead_letters.expire()
            self._held.set(len(self._window))


def _encoded(payload: bytes, headers: dict[str, str]) -> tuple[bytes | None, int]:
    """The header block to send (None: let nats-py encode, or refuse, the headers) and the
    frame's size."""
    if not headers:
        return None, frame_size(payload, None)
    try:
        block = header_block(headers)
    except nats.errors.BadHeaderError:  # nats-py refuses it too: the publish says so
        return None, frame_size(payload, headers)
    return block, len(block) + len(payload)


def _stream_seq(msg: Msg) -> int:
    """The stream sequence of a delivered message, read from its ack subject:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`
    (the longer form with a domain goes through nats-py's parser)."""
    tokens = msg.reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    return int(msg.metadata.sequence.stream)


def _task_failed(
    callback: Callable[[str, BaseException], None],
) -> Callable[[asyncio.Task[Any]], None]:
    """A TaskSet's failure hook that reports the task by name, with its error."""

    def call(task: asyncio.Task[Any]) -> None:
        exc = task.exception()
        assert exc is not None
        callback(f"task {task.get_name()}", exc)

    return call
