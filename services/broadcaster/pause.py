"""Pause switches: operator-controlled, per replication path (origin -> target).

State lives in the origin region's control KV bucket `xr-control-<origin>` (created by `xregion
provision`), key `pause.<target>`: present means paused (value: JSON with `since` and `by`),
deleted means running. Writing it is `xregion pause|resume` (see `shared/pause.py`, used by
`services/xregion/ops/pause.py`); every broadcaster instance of the origin reads it.

Why polling and not a KV watch: a watch is an ephemeral consumer, and creating a consumer
needs the JetStream meta leader, which a partitioned region may not reach. A
direct get of the key's last value is answered by the bucket's own servers, so
`PauseWatcher` re-reads every switch every `control_poll_s` (default 0.25 s): every instance
obeys within a second, also when cut off from the meta leader.

Errors::

    Exception
     └── ControlError   the control bucket could not be read or written (.origin)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence

from nats.js import JetStreamContext

from services.broadcaster.metrics import PAUSED
from shared.logs import get_logger
from shared.pause import ControlError, PauseInfo, pause_key, read_pause, set_pause

__all__ = [
    "ControlError",
    "PauseInfo",
    "PauseWatcher",
    "pause_key",
    "read_pause",
    "set_pause",
]

log = get_logger("xr.broadcaster")


class PauseWatcher:
    """Keeps `on_change(target, paused)` in step with the switches of one origin region."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        origin: str,
        targets: Sequence[str],
        interval_s: float,
        on_change: Callable[[str, bool], None],
    ) -> None:
        self._js = js
        self._origin = origin
        self._targets = tuple(targets)
        self._interval_s = interval_s
        self._on_change = on_change
        self._paused: dict[str, bool] = {}
        self._failing = False
        self.first_read = asyncio.Event()

    @property
    def paused(self) -> Mapping[str, bool]:
        return dict(self._paused)

    async def run(self) -> None:
        """Until cancelled. A failed read keeps the last known state (logged once)."""
        while True:
            await self.poll()
            await asyncio.sleep(self._interval_s)

    async def poll(self) -> None:
        try:
            states = {t: await self._read(t) for t in self._targets}
        except ControlError as exc:
            if not self._failing:
                log.warning("broadcaster.control_unreadable", error=str(exc))
            self._failing = True
            return
        self._failing = False
        for target, paused in states.items():
            self._apply(target, paused)
        self.first_read.set()

    async def _read(self, target: str) -> bool:
        return await read_pause(self._js, self._origin, target) is not None

    def _apply(self, target: str, paused: bool) -> None:
        if self._paused.get(target) == paused:
            return
        known = target in self._paused
        self._paused[target] = paused
        PAUSED.labels(target).set(1 if paused else 0)
        if paused or known:
            event = "broadcaster.paused" if paused else "broadcaster.resumed"
            log.info(event, origin=self._origin, target=target)
        self._on_change(target, paused)
