"""`xregion pause|resume --target R [--origin O]` and `xregion pause --list`.

A replication path is origin -> target. Its switch lives in the origin region's control
bucket (`shared/pause.py`), which every broadcaster instance of that origin
re-reads within a second; events wait in the origin's stream while the path is paused.

Without `--origin`, every path into the target is switched (each other region's bucket,
reached through the gateways from the region this command connects to). Afterwards the
command prints the state of the paths it touched; `pause --list` prints every path of the
super-cluster (`xregion status` shows them too, with their backlogs: `read_switches`).
Exit 1 if any bucket could not be read or written; the lines (or `error` keys) say which.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from nats.js import JetStreamContext

from services.xregion.errors import UsageError
from services.xregion.ops.connect import connected
from services.xregion.ops.output import iso_utc_text, print_json
from shared.pause import ControlError, PauseInfo, read_pause, set_pause
from shared.settings import Settings

__all__ = [
    "PathSwitch",
    "all_paths",
    "list_paths",
    "paths_into",
    "read_switches",
    "switch_paths",
]

Route = tuple[str, str]  # a replication path: (origin, target)


@dataclass(frozen=True, slots=True)
class PathSwitch:
    """The pause switch of one path as read from its origin's control bucket."""

    origin: str
    target: str
    paused: PauseInfo | None = None
    error: str | None = None  # the switch could not be read
    failed: str | None = None  # the switch could not be written

    @property
    def state(self) -> str:
        if self.error is not None:
            return "unknown"
        return "paused" if self.paused is not None else "running"

    def line(self) -> str:
        path = f"{self.origin} -> {self.target}"
        if self.state == "unknown":
            return f"{path}  UNKNOWN  {self.error}"
        if self.paused is None:
            return f"{path}  running"
        return f"{path}  paused  since {self.paused.since} by {self.paused.by}"

    def as_json(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "target": self.target,
            "state": self.state,
            "since": iso_utc_text(self.paused.since) if self.paused else None,
            "by": self.paused.by if self.paused else None,
            "error": self.error or self.failed,
        }


def all_paths(regions: Sequence[str]) -> list[Route]:
    return [(o, t) for o in regions for t in regions if o != t]


def paths_into(regions: Sequence[str], target: str, origin: str | None = None) -> list[Route]:
    """The paths `pause --target target [--origin origin]` switches; UsageError if invalid."""
    if target not in regions:
        raise UsageError(f"--target {target!r} is not one of regions {list(regions)}")
    if origin is None:
        return [(o, target) for o in regions if o != target]
    if origin not in regions:
        raise UsageError(f"--origin {origin!r} is not one of regions {list(regions)}")
    if origin == target:
        raise UsageError("--origin and --target name the same region: no such path")
    return [(origin, target)]


async def read_switches(js: JetStreamContext, paths: Sequence[Route]) -> list[PathSwitch]:
    """The switch of every path, in the order given; an unreadable one has `error` set."""

    async def read(origin: str, target: str) -> PathSwitch:
        try:
            return PathSwitch(origin, target, paused=await read_pause(js, origin, target))
        except ControlError as exc:
            return PathSwitch(origin, target, error=str(exc))

    return list(await asyncio.gather(*(read(o, t) for o, t in paths)))


async def switch_paths(
    settings: Settings, *, target: str, origin: str | None, paused: bool, as_json: bool = False
) -> int:
    """Pause or resume the paths into `target`; prints their state; the exit code."""
    paths = paths_into(settings.regions, target, origin)
    failures: dict[Route, str] = {}
    async with connected(settings, "pause") as conn:
        js = conn.jetstream()
        for path in paths:
            try:
                await set_pause(js, *path, paused=paused)
            except ControlError as exc:
                failures[path] = str(exc)
                if not as_json:
                    print(f"{path[0]} -> {path[1]}  FAILED  {exc}")
        switches = await read_switches(js, paths)
    switches = [replace(s, failed=failures.get((s.origin, s.target))) for s in switches]
    _print(switches, as_json)
    return 0 if not failures and all(s.state != "unknown" for s in switches) else 1


async def list_paths(settings: Settings, *, as_json: bool = False) -> int:
    """Print every path of the super-cluster with its state; the exit code."""
    async with connected(settings, "pause") as conn:
        switches = await read_switches(conn.jetstream(), all_paths(settings.regions))
    _print(switches, as_json)
    return 0 if all(s.state != "unknown" for s in switches) else 1


def _print(switches: Sequence[PathSwitch], as_json: bool) -> None:
    if as_json:
        print_json({"paths": [s.as_json() for s in switches]})
        return
    for switch in switches:
        print(switch.line())
