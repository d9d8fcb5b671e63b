"""Pause switches: the operator's per-path switch (origin -> target) and its stored format.

A contract between `xregion pause|resume` (which write it) and the broadcaster (which reads
it). State lives in the origin region's control KV bucket `xr-control-<origin>` (created by
`xregion provision`), key `pause.<target>`: present means paused (value: JSON with `since`
and `by`), deleted means running. Both are read with a direct get of the key's last value,
which the bucket's own servers answer without the JetStream meta leader.

Errors::

    Exception
     └── ControlError   the control bucket could not be read or written (.origin)
"""

from __future__ import annotations

import getpass
import json
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared.provision import control_bucket

__all__ = ["ControlError", "PauseInfo", "pause_key", "read_pause", "set_pause"]

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
