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
    """The latest backlog and lag of one target (None before the first good read)."""

    __slots__ = ("backlog", "lag_s")

    def __init__(self) -> None:
        self.backlog: int | None = None
        self.lag_s: float | None = None


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
        self.readings = {target: Reading() for target in targets}
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
        lag_s = await self._oldest_age_s(info) if backlog else 0.0
        reading.backlog, reading.lag_s = backlog, lag_s
        BACKLOG.labels(target).set(backlog)
        LAG.labels(target).set(lag_s)

    async def _oldest_age_s(self, info: ConsumerInfo) -> float:
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
        return max(0.0, self._wall_s() - msg.time.timestamp())
