"""`xregion top`: a live terminal dashboard of every region's replication metrics.

Every `--interval` seconds it scrapes `/metrics` and `/readyz` of every process's admin port
(concurrently, short timeouts: `services/xregion/scrape.py`), turns the last two rounds into a
frame (`dashboard.py`, pure) and draws it (`dashboard_view.py`). An endpoint that does not
answer is shown as down; the dashboard keeps going. `--once` takes two rounds one interval
apart (so rates are real), prints one frame (`--output json`: as one JSON document) and
exits: 0, or 1 when no endpoint answered.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

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
from services.xregion.output import (
    add_output_argument,
    iso_utc,
    print_json,
    table_console,
    wants_json,
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
  xregion top --once --output json | jq '.paths[] | select(.state != "ok")'

output json (with --once): {"at" (ISO 8601 UTC), "window_s", "endpoints_up", "endpoints",
  "paths": [{"origin", "target", "forwarded_per_s", "applied_per_s", "applied_total",
  "lag_p50_s", "lag_p99_s", "lag_source": "window"|"cumulative", "canary_age_s", "backlog",
  "state": "ok"|"paused"|"unreachable"}],
  "regions": [{"region", "replay_backlog", "dlq", "upstream_retries_per_s", "retried_per_s",
  "outbox", "conflicts", "repeated"}],
  "health": [{"region", "service", "url", "up": bool, "ready": "ok"|"degraded"|"down",
  "error"}]}; seconds and rates are numbers, null where the table shows "-"
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
    add_output_argument(parser, note=" (json needs --once)")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    deployment = deployment_from_args(args)
    if not deployment.admin:
        raise commands.CommandError(
            "no admin endpoints to scrape (the state file lists none: is the region stack up?)",
            exit_code=2,
        )
    as_json = wants_json(args)
    if as_json and not args.once:
        raise commands.CommandError("--output json needs --once", exit_code=2)
    return commands.run(
        run_top(
            deployment,
            interval_s=args.interval,
            timeout_s=args.timeout,
            once=args.once,
            as_json=as_json,
        )
    )


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
