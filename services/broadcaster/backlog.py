"""Backlog and lag of every target, read from the broadcaster's consumers.

Both are properties of the consumer, not of one instance, so every instance reports the same
value (dashboards take the max):

* `xr_broadcaster_backlog{target}` = `num_pending + num_ack_pending`: events not yet delivered
  to any broadcaster plus events delivered and not yet acked;
* `xr_broadcaster_lag_seconds{target}` = age of the oldest event not yet acked (the first
  message after the consumer's ack floor), 0 when nothing is owed. It keeps growing while a
  target is paused or unreachable, which a "lag of the last forwarded event" would not.

Consumer info and direct gets are answered by the region's own servers: no meta leader.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Sequence

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError

from services.broadcaster.metrics import BACKLOG, LAG
from shared.logs import get_logger
from shared.regions import broadcast_consumer, events_stream, events_subject

__all__ = ["BacklogMonitor", "Reading"]

log = get_logger("xr.broadcaster")


class Reading:
    """The latest backlog of one target and the time of its oldest owed event (None before the
    first good read); the lag is that event's age *now*."""

    __slots__ = ("_wall_s", "backlog", "oldest_s")

    def __init__(self, wall_s: Callable[[], float] = time.time) -> None:
        self._wall_s = wall_s
        self.backlog: int | None = None
        self.oldest_s: float | None = None  # 0.0: nothing owed

    @property
    def lag_s(self) -> float | None:
        if self.oldest_s is None:
            return None
        return max(0.0, self._wall_s() - self.oldest_s) if self.oldest_s else 0.0


def _lag_or_zero(reading: Reading) -> float:
    return reading.lag_s or 0.0


class BacklogMonitor:
    """Polls each target's consumer every `interval_s` and sets the gauges."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        region: str,
        targets: Sequence[str],
        interval_s: float,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        self._js = js
        self._region = region
        self._stream = events_stream(region)
        self._interval_s = interval_s
        self._wall_s = wall_s
        self.readings = {target: Reading(wall_s) for target in targets}
        for target, reading in self.readings.items():
            # Computed when scraped: an age that grows between polls, as the oldest event ages.
            LAG.labels(target).set_function(functools.partial(_lag_or_zero, reading))
        self._failing: set[str] = set()

    async def run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self._interval_s)

    async def poll(self) -> None:
        for target, reading in self.readings.items():
            try:
                await self._read(target, reading)
            except (TimeoutError, nats.errors.Error) as exc:
                if target not in self._failing:
                    log.warning("broadcaster.backlog_unreadable", target=target, error=repr(exc))
                self._failing.add(target)
            else:
                self._failing.discard(target)

    async def _read(self, target: str, reading: Reading) -> None:
        info: ConsumerInfo = await self._js.consumer_info(self._stream, broadcast_consumer(target))
        backlog = (info.num_pending or 0) + (info.num_ack_pending or 0)
        reading.oldest_s = await self._oldest_time_s(info) if backlog else 0.0
        reading.backlog = backlog
        BACKLOG.labels(target).set(backlog)

    async def _oldest_time_s(self, info: ConsumerInfo) -> float:
        """When the oldest event not yet acked was stored (0.0 when none is found)."""
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
        try:
            msg = await self._js.get_msg(
                self._stream,
                seq=(floor or 0) + 1,
                subject=events_subject(self._region, ">"),
                next=True,
                direct=True,
            )
        except NotFoundError:
            return 0.0
        if msg.time is None:
            return 0.0
        return min(msg.time.timestamp(), self._wall_s())
