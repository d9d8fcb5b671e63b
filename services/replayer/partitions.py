"""Per-key order (DESIGN §5, §5a): one key's events reach the service one after the other, in
HLC order, with any number of replayer instances; different keys run in parallel.

How ownership works
-------------------
Keys are not in the subject (`xr.replay.<target>.<origin>.<service>`), so subject-filtered
partition consumers cannot split by key. Instead every instance shares the one durable
consumer, and order is enforced at two levels:

1. **Within an instance** (`KeyedRunner`): messages are submitted in the order the consumer
   delivers them (stream order); a message whose key already has one in the runner waits for
   it to finish (chained tasks), so one key never has two calls in flight in one process.
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

from shared.envelope import HDR_KEY, HDR_SERVICE
from shared.logs import get_logger

__all__ = ["KeyedRunner", "order_key"]

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


class KeyedRunner:
    """Owns one task per submitted job; jobs with the same key run in submission order."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._tails: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def submit(self, key: str | None, job: Job) -> None:
        previous = self._tails.get(key) if key is not None else None
        task = asyncio.get_running_loop().create_task(self._run(key, previous, job))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if key is not None:
            self._tails[key] = task

    async def _run(self, key: str | None, previous: asyncio.Task[None] | None, job: Job) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])  # its failure is its own; only its end matters
            await job()
        finally:
            if key is not None and self._tails.get(key) is asyncio.current_task():
                del self._tails[key]

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
