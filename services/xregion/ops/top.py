"""`xregion top`: a live terminal dashboard of every region's replication metrics.

Every `--interval` seconds it scrapes `/metrics` and `/readyz` of every process's admin port
(concurrently, short timeouts: `services/xregion/ops/scrape.py`), turns the last two rounds into a
frame (`dashboard.py`, pure) and draws it (`dashboard_view.py`). An endpoint that does not
answer is shown as down; the dashboard keeps going. `--once` takes two rounds one interval
apart (so rates are real), prints one frame (`--output json`: as one JSON document) and
exits: 0, or 1 when no endpoint answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from rich.console import Console
from rich.live import Live

from services.xregion.ops.dashboard import build_frame
from services.xregion.ops.dashboard_view import render
from services.xregion.ops.deployment import (
    Deployment,
)
from services.xregion.ops.output import (
    iso_utc,
    print_json,
    table_console,
)
from services.xregion.ops.scrape import Scrape, admin_client, scrape_all
from shared.lifecycle import until_signalled

__all__ = ["run_top"]

Scraper = Callable[[], Awaitable[list[Scrape]]]


async def run_top(
    deployment: Deployment,
    *,
    interval_s: float = 1.0,
    timeout_s: float = 0.8,
    once: bool = False,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Run the dashboard (until SIGINT/SIGTERM), or print one frame with `once` (as JSON
    with `as_json`)."""
    console = console or table_console()
    timeout_s = min(timeout_s, interval_s)
    async with admin_client(timeout_s) as client:

        async def scrape() -> list[Scrape]:
            return await scrape_all(client, deployment.admin)

        if once:
            return await _once(deployment, scrape, interval_s, console, as_json)
        return await until_signalled(
            lambda stop: _live(deployment, scrape, interval_s, console, stop)
        )


async def _once(
    deployment: Deployment, scrape: Scraper, interval_s: float, console: Console, as_json: bool
) -> int:
    first = await scrape()
    await asyncio.sleep(interval_s)  # the rate window
    second = await scrape()
    frame = build_frame(deployment.regions, first, second)
    if as_json:
        print_json({"at": iso_utc(datetime.now(UTC))} | frame.as_json())
    else:
        console.print(render(frame))
    answered = any(s.up or s.ready is not None for s in (*first, *second))
    return 0 if answered else 1


async def _live(
    deployment: Deployment,
    scrape: Scraper,
    interval_s: float,
    console: Console,
    stop: Callable[[], Awaitable[object]],
) -> int:
    loop = asyncio.get_running_loop()
    stopped = asyncio.ensure_future(stop())  # owned here: cancelled below
    previous: Sequence[Scrape] | None = None
    try:
        with Live(console=console, auto_refresh=False) as live:
            while not stopped.done():
                tick = loop.time() + interval_s  # a slow scrape does not stretch the period
                current = await scrape()
                frame = build_frame(deployment.regions, previous, current)
                live.update(render(frame), refresh=True)
                previous = current
                await asyncio.wait({stopped}, timeout=max(0.0, tick - loop.time()))
    finally:
        stopped.cancel()
    return 0
