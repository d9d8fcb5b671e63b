"""`xregion pause|resume --target R [--origin O]` and `xregion pause --list`.

A replication path is origin -> target. Its switch lives in the origin region's control
bucket (`services/broadcaster/pause.py`), which every broadcaster instance of that origin
re-reads within a second; events wait in the origin's stream while the path is paused.

Without `--origin`, every path into the target is switched (each other region's bucket,
reached through the gateways from the region this command connects to). Afterwards the
command prints the state of the paths it touched; `pause --list` prints every path of the
super-cluster (`xregion status` is not there yet: this is where paused paths are shown).
Exit 1 if any bucket could not be read or written; the lines say which.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from nats.js import JetStreamContext

from services.broadcaster.pause import ControlError, read_pause, set_pause
from services.xregion.commands import CommandError, connected
from shared.settings import Settings

__all__ = ["list_paths", "paths_into", "switch_paths"]

Route = tuple[str, str]  # a replication path: (origin, target)


def paths_into(regions: Sequence[str], target: str, origin: str | None = None) -> list[Route]:
    """The paths `pause --target target [--origin origin]` switches; CommandError if invalid."""
    if target not in regions:
        raise CommandError(f"--target {target!r} is not one of regions {list(regions)}", 2)
    if origin is None:
        return [(o, target) for o in regions if o != target]
    if origin not in regions:
        raise CommandError(f"--origin {origin!r} is not one of regions {list(regions)}", 2)
    if origin == target:
        raise CommandError("--origin and --target name the same region: no such path", 2)
    return [(origin, target)]


async def switch_paths(settings: Settings, *, target: str, origin: str | None, paused: bool) -> int:
    """Pause or resume the paths into `target`; prints their state; the exit code."""
    paths = paths_into(settings.regions, target, origin)
    async with connected(settings, "pause") as conn:
        js = conn.jetstream()
        failed = 0
        for path_origin, path_target in paths:
            try:
                await set_pause(js, path_origin, path_target, paused=paused)
            except ControlError as exc:
                print(f"{path_origin} -> {path_target}  FAILED  {exc}")
                failed += 1
        ok = await _print_paths(js, paths)
    return 0 if failed == 0 and ok else 1


async def list_paths(settings: Settings) -> int:
    """Print every path of the super-cluster with its state; the exit code."""
    regions = settings.regions
    paths = [(o, t) for o in regions for t in regions if o != t]
    async with connected(settings, "pause") as conn:
        ok = await _print_paths(conn.jetstream(), paths)
    return 0 if ok else 1


async def _print_paths(js: JetStreamContext, paths: Iterable[Route]) -> bool:
    ok = True
    for origin, target in paths:
        try:
            info = await read_pause(js, origin, target)
        except ControlError as exc:
            print(f"{origin} -> {target}  UNKNOWN  {exc}")
            ok = False
            continue
        if info is None:
            print(f"{origin} -> {target}  running")
        else:
            print(f"{origin} -> {target}  paused  since {info.since} by {info.by}")
    return ok
