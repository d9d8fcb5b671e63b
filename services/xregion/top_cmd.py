"""`xregion top`: a live terminal dashboard of every region's replication metrics.

Every `--interval` seconds it scrapes `/metrics` and `/readyz` of every process's admin port
(concurrently, short timeouts: `services/xregion/scrape.py`), turns the last two rounds into a
frame (`dashboard.py`, pure) and draws it (`dashboard_view.py`). An endpoint that does not
answer is shown as down; the dashboard keeps going. `--once` takes two rounds one interval
apart (so rates are real), prints one frame and exits: 0, or 1 when no endpoint answered.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Sequence

from rich.console import Console
from rich.live import Live

from services.xregion import commands
from services.xregion.dashboard import build_frame
from services.xregion.dashboard_view import render
from services.xregion.deployment import (
    Deployment,
    add_source_arguments,
    deployment_from_args,
    seconds_type,
)
from services.xregion.scrape import Scrape, admin_client, scrape_all
from shared.lifecycle import until_signalled

__all__ = ["register", "run_top"]

Scraper = Callable[[], Awaitable[list[Scrape]]]

_EPILOG = """\
sources: --config FILE (repeatable; admin ports from bridge/broadcaster/replayer.admin_listen)
or --state-file FILE (written by `xregion up --state-file FILE`); default .xregion/state.json.

examples:
  xregion top --state-file .xregion/state.json
  xregion top --config us-east.toml --config eu-west.toml --once
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = sub.add_parser(
        "top",
        help=summary,
        description=summary + ": events/s and lag per path, backlogs, dead letters, health.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(
        parser, config_help="a region TOML file; repeat for every region (or instance)"
    )
    parser.add_argument(
        "--interval",
        type=seconds_type(3600),
        default=1.0,
        metavar="S",
        help="seconds between refreshes (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds_type(3600),
        default=0.8,
        metavar="S",
        help="per-endpoint scrape timeout in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="print one frame (two scrapes one interval apart) and exit (1: nothing answered)",
    )
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    deployment = deployment_from_args(args)
    if not deployment.admin:
        raise commands.CommandError(
            "no admin endpoints to scrape (the state file lists none: is the region stack up?)",
            exit_code=2,
        )
    return commands.run(
        run_top(deployment, interval_s=args.interval, timeout_s=args.timeout, once=args.once)
    )


async def run_top(
    deployment: Deployment,
    *,
    interval_s: float = 1.0,
    timeout_s: float = 0.8,
    once: bool = False,
    console: Console | None = None,
) -> int:
    """Run the dashboard (until SIGINT/SIGTERM), or print one frame with `once`."""
    console = console or Console()
    timeout_s = min(timeout_s, interval_s)
    async with admin_client(timeout_s) as client:

        async def scrape() -> list[Scrape]:
            return await scrape_all(client, deployment.admin)

        if once:
            return await _once(deployment, scrape, interval_s, console)
        return await until_signalled(
            lambda stop: _live(deployment, scrape, interval_s, console, stop)
        )


async def _once(
    deployment: Deployment, scrape: Scraper, interval_s: float, console: Console
) -> int:
    first = await scrape()
    await asyncio.sleep(interval_s)  # the rate window
    second = await scrape()
    frame = build_frame(deployment.regions, first, second)
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
