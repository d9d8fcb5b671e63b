"""Steady concurrent load through every region's bridge, and what each bridge answered.

Per region, `WORKERS` tasks write in a loop through that region's bridge, paced, until
`stop()`:

* `POST /items` with a new client-assigned id (`apply`, a create in a shared collection);
* `PATCH /items/<id>` of an item this worker created (`apply`, a partial update; each patch
  sets a field of its own, so the merged item does not depend on arrival order);
* `PUT /configs/<key>` and now and then `DELETE /configs/<key>` of `CONFIG_KEYS` keys shared
  by every region (`replace`), and every `PAIR_EVERY`-th round the same key through two
  regions at the same moment.

Every answer is kept as a `Write`: its status (None when no answer came: the outcome is
unknown), the `Xr-Event-Id` the bridge answered with, and when it was sent and answered.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

__all__ = ["CONFIG_KEYS", "Load", "Write"]

CONFIG_KEYS = 24
WORKERS = 2
PACE_S = 0.15  # between one worker's writes: a steady load the 2-core machine can carry
PAIR_EVERY = 7
DELETE_EVERY = 9
_TIMEOUT_S = 15.0


@dataclass(frozen=True, slots=True)
class Write:
    region: str
    method: str
    path: str
    status: int | None
    event_id: str
    sent_at: float
    answered_at: float
    error: str = ""

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def rule(self) -> str:
        return "replace" if self.method in ("PUT", "DELETE") else "apply"

    @property
    def key(self) -> str:
        return self.path


@dataclass
class _Worker:
    region: str
    name: str
    created: list[str] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)


class Load:
    """The load generator; `start()`, then `stop()` (always: it is awaited in a finally)."""

    def __init__(self, bridges: dict[str, str], *, seed: int = 17) -> None:
        self._bridges = bridges
        self._random = random.Random(seed)
        self._http = httpx.AsyncClient(timeout=_TIMEOUT_S, trust_env=False)
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.writes: list[Write] = []

    async def start(self) -> None:
        for region in self._bridges:
            for index in range(WORKERS):
                worker = _Worker(region, f"{region}-w{index}")
                self._tasks.append(asyncio.create_task(self._run(worker, index == 0)))

    async def stop(self) -> list[Write]:
        self._stopping.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self._http.aclose()
        return self.writes

    def count(self, *, accepted: bool = True) -> int:
        return sum(1 for w in self.writes if w.accepted == accepted)

    def accepted_since(self, at: float, region: str | None = None) -> int:
        return sum(
            1
            for w in self.writes
            if w.accepted and w.sent_at >= at and (region is None or w.region == region)
        )

    async def _run(self, worker: _Worker, pairs: bool) -> None:
        while not self._stopping.is_set():
            n = next(worker.counter)
            if pairs and n % PAIR_EVERY == PAIR_EVERY - 1:
                await self._pair(worker, n)
            else:
                await self._one(worker, n)
            try:
                await asyncio.wait_for(self._stopping.wait(), PACE_S)
            except TimeoutError:
                pass  # the pace between writes, not a synchronisation

    async def _one(self, worker: _Worker, n: int) -> None:
        match n % 4:
            case 0:
                item_id = f"{worker.name}-{n}"
                body = {"id": item_id, "by": worker.region, "n": n}
                write = await self._send(worker.region, "POST", "/items", body)
                if write.accepted:
                    worker.created.append(item_id)
            case 1 if worker.created:
                item_id = self._random.choice(worker.created[-20:])
                await self._send(worker.region, "PATCH", f"/items/{item_id}", {f"p{n}": n})
            case _:
                key = f"/configs/k{self._random.randrange(CONFIG_KEYS)}"
                if n % DELETE_EVERY == 0:
                    await self._send(worker.region, "DELETE", key, None)
                else:
                    await self._send(worker.region, "PUT", key, {"v": f"{worker.name}-{n}"})

    async def _pair(self, worker: _Worker, n: int) -> None:
        """The same key written through two regions at the same moment."""
        others = [r for r in self._bridges if r != worker.region]
        other = self._random.choice(others)
        key = f"/configs/k{self._random.randrange(CONFIG_KEYS)}"
        await asyncio.gather(
            self._send(worker.region, "PUT", key, {"v": f"{worker.name}-{n}"}),
            self._send(other, "PUT", key, {"v": f"{worker.name}-{n}-pair"}),
        )

    async def _send(self, region: str, method: str, path: str, body: object) -> Write:
        sent = time.time()
        try:
            reply = await self._http.request(
                method, self._bridges[region] + path, json=body if body is not None else None
            )
        except httpx.HTTPError as exc:
            write = Write(region, method, path, None, "", sent, time.time(), type(exc).__name__)
        else:
            write = Write(
                region, method, path, reply.status_code,
                reply.headers.get("Xr-Event-Id", ""), sent, time.time(),
                "" if reply.is_success else reply.text[:200],
            )  # fmt: skip
        self.writes.append(write)
        return write


def refusals(writes: Sequence[Write]) -> dict[str, int]:
    """How many writes got each non-2xx answer ("no answer" for a transport error)."""
    found: dict[str, int] = {}
    for w in writes:
        if not w.accepted:
            label = "no answer" if w.status is None else str(w.status)
            found[label] = found.get(label, 0) + 1
    return found
