"""Recording local writes in the region's version bucket (DESIGN §5 replayer, issue 5).

After the service answered a replicated write with 2xx, the bridge raises the per-(service,
key) version record in KV bucket `xr-versions-<region>` to the write's HLC and event id
(`shared.versions.record_local_write`), so that older events replayed here from other regions
are acked as `stale` instead of overwriting the newer local write.

It starts once the event's delivery is settled (acked, spooled, or failed: the service has
applied the write either way), as the response goes out, and the response does not wait for
it: a record takes two KV round trips (read, then compare-and-set), and the window in which a
replayed older event could slip in opens when the service applies the write, not when the
client hears of it. (Started alongside the publish instead, its KV
traffic on the same connection and server delayed the publish's ack by a quarter of a ms.)
Each record is bounded by `timeout_s`; at most `max_inflight` run without a request waiting
for them (counted from `start`, not from their first step), beyond that the request waits for
its own record (backpressure).

A record never fails the client's write: when NATS is down, the bucket cannot be bound or the
record cannot be written in time, the write goes on, the failure is counted
(`xr_bridge_version_records_total{outcome="failed"}`) and logged once.

The bucket is bound at start (`js.key_value`, never created: `xregion provision` does that).
If it cannot be bound then, the bridge still starts, and binding is retried at most every
`_REBIND_S` by the writes that come in.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
from nats.js.kv import KeyValue

from services.bridge.metrics import VERSION_RECORDS
from shared.logs import get_logger
from shared.natsconn import NatsConnection
from shared.provision import versions_bucket
from shared.tasks import TaskSet
from shared.versions import record_local_write

__all__ = ["LocalVersions"]

log = get_logger("xr.bridge")

_REBIND_S = 5.0


class _Unavailable(Exception):
    """The record cannot even be attempted (NATS down, bucket not bound)."""


# What a KV read or compare-and-set can raise when NATS or the bucket's stream is unwell.
_KV_ERRORS = (_Unavailable, TimeoutError, nats.errors.Error, OSError)


class LocalVersions:
    """Writes the version records of local writes; see the module docstring."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        region: str,
        owner: str,
        timeout_s: float,
        max_inflight: int,
    ) -> None:
        self._conn = conn
        self._bucket = versions_bucket(region)
        self._owner = owner
        self._timeout_s = timeout_s
        self._max_inflight = max_inflight
        self._inflight = 0
        self._kv: KeyValue | None = None
        self._next_bind = 0.0

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
    ) -> asyncio.Task[None]:
        """`record` as a task owned by `tasks`. It counts against `max_inflight` from this
        call on, not from its first step: records started in one burst see each other."""
        self._inflight += 1
        task = tasks.spawn(
            self.record(service, key, hlc, event_id, trace_id=trace_id),
            name=f"version-{event_id}",
        )
        task.add_done_callback(self._finished)
        return task

    def _finished(self, _: asyncio.Task[None]) -> None:
        self._inflight -= 1

    async def record(
        self, service: str, key: str, hlc: str, event_id: str, *, trace_id: str
    ) -> None:
        """Raise the record of (service, key) to this write; never raises for KV trouble.
        Awaited directly, it does not count against `max_inflight` (`start` does)."""
        try:
            async with asyncio.timeout(self._timeout_s):  # the whole record, a rebind included
                outcome = await self._record(service, key, hlc, event_id)
        except _KV_ERRORS as exc:
            outcome = "failed"
            log.warning(
                "bridge.version.failed",
                event_id=event_id,
                service=service,
                trace_id=trace_id,
                bucket=self._bucket,
                error=_describe(exc),
            )
        VERSION_RECORDS.labels(service, outcome).inc()

    async def _record(self, service: str, key: str, hlc: str, event_id: str) -> str:
        if not self._conn.is_connected:
            raise _Unavailable("NATS is not connected")
        kv = self._kv
        if kv is None:
            if time.monotonic() < self._next_bind or not await self.bind():
                raise _Unavailable(f"bucket {self._bucket} is not bound")
            kv = self._kv
            assert kv is not None
        raised = await record_local_write(kv, service, key, hlc, event_id, owner=self._owner)
        return "recorded" if raised else "superseded"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _Unavailable):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    return repr(exc)
