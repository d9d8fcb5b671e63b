"""Per-key order (docs/DESIGN.md §5, §5a): one key's events reach the service one after the
other, in HLC order, with any number of replayer instances; different keys run in parallel.

How ownership works
-------------------
Keys are not in the subject (`xr.replay.<target>.<origin>.<service>`), so subject-filtered
partition consumers cannot split by key. Instead every instance shares the one durable
consumer, and order is enforced at two levels:

1. **Within an instance** (`KeyedRunner`): messages are submitted in the order the consumer
   delivers them (stream order); a message whose key already has one in the runner waits for
   it to finish (chained tasks), so one key never has two calls in flight in one process.
   Creates (`apply` POSTs) are the exception: they wait for the key's earlier other writes
   and hold back its later ones, but not each other, so creates to one collection run in
   parallel.
2. **Across instances** (`versions.VersionStore`): before calling, an instance *claims* the
   key in the versions bucket with a compare-and-set on the record's revision. A claim is only
   granted to a version newer than every version the record has seen (or to the same event
   again), and not while another event's claim is live. The record thus acts as a per-key
   lease plus a high-water mark: two instances can never call the service for one key at the
   same time, and a call is never made for a version older than one already claimed or
   applied. Calls for a key are therefore made in strictly increasing HLC order, everywhere.
   (An instance may skip reading the record before its compare-and-set when it remembers
   the record it wrote last; a refused compare-and-set falls back to reading: versions.py.)

An event that loses (an older version arriving after a newer one, whichever instance or
stream position it came from) is acked as `stale`: last writer wins, so it is superseded,
never lost. An event that finds another event's live claim is nak'ed with a short delay.
A claim outlives a crashed owner by at most `ack_wait_s` (then it expires and the
redelivered event takes over; the service sees the same `Idempotency-Key` again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from shared.envelope import HDR_KEY, HDR_METHOD, HDR_RULE, HDR_SERVICE, default_rule
from shared.logs import get_logger

__all__ = ["KeyedRunner", "commutes", "order_key"]

log = get_logger("xr.replayer")

Job = Callable[[], Awaitable[None]]


def order_key(headers: Mapping[str, str] | None) -> str | None:
    """The (service, key) an event is ordered by, from raw headers; None if it has none."""
    if not headers:
        return None
    service, key = headers.get(HDR_SERVICE), headers.get(HDR_KEY)
    if service is None or key is None:
        return None
    return f"{service}\x00{key}"


def commutes(headers: Mapping[str, str] | None) -> bool:
    """Whether an event is a create (`apply` POST): creates of one key need no order among
    themselves (each adds its own resource), only against the key's other writes."""
    if not headers or headers.get(HDR_METHOD) != "POST":
        return False
    rule = headers.get(HDR_RULE)
    return (rule or default_rule("POST")) == "apply"


@dataclass(slots=True)
class _Lane:
    """One key's tail: the last exclusive job, and the commuting jobs submitted since."""

    exclusive: asyncio.Task[None] | None = None
    shared: set[asyncio.Task[None]] = field(default_factory=set)


class KeyedRunner:
    """Owns one task per submitted job; jobs with the same key run in submission order,
    except that `shared` jobs of a key run alongside each other (each still after the key's
    earlier exclusive job, and before its later ones)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[str, _Lane] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def submit(self, key: str | None, job: Job, *, shared: bool = False) -> None:
        lane = self._lanes.setdefault(key, _Lane()) if key is not None else None
        before: set[asyncio.Task[None]] = set()
        if lane is not None:
            if lane.exclusive is not None:
                before.add(lane.exclusive)
            if not shared:
                before |= lane.shared
        task = asyncio.get_running_loop().create_task(self._run(before, job))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if lane is not None:
            if shared:
                lane.shared.add(task)
            else:
                lane.exclusive, lane.shared = task, set()
            task.add_done_callback(lambda t: self._leave(key, t))

    async def _run(self, before: set[asyncio.Task[None]], job: Job) -> None:
        if before:
            await asyncio.wait(before)  # their failures are their own; only their end matters
        await job()

    def _leave(self, key: str | None, task: asyncio.Task[None]) -> None:
        lane = self._lanes.get(key) if key is not None else None
        if lane is None:
            return
        lane.shared.discard(task)
        if lane.exclusive is task:
            lane.exclusive = None
        if lane.exclusive is None and not lane.shared:
            del self._lanes[key]  # type: ignore[arg-type]  # key is not None here

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("replayer.task_failed", error=repr(task.exception()))

    async def wait(self, timeout_s: float) -> bool:
        """Wait for every job; True if all finished within `timeout_s`."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not pending

    async def cancel(self, reason: str) -> None:
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel(reason)
        if tasks:
            await asyncio.wait(tasks)
