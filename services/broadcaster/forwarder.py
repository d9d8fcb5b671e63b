"""One forwarder per target region: events stream -> `xr.replay.<target>.<origin>.<service>`.

Each forwarder binds (no API call, so no meta leader needed) to its own durable pull consumer
`xr-broadcast-<target>` on the region's events stream, which every broadcaster instance of
the region shares. For every fetched event it asks the policy whether the target needs it:

* not needed: acked at once (outcome `skipped`);
* needed: held in the window (`window.py`) and published with `publish_async`, payload and
  headers unchanged, `Nats-Msg-Id` = event id. The source message is acked only after the
  target stream's PubAck. Every publish future is bounded by `publish_timeout_s`
  (NATS_NOTES §3.1.1: on server errors it would never resolve).

Throughput: up to `window_events` events are held at once and publishes of different keys
are in flight together, so one cross-region round trip is paid per window, not per event.

Order of one key: only the head of a lane (service, Xr-Key) is ever in flight. A failed
publish is retried (same headers, so the same `Nats-Msg-Id`) before anything later of that
key is sent, so a retried event never lands after a later event of its key. The price: one
key alone moves at most one event per round trip to a given target.

Failures: any publish failure opens the target's breaker (`gate.py`): publishes stop,
fetching stops, one probe per jittered, growing backoff; the first success resumes all.
Other targets have their own consumer, window, breaker and JetStream context (own async-reply
inbox and pending-publish semaphore), so a slow, paused or unreachable target never holds
them back. Held events are kept alive with `in_progress()` every ack_wait/3, so they are
not redelivered to another instance while this one retries or is paused.

Shutdown (`stop`): stop fetching and starting publishes; publishes under way finish and are
acked (bounded); everything still held is nak'd in stream order, so another instance (or the
next start) gets it at once and in order.

Known limits: with several instances, two events of one key may be fetched by different
instances and race, and after an instance dies its held events come back only after
ack_wait, possibly after later events of their key. Then the older event lands second and
the target's replayer acks it as `stale` (last-writer-wins, DESIGN §5a). Retries inside one
instance never reorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NotFoundError

from services.broadcaster.gate import Gate, State
from services.broadcaster.metrics import FORWARDED, HELD, UNREACHABLE
from services.broadcaster.policy import Policy, Route
from services.broadcaster.window import Held, Window
from shared.envelope import HDR_MSG_ID
from shared.logs import get_logger
from shared.natsconn import Backoff, NatsConnection
from shared.regions import broadcast_consumer, events_stream, replay_subject
from shared.settings import BroadcasterSettings
from shared.tasks import TaskSet

__all__ = ["ConsumerMissingError", "Forwarder", "PublishFailedError"]

log = get_logger("xr.broadcaster")

# Extra time a fetch may take past its own timeout before the watchdog re-binds
# (NATS_NOTES §3.1.5: fetches can stall).
_FETCH_GRACE_S = 5.0
# nats-py's default pending-bytes limit of a pull subscription.
_SUB_PENDING_BYTES = 256 * 1024 * 1024
# Conditions on the origin stream that must not be re-applied to the target stream.
_DROPPED_HEADER_PREFIX = "nats-expected-"


class PublishFailedError(Exception):
    """A publish to the target was not acked (timeout, no stream, error): retry it."""


class ConsumerMissingError(Exception):
    """The durable consumer does not exist: the region was not provisioned."""


@dataclass(slots=True)
class Pending:
    """An event held for the target: the source message and what to publish."""

    msg: Msg
    route: Route
    subject: str
    headers: dict[str, str]


class Forwarder:
    """Forwards the region's events to one target; see the module docstring."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        region: str,
        target: str,
        policy: Policy,
        settings: BroadcasterSettings,
        on_failure: Callable[[asyncio.Task[Any]], None] | None = None,
    ) -> None:
        self.region = region
        self.target = target
        self._conn = conn
        self._policy = policy
        self._s = settings
        self._stream = events_stream(region)
        self._consumer = broadcast_consumer(target)
        self._js: JetStreamContext = conn.nc.jetstream(
            timeout=settings.publish_timeout_s,
            publish_async_max_pending=max(settings.window_events, 1),
        )
        self._window: Window[Pending] = Window(settings.window_events, settings.window_max_bytes)
        self._wake_event = asyncio.Event()
        self.gate = Gate(Backoff(settings.retry_base_s, settings.retry_max_s), on_change=self._wake)
        # Paused until the control bucket has been read: an operator's pause must hold
        # from the first event on.
        self.gate.set_paused(True)
        self._tasks = TaskSet(f"forwarder-{target}", on_failure=on_failure)
        self._keepalive_tasks = TaskSet(f"keepalive-{target}", on_failure=on_failure)
        self._ack_wait_s = settings.ack_wait_s
        self._held = HELD.labels(target)
        self._unreachable = UNREACHABLE.labels(target)
        self._counters: dict[tuple[str, str], Any] = {}
        self._unknown_services: set[str] = set()
        self._fetch_failing = False
        self._fetch_backoff = Backoff(settings.retry_base_s, settings.retry_max_s)
        self._stopping = asyncio.Event()
        self.bound = False

    @property
    def held(self) -> int:
        return len(self._window)

    # ------------------------------------------------------------------ lifecycle

    async def check_consumer(self, timeout_s: float) -> None:
        """Make sure the consumer exists and learn its ack_wait (for the keep-alives).

        Raises ConsumerMissingError if it does not exist. Other failures (the consumer's
        leader not answering in time) are logged and the forwarder runs anyway.
        """
        try:
            info = await self._js.consumer_info(self._stream, self._consumer, timeout=timeout_s)
        except NotFoundError as exc:
            raise ConsumerMissingError(
                f"consumer {self._stream}/{self._consumer} does not exist "
                "(run `xregion provision` for this region)"
            ) from exc
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("broadcaster.consumer_unchecked", target=self.target, error=repr(exc))
            return
        self._check_config(info.config.ack_wait, info.config.max_ack_pending)

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
        _ = self._keepalive_tasks.spawn(self._keepalive(), name=f"keepalive-{self.target}")

    async def stop(self, timeout_s: float) -> None:
        """The shutdown sequence of the module docstring; idempotent."""
        self.gate.stop()
        self._stopping.set()
        self._wake()
        if not await self._tasks.wait(timeout_s):
            await self._tasks.cancel("broadcaster shutdown deadline passed")
        await self._keepalive_tasks.cancel("broadcaster stopping")
        given_back = self._window.take_all()
        for held in given_back:
            with contextlib.suppress(nats.errors.Error):
                await held.item.msg.nak()
        self._held.set(0)
        log.info("broadcaster.forwarder_stopped", target=self.target, given_back=len(given_back))

    # ------------------------------------------------------------------ fetching

    async def _run(self) -> None:
        while not self.gate.stopped:
            sub = await self._js.pull_subscribe_bind(
                consumer=self._consumer,
                stream=self._stream,
                pending_bytes_limit=max(_SUB_PENDING_BYTES, 2 * self._s.window_max_bytes),
            )
            self.bound = True
            try:
                await self._fetch_loop(sub)
            finally:
                self.bound = False
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()

    async def _fetch_loop(self, sub: JetStreamContext.PullSubscription) -> None:
        """Fetch while there is room; returns to re-bind after a stalled fetch."""
        while room := await self._room():
            try:
                msgs = await self._fetch(sub, min(room, self._s.fetch_batch))
            except _FetchStalledError:
                log.warning("broadcaster.fetch_stalled", target=self.target)
                return
            for msg in msgs:
                await self._admit(msg)

    async def _room(self) -> int:
        """Wait until fetching makes sense; the room in the window, or 0 when stopping."""
        while True:
            self._wake_event.clear()
            if self.gate.stopped:
                return 0
            room = self._window.room()
            if room and self.gate.may_fetch:
                return room
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_event.wait(), 1.0)

    async def _fetch(self, sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
        timeout_s = self._s.fetch_timeout_s
        watchdog = asyncio.timeout(timeout_s + _FETCH_GRACE_S)
        try:
            async with watchdog:
                msgs: list[Msg] = await sub.fetch(batch, timeout=timeout_s)
        except TimeoutError as exc:
            # nats-py raises its own TimeoutError or asyncio's when nothing came in time.
            if watchdog.expired():
                raise _FetchStalledError from exc
            return []
        except nats.errors.Error as exc:
            await self._fetch_failed(exc)
            return []
        if self._fetch_failing:
            self._fetch_failing = False
            self._fetch_backoff.reset()
            log.info("broadcaster.fetch_recovered", target=self.target)
        return msgs

    async def _fetch_failed(self, exc: Exception) -> None:
        if not self._fetch_failing:
            log.warning("broadcaster.fetch_failed", target=self.target, error=repr(exc))
        self._fetch_failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self._fetch_backoff.next_delay())

    def _wake(self) -> None:
        self._wake_event.set()

    # ------------------------------------------------------------------ one event

    async def _admit(self, msg: Msg) -> None:
        route = self._policy.route(msg.subject, msg.headers, msg.data)
        if self.target not in route.targets:
            await self._ack(msg)
            self._count(route, "skipped")
            return
        self._note(route)
        pending = Pending(msg, route, self._subject(route), self._headers(msg, route))
        seq = msg.metadata.sequence.stream
        held = Held(seq, route.lane, _size(msg), pending, touched_s=time.monotonic())
        if self._window.add(held):
            _ = self._tasks.spawn(self._lane(held), name=f"lane-{self.target}")
        self._held.set(len(self._window))

    def _subject(self, route: Route) -> str:
        return replay_subject(self.target, route.origin, route.service)

    def _headers(self, msg: Msg, route: Route) -> dict[str, str]:
        headers = {
            name: value
            for name, value in (msg.headers or {}).items()
            if not name.lower().startswith(_DROPPED_HEADER_PREFIX)
        }
        if HDR_MSG_ID not in headers:
            # A valid event's msg id is its event id; a malformed one gets a stable id.
            seq = msg.metadata.sequence.stream
            headers[HDR_MSG_ID] = route.event_id or f"{self._stream}:{seq}"
        return headers

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

    async def _lane(self, held: Held[Pending]) -> None:
        """Publish a lane's events one after the other, until it is empty or we stop."""
        current: Held[Pending] | None = held
        while current is not None:
            if not await self._deliver(current.item):
                return
            current = self._window.done(current)
            self._held.set(len(self._window))
            self._wake()

    async def _deliver(self, pending: Pending) -> bool:
        """Publish until the target acks (True), then ack the source; False when stopping."""
        while await self.gate.acquire():
            try:
                ack = await self._publish(pending)
            except PublishFailedError as exc:
                self._retry(pending, exc)
                continue
            except BaseException:
                self.gate.abandon()
                raise
            self._succeeded()
            await self._ack(pending.msg)
            self._forwarded(pending, ack)
            return True
        return False

    async def _publish(self, pending: Pending) -> PubAck:
        timeout_s = self._s.publish_timeout_s
        try:
            future = await self._js.publish_async(
                pending.subject, pending.msg.data, wait_stall=timeout_s, headers=pending.headers
            )
            ack: PubAck = await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            raise PublishFailedError(f"no ack from the target within {timeout_s:g} s") from exc
        except (nats.errors.Error, OSError) as exc:
            raise PublishFailedError(repr(exc)) from exc
        return ack

    def _retry(self, pending: Pending, exc: PublishFailedError) -> None:
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
            event_id=route.event_id,
            origin=route.origin,
            service=route.service,
            trace_id=route.trace_id,
            delay_s=round(delay_s, 3),
            error=str(exc),
        )

    def _succeeded(self) -> None:
        recovering = self.gate.state is not State.CLOSED
        self.gate.success()
        if recovering:
            self._unreachable.set(0)
            log.info("broadcaster.target_recovered", target=self.target)

    async def _ack(self, msg: Msg) -> None:
        try:
            await msg.ack()
        except nats.errors.Error as exc:
            # Redelivered after ack_wait; the target's duplicate window drops the copy.
            log.warning("broadcaster.ack_failed", target=self.target, error=repr(exc))

    def _forwarded(self, pending: Pending, ack: PubAck) -> None:
        route = pending.route
        outcome = "duplicate" if ack.duplicate else _OUTCOMES[route.kind]
        self._count(route, outcome)
        log.debug(
            "broadcaster.forwarded",
            target=self.target,
            event_id=route.event_id,
            origin=route.origin,
            service=route.service,
            trace_id=route.trace_id,
            outcome=outcome,
            seq=ack.seq,
        )

    def _count(self, route: Route, outcome: str) -> None:
        counter = self._counters.get((route.origin, outcome))
        if counter is None:
            counter = FORWARDED.labels(route.origin, self.target, outcome)
            self._counters[(route.origin, outcome)] = counter
        counter.inc()

    # ------------------------------------------------------------------ keep-alive

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


class _FetchStalledError(Exception):
    """A fetch outlived its own timeout (NATS_NOTES §3.1.5)."""


_OUTCOMES = {"event": "forwarded", "canary": "canary", "malformed": "malformed"}


def _size(msg: Msg) -> int:
    headers = msg.headers or {}
    return len(msg.data) + sum(len(k) + len(v) + 4 for k, v in headers.items())
