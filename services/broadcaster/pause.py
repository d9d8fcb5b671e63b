"""Pause switches: operator-controlled, per replication path (origin -> target).

State lives in the origin region's control KV bucket `xr-control-<origin>` (created by
`xregion provision`), key `pause.<target>`: present means paused (value: JSON with `since`
and `by`), deleted means running. Writing it is `xregion pause|resume` (see
`services/xregion/pause_cmd.py`); every broadcaster instance of the origin reads it.

Why polling and not a KV watch: a watch is an ephemeral consumer, and creating a consumer
needs the JetStream meta leader, which a partitioned region may not reach (DESIGN §6a). A
direct get of the key's last value is answered by the bucket's own servers, so
`PauseWatcher` re-reads every switch every `control_poll_s` (default 0.25 s): every instance
obeys within a second, also when cut off from the meta leader.

Errors::

    Exception
     └── ControlError   the control bucket could not be read or written (.origin)
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.broadcaster.metrics import PAUSED
from shared.logs import get_logger
from shared.provision import control_bucket

__all__ = [
    "ControlError",
    "PauseInfo",
    "PauseWatcher",
    "pause_key",
    "read_pause",
    "set_pause",
]

log = get_logger("xr.broadcaster")

_KV_OPERATION = "KV-Operation"  # NATS KV's own header: DEL or PURGE marks a deleted key
_DELETED = frozenset({"DEL", "PURGE"})


class ControlError(Exception):
    """The control bucket of `origin` could not be read or written."""

    def __init__(self, origin: str, message: str) -> None:
        super().__init__(f"{control_bucket(origin)}: {message}")
        self.origin = origin


@dataclass(frozen=True, slots=True)
class PauseInfo:
    """A paused path: since when and by whom (as written by `xregion pause`)."""

    since: str
    by: str


def pause_key(target: str) -> str:
    return f"pause.{target}"


def _stream(origin: str) -> str:
    return f"KV_{control_bucket(origin)}"


def _subject(origin: str, target: str) -> str:
    return f"$KV.{control_bucket(origin)}.{pause_key(target)}"


async def read_pause(js: JetStreamContext, origin: str, target: str) -> PauseInfo | None:
    """The pause switch of origin -> target: PauseInfo when paused, None when running."""
    try:
        msg = await js.get_msg(_stream(origin), subject=_subject(origin, target), direct=True)
    except NotFoundError:
        return None
    except (TimeoutError, nats.errors.Error) as exc:
        raise ControlError(origin, f"cannot read {pause_key(target)}: {exc!r}") from exc
    if (msg.headers or {}).get(_KV_OPERATION) in _DELETED:
        return None
    return _parse(msg.data or b"")


def _parse(value: bytes) -> PauseInfo:
    try:
        data = json.loads(value)
        return PauseInfo(since=str(data.get("since", "?")), by=str(data.get("by", "?")))
    except (ValueError, AttributeError):
        return PauseInfo(since="?", by="?")  # still paused: the key exists


async def set_pause(js: JetStreamContext, origin: str, target: str, *, paused: bool) -> None:
    """Pause (put the key) or resume (delete it) the path origin -> target."""
    if paused:
        body = {"since": datetime.now(UTC).isoformat(timespec="seconds"), "by": _who()}
        payload, headers = json.dumps(body).encode(), None
    else:
        payload, headers = b"", {_KV_OPERATION: "DEL"}
    try:
        await js.publish(_subject(origin, target), payload, headers=headers)
    except nats.js.errors.NoStreamResponseError as exc:
        raise ControlError(origin, "bucket not found (run `xregion provision` there)") from exc
    except (TimeoutError, nats.errors.Error) as exc:
        raise ControlError(origin, f"cannot write {pause_key(target)}: {exc!r}") from exc


def _who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


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
