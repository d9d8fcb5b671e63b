"""Recording local writes in the region's version bucket (docs/DESIGN.md §5b).

After the service answered a replicated write with 2xx, the bridge raises the per-(service,
key) version record in KV bucket `xr-versions-<region>` to the write's HLC and event id (the
record format is `shared.versions`'), so that older events replayed here from other regions
are acked as `stale` instead of overwriting the newer local write.

It starts once the event's delivery is settled (acked, spooled, or failed: the service has
applied the write either way) and the response is out; the response does not wait for it: a
record takes up to two KV round trips (read, then compare-and-set), and the window in which a
replayed older event could slip in opens when the service applies the write, not when the
client hears of it. (Started alongside the publish instead, its KV traffic on the same
connection and server delays the publish's ack: docs/PERFORMANCE.md, "Measurements behind the
code".) Each record is bounded by `timeout_s`; at most `max_inflight` run without a request
waiting for them (counted from `start`, not from their first step), beyond that the request
waits for its own record (backpressure).

A key the bridge has not seen is created and read in one round trip
(`KvCas.create_and_read`): a new key is recorded then, an existing one goes on from the read.

What the bridge remembers: for the keys it wrote most recently (`version_cache_keys`, oldest
dropped first) the record it last read or wrote and its revision, so that a key written again
costs one compare-and-set instead of a read and a compare-and-set (the same reasoning as the
replayer's, `services/replayer/versions.py`). That compare-and-set is queued by `start` itself
and its answer taken in a done callback (`_quick_record`), with no task, coroutine or timeout
scope per write (the bridge's common case; KvCas bounds it by `timeout_s`); any other answer
than "written" hands the write to `record`. A remembered version older than the write only
supplies the revision, and the server refuses the compare-and-set if anyone (a replayer,
another bridge) wrote in between, after which the record is read afresh; a remembered
`applied` version at least as new as the write proves the record will never be older again,
so the write is `superseded` without a round trip. A remembered claim proves nothing (a
replayer may release it to an older version): the record is read. After the bucket was
purged or re-created by hand, restart the bridge (its remembered revisions refer to the old
one).

A replayer's claim on a newer version than the write does not make the write `superseded`
either: the claim may still be released (the call failed; the record goes back to the older
version it replaced), and a write recorded nowhere would let an event older than it be
applied over it later. Nor may the bridge write over the claim: it does not know what the
claim replaced, which may be newer than the write. It reads the record again (5 ms, doubling
to 100 ms) until the claim is settled: `applied` (then the write is superseded) or released
(then the write is recorded over what came back). A claim that outlasts `timeout_s` (a slow
call, or a replayer that died holding it) leaves the write unrecorded, counted `failed` and
logged, like any record that could not be written.

The compare-and-sets leave in bursts (`version_coalesce_s`, default 5 ms; `shared.coalesce`):
one socket write and one server read for all the records of a burst instead of one each, which
roughly halves what the records cost the server and the bridge's latency (docs/PERFORMANCE.md,
"Measurements behind the code"). A record lands that much later, which widens by as much the
window in which an older replayed event could overtake it.

A record never fails the client's write: when NATS is down, the bucket cannot be bound or the
record cannot be written in time, the write goes on, the failure is counted
(`xr_bridge_version_records_total{outcome="failed"}`, one per failed attempt) and logged. The
record is then tried again after 1, 5 and 30 s (`retry`, a fixed `shared.retry` policy,
component `bridge.version`): a write left unrecorded
would let an older event replayed later be applied over it, and the causes pass (NATS back,
a replayer's claim on a newer version released or applied). Retries wait in timers, at most
`_MAX_RETRIES` at a time (more are given up at once); `aclose` gives up those still waiting,
with one log line, and lets those under way end (within `timeout_s`). A record given up is
counted `given_up`. A retry that finds a newer write of the same key recorded already is
`superseded`.

A write whose event was spooled (NATS down, or an earlier event of its key still in the
outbox) is recorded by the outbox drainer once the event is published (`record_published`),
not when it is answered: NATS is likely down then, and its record would only fail.

The bucket is bound at start (`js.key_value`, never created: `xregion provision` does that).
If it cannot be bound then, the bridge still starts, and binding is retried at most every
`_REBIND_S` by the writes that come in.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import Mapping
from typing import Self

import nats.errors
from nats.aio.msg import Msg
from nats.js.kv import KeyValue
from prometheus_client import Counter

from services.bridge.metrics import VERSION_RECORDS
from shared.coalesce import Coalescer
from shared.envelope import MalformedEventError, decode
from shared.kvcas import KvCas, revision_of
from shared.lifecycle import Closeable
from shared.logs import get_logger
from shared.natsconn import NatsConnection
from shared.provision import versions_bucket
from shared.retry import RetryPolicy
from shared.tasks import TaskSet
from shared.versions import CAS_ATTEMPTS, Record, cas_write, record_key, record_of

__all__ = ["LocalVersions"]

log = get_logger("xr.bridge")

_REBIND_S = 5.0


# `record`'s arguments for a retry: service, key, hlc, event id, trace id, attempt.
_Retry = tuple[str, str, str, str, str, int]


class _Unavailable(Exception):
    """The record cannot even be attempted (NATS down, bucket not bound)."""


class _Contended(Exception):
    """Other writers kept moving the record (this write's compare-and-sets all lost), or held
    a claim on a newer version that did not settle in time."""


# What a KV read or compare-and-set can raise when NATS or the bucket's stream is unwell.
_KV_ERRORS = (_Unavailable, _Contended, TimeoutError, nats.errors.Error, OSError)
# A record that holds a replayer's live claim on a newer version is read again after this
# pause, doubling up to the maximum, until the claim is settled (or the record times out).
_CLAIM_POLL_S = 0.005
_CLAIM_POLL_MAX_S = 0.1
# A failed record is tried again after each of these pauses, then given up.
_RETRY = RetryPolicy.fixed("bridge.version", (1.0, 5.0, 30.0))
_MAX_RETRIES = 10_000


class LocalVersions(Closeable):
    """Writes the version records of local writes; see the module docstring."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        region: str,
        owner: str,
        timeout_s: float,
        max_inflight: int,
        cache_keys: int = 100_000,
        coalesce_s: float = 0.0,
        retry: RetryPolicy = _RETRY,
    ) -> None:
        self._conn = conn
        self._retry = retry
        self._waiting_retries: dict[int, tuple[asyncio.TimerHandle, _Retry]] = {}
        self._retry_ids = itertools.count()
        self._retries = TaskSet("version-retries")
        self._closed = False
        self._bucket = versions_bucket(region)
        self._owner = owner
        self._timeout_s = timeout_s
        self._max_inflight = max_inflight
        self._inflight = 0
        self._kv: KeyValue | None = None
        self._coalescer = Coalescer(conn.nc, delay_s=coalesce_s) if coalesce_s > 0 else None
        self._cas = KvCas(conn.nc, self._bucket, timeout_s=timeout_s, coalescer=self._coalescer)
        self._next_bind = 0.0
        self._cache_keys = cache_keys
        self._known: dict[str, tuple[Record, int]] = {}  # insertion order = age
        self._quick: set[asyncio.Future[str]] = set()  # `_quick_record`s not answered yet
        self._counters: dict[tuple[str, str], Counter] = {}

    async def __aenter__(self) -> Self:
        """Open the compare-and-set reply subscription and bind the bucket (`bind`)."""
        await self._cas.__aenter__()
        await self.bind()
        return self

    async def aclose(self) -> None:
        """Give up the retries still waiting, send the queued compare-and-sets, stop
        listening for answers (records still waiting for one time out)."""
        self._closed = True
        for timer, (service, *_) in self._waiting_retries.values():
            timer.cancel()
            VERSION_RECORDS.labels(service, "given_up").inc()
        if self._waiting_retries:
            log.warning(
                "bridge.versions.retries_given_up",
                bucket=self._bucket,
                records=len(self._waiting_retries),
                note="the bridge is stopping: these writes stay unrecorded",
            )
        self._waiting_retries.clear()
        if not await self._retries.wait(self._timeout_s):  # retries under way: let them end
            await self._retries.cancel("the bridge is stopping")
        if self._coalescer is not None:
            await self._coalescer.aclose()
        if self._quick:  # sent now: let their answers come (the rest time out at `_cas`)
            await asyncio.wait(self._quick, timeout=self._timeout_s)
        try:
            await self._cas.aclose()
        except nats.errors.Error:
            pass  # the connection is going away: so is the subscription

    @property
    def bucket(self) -> str:
        return self._bucket

    @property
    def bound(self) -> bool:
        return self._kv is not None

    @property
    def saturated(self) -> bool:
        """Whether `max_inflight` records are in flight (the next writer should wait)."""
        return self._inflight >= self._max_inflight

    async def bind(self) -> bool:
        """Bind the bucket (bounded by `timeout_s`); False, logged, if it is not usable."""
        self._next_bind = time.monotonic() + _REBIND_S
        try:
            async with asyncio.timeout(self._timeout_s):
                self._kv = await self._conn.jetstream().key_value(self._bucket)
        except _KV_ERRORS as exc:
            log.warning(
                "bridge.versions.unbound",
                bucket=self._bucket,
                error=repr(exc),
                note="local writes are not recorded until it can be bound (xregion provision)",
            )
            return False
        return True

    def start(
        self, tasks: TaskSet, service: str, key: str, hlc: str, event_id: str, *, trace_id: str
    ) -> asyncio.Future[str]:
        """`record`'s outcome, to come: one compare-and-set queued at once for a remembered
        key (`_quick_record`), else `record` as a task owned by `tasks`. It counts against
        `max_inflight` from this call on, not from its first step: records started in one
        burst see each other."""
        self._inflight += 1
        args = (service, key, hlc, event_id, trace_id, 0)
        outcome = self._quick_record(tasks, args)
        if outcome is None:
            outcome = self._spawn(tasks, args)
        outcome.add_done_callback(self._finished)
        return outcome

    def _finished(self, _: asyncio.Future[str]) -> None:
        self._inflight -= 1

    def _spawn(self, tasks: TaskSet, args: _Retry) -> asyncio.Task[str]:
        service, key, hlc, event_id, trace_id, attempt = args
        return tasks.spawn(
            self.record(service, key, hlc, event_id, trace_id=trace_id, attempt=attempt),
            name=f"version-{event_id}",
        )

    def _quick_record(self, tasks: TaskSet, args: _Retry) -> asyncio.Future[str] | None:
        """The record of a key whose remembered record is older than the write: its
        compare-and-set is queued now and the outcome set by `_quick_answered`. None where
        `record` must decide: no coalescer, stopping, NATS down, bucket not bound, the key
        not remembered, or remembered at a version as new as the write."""
        if self._coalescer is None or self._closed or self._kv is None:
            return None
        if not self._conn.is_connected:
            return None
        service, key, hlc, event_id, _, _ = args
        kv_key = record_key(service, key)
        known = self._known.get(kv_key)
        record = Record(hlc, event_id, "applied", self._owner, 0.0)
        if known is None or known[0].version >= record.version:
            return None
        answer = self._cas.queue_update(kv_key, record.encode(), last=known[1])
        outcome: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._quick.add(outcome)
        outcome.add_done_callback(self._quick.discard)
        answer.add_done_callback(
            functools.partial(self._quick_answered, outcome, tasks, kv_key, record, args)
        )
        return outcome

    def _quick_answered(
        self,
        outcome: asyncio.Future[str],
        tasks: TaskSet,
        kv_key: str,
        record: Record,
        args: _Retry,
        answer: asyncio.Future[Msg],
    ) -> None:
        if outcome.done():
            return
        if answer.cancelled():  # the reply subscription closed: the bridge is stopping
            outcome.cancel()
            return
        service = args[0]
        try:
            written = revision_of(answer.result())
        except _KV_ERRORS as exc:
            self._count(service, self._failed(exc, args))
            outcome.set_result("failed")
            return
        except (ValueError, LookupError, TypeError, AttributeError) as exc:  # unreadable answer
            outcome.set_exception(exc)
            return
        if written is None:  # someone wrote in between: `record` reads it and decides
            self._known.pop(kv_key, None)
            self._spawn(tasks, args).add_done_callback(functools.partial(_settle, outcome))
            return
        self._remember(kv_key, record, written)
        self._count(service, "recorded")
        outcome.set_result("recorded")

    def _count(self, service: str, outcome: str) -> None:
        counter = self._counters.get((service, outcome))
        if counter is None:  # bounded: the configured services times the outcomes
            counter = self._counters[(service, outcome)] = VERSION_RECORDS.labels(service, outcome)
        counter.inc()

    async def record(
        self, service: str, key: str, hlc: str, event_id: str, *, trace_id: str, attempt: int = 0
    ) -> str:
        """Raise the record of (service, key) to this write; the outcome (`recorded`,
        `superseded` or `failed`), never an exception for KV trouble. A failed record is
        tried again later (module docstring). Awaited directly, it does not count against
        `max_inflight` (`start` does)."""
        try:
            async with asyncio.timeout(self._timeout_s):  # the whole record, a rebind included
                outcome = await self._record(service, key, hlc, event_id)
        except _KV_ERRORS as exc:
            outcome = self._failed(exc, (service, key, hlc, event_id, trace_id, attempt))
        self._count(service, outcome)
        return outcome

    def _failed(self, exc: BaseException, args: _Retry) -> str:
        """Log a failed attempt (`args`: `record`'s) and schedule the next; "failed"."""
        service, key, hlc, event_id, trace_id, attempt = args
        retry = (service, key, hlc, event_id, trace_id, attempt + 1)
        log.warning(
            "bridge.version.failed",
            event_id=event_id,
            service=service,
            trace_id=trace_id,
            bucket=self._bucket,
            error=_describe(exc),
            attempt=attempt + 1,
            retry_in_s=self._retry_later(retry, _reason(exc)),
        )
        return "failed"

    def _retry_later(self, retry: _Retry, reason: str) -> float | None:
        """Schedule `retry` (`record`'s arguments); the pause, or None if given up."""
        full = len(self._waiting_retries) + len(self._retries) >= _MAX_RETRIES
        service, _, _, event_id, _, attempt = retry
        delay = None
        if not (self._closed or full):
            delay = self._retry.schedule(attempt, reason, event_id=event_id, service=service)
        if delay is None:
            VERSION_RECORDS.labels(service, "given_up").inc()
            return None
        token = next(self._retry_ids)
        timer = asyncio.get_running_loop().call_later(delay, self._retry_due, token)
        self._waiting_retries[token] = (timer, retry)
        return delay

    def _retry_due(self, token: int) -> None:
        _, (service, key, hlc, event_id, trace_id, attempt) = self._waiting_retries.pop(token)
        _ = self._retries.spawn(
            self.record(service, key, hlc, event_id, trace_id=trace_id, attempt=attempt),
            name=f"version-retry-{event_id}",
        )

    async def record_published(self, headers: Mapping[str, str], payload: bytes) -> str:
        """`record` for a write known only by its event as published (an outbox entry once
        it is drained); `failed`, logged, if the event cannot be read."""
        try:
            event = decode(headers, payload)
        except MalformedEventError as exc:
            log.warning("bridge.version.unreadable", bucket=self._bucket, error=str(exc))
            return "failed"
        if event.effective_rule != "replace":
            return "not_versioned"  # an `apply` write sets no version (proxy._forward)
        return await self.record(
            event.service, event.key, str(event.hlc), event.event_id, trace_id=event.trace_id
        )

    async def _record(self, service: str, key: str, hlc: str, event_id: str) -> str:
        if not self._conn.is_connected:
            raise _Unavailable("NATS is not connected")
        kv = self._kv
        if kv is None:
            if time.monotonic() < self._next_bind or not await self.bind():
                raise _Unavailable(f"bucket {self._bucket} is not bound")
            kv = self._kv
            assert kv is not None
        return await self._raise(
            kv, record_key(service, key), Record(hlc, event_id, "applied", self._owner, 0.0)
        )

    async def _raise(self, kv: KeyValue, kv_key: str, record: Record) -> str:
        """Compare-and-set `record` over an older one (module docstring: what is remembered,
        and why a newer claim is waited out). The caller's deadline bounds the whole."""
        races = 0
        pause_s = _CLAIM_POLL_S
        give_up = time.monotonic() + self._timeout_s
        while True:
            looked = await self._look(kv_key, record, first=races == 0)
            if looked is None:
                return "recorded"
            current, revision = looked
            if current is not None and current.version >= record.version:
                if current.state == "applied":
                    return "superseded"
                if time.monotonic() + pause_s > give_up:
                    raise _Contended(
                        f"a replayer's claim on a newer version (event {current.event_id}, "
                        f"{current.owner}) did not settle within {self._timeout_s:g} s"
                    )
                await asyncio.sleep(pause_s)  # a claim on a newer version: wait it out
                pause_s = min(2 * pause_s, _CLAIM_POLL_MAX_S)
                continue
            if revision is None:  # absent since the read, or a tombstone: KeyValue.create
                written = await cas_write(kv, kv_key, record, None)
            else:
                written = await self._cas.update(kv_key, record.encode(), last=revision)
            if written is not None:
                self._remember(kv_key, record, written)
                return "recorded"
            self._known.pop(kv_key, None)  # someone wrote in between: read it
            races += 1
            if races >= CAS_ATTEMPTS:
                raise _Contended(f"lost {races} compare-and-sets on the record in a row")

    async def _look(
        self, kv_key: str, record: Record, *, first: bool
    ) -> tuple[Record | None, int | None] | None:
        """The record and revision to decide on, remembered or read; None when a key never
        seen was created with `record` on the way (one round trip for a new key)."""
        current, revision = self._recall(kv_key, record)
        if current is not None or revision is not None:
            return current, revision
        if first and kv_key not in self._known:
            created, entry = await self._cas.create_and_read(kv_key, record.encode())
            if created is not None:
                self._remember(kv_key, record, created)
                return None
        else:
            entry = await self._cas.read(kv_key)
        current, revision = record_of(entry)
        if current is not None and revision is not None:
            self._remember(kv_key, current, revision)
        return current, revision

    def _recall(self, kv_key: str, record: Record) -> tuple[Record | None, int | None]:
        """The remembered record and revision where they may be used, else (None, None)."""
        known = self._known.get(kv_key)
        if known is None:
            return None, None
        current, revision = known
        if current.version < record.version or current.state == "applied":
            return current, revision
        return None, None  # a newer claim: only a fresh read tells

    def _remember(self, kv_key: str, record: Record, revision: int) -> None:
        if not self._cache_keys:
            return
        self._known.pop(kv_key, None)  # re-inserted as the newest
        self._known[kv_key] = (record, revision)
        if len(self._known) > self._cache_keys:
            del self._known[next(iter(self._known))]


def _settle(outcome: asyncio.Future[str], task: asyncio.Task[str]) -> None:
    """Pass `task`'s end on to `outcome`."""
    if outcome.done():
        return
    if task.cancelled():
        outcome.cancel()
    elif (exc := task.exception()) is not None:
        outcome.set_exception(exc)
    else:
        outcome.set_result(task.result())


def _reason(exc: BaseException) -> str:
    """The retry reason (a metric label) of a failed record."""
    if isinstance(exc, _Unavailable):
        return "unavailable"
    if isinstance(exc, _Contended):
        return "contended"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "kv_error"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Unavailable | _Contended):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return repr(exc)
