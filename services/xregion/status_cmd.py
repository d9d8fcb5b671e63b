"""`xregion status`: every running xregion instance in every region, found through NATS.

Connects to one region's NATS (the first of the state file's or `--config` files' regions
that accepts a connection), collects every `$SRV.PING|INFO|STATS` answer for `--timeout`
seconds (`discovery.py`; the requests cross the gateways, so every region answers), asks each
instance's admin port for `/readyz` (its URL is in the instance's metadata), and prints one
row per instance. Exit 0 when at least one instance answered, 1 when none did, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from services.xregion import commands
from services.xregion.dashboard_view import fmt_duration
from services.xregion.deployment import (
    Deployment,
    add_source_arguments,
    deployment_from_args,
    seconds_type,
)
from services.xregion.discovery import Instance, discover
from services.xregion.scrape import admin_client, read_ready
from shared.natsconn import NatsConnectError, NatsConnection
from shared.settings import NatsSettings

__all__ = ["StatusRow", "register", "run_status", "status_rows", "status_table"]

_CONNECT_TIMEOUT_S = 3.0
_HEALTH_STYLE = {"ok": "green", "degraded": "yellow", "down": "bold red", "unreachable": "red"}
_EPILOG = """\
sources: --config FILE (its [nats] section; repeat to name fallbacks) or --state-file FILE
(written by `xregion up --state-file FILE`); default .xregion/state.json. One region's NATS
is enough: requests cross the gateways.

health: the instance's own /readyz (ok|degraded|down), "unreachable" when its admin port does
not answer, "-" when its metadata carries no admin_url.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], summary: str) -> None:
    parser = sub.add_parser(
        "status",
        help=summary,
        description=summary + " (through the NATS services API: $SRV.PING, INFO, STATS).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(
        parser, config_help="a region TOML file whose NATS to use (repeatable: tried in order)"
    )
    parser.add_argument(
        "--timeout",
        type=seconds_type(60),
        default=1.0,
        metavar="S",
        help="how long to collect answers, in seconds (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_handle)


def _handle(args: argparse.Namespace) -> int:
    deployment = deployment_from_args(args)
    if not deployment.nats:
        raise commands.CommandError("the deployment names no NATS servers", exit_code=2)
    return commands.run(run_status(deployment, timeout_s=args.timeout, as_json=args.json))


@dataclass(frozen=True, slots=True)
class StatusRow:
    region: str
    service: str
    instance: str
    version: str
    uptime_s: float | None
    health: str
    admin_url: str | None
    metadata: Mapping[str, str]

    def as_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "service": self.service,
            "instance": self.instance,
            "version": self.version,
            "uptime_s": None if self.uptime_s is None else round(self.uptime_s, 3),
            "health": self.health,
            "admin_url": self.admin_url,
            "metadata": dict(self.metadata),
        }


async def run_status(
    deployment: Deployment,
    *,
    timeout_s: float = 1.0,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Find, check and print every instance; the exit code (CommandError when none)."""
    instances = await _discover(deployment.nats, timeout_s)
    if not instances:
        raise commands.CommandError(f"no xregion instance answered within {timeout_s:g} s")
    health = await _health(instances, timeout_s)
    rows = status_rows(instances, health, datetime.now(UTC))
    if as_json:
        json.dump([row.as_json() for row in rows], sys.stdout, indent=2)
        print()
    else:
        (console or Console()).print(status_table(rows))
    return 0


async def _discover(nats: Mapping[str, NatsSettings], timeout_s: float) -> list[Instance]:
    failures = []
    for region, settings in nats.items():
        quick = settings.model_copy(
            update={
                "first_connect_timeout_s": min(settings.first_connect_timeout_s, _CONNECT_TIMEOUT_S)
            }
        )
        try:
            async with NatsConnection(quick, service="status") as conn:
                return await discover(conn.nc, timeout_s)
        except NatsConnectError as exc:
            failures.append(f"{region}: {exc}")
    raise commands.CommandError("cannot connect to NATS: " + "; ".join(failures))


async def _health(instances: Sequence[Instance], timeout_s: float) -> dict[str, str]:
    """Instance id -> its `/readyz` status ("unreachable" if no answer, "-" if no URL)."""
    async with admin_client(timeout_s) as client:

        async def check(instance: Instance) -> str:
            if instance.admin_url is None:
                return "-"
            return await read_ready(client, instance.admin_url) or "unreachable"

        found = await asyncio.gather(*(check(i) for i in instances))
    return {i.id: status for i, status in zip(instances, found, strict=True)}


def status_rows(
    instances: Sequence[Instance], health: Mapping[str, str], now: datetime
) -> list[StatusRow]:
    return [
        StatusRow(
            region=i.region,
            service=i.service,
            instance=i.id,
            version=i.version,
            uptime_s=i.uptime_s(now),
            health=health.get(i.id, "-"),
            admin_url=i.admin_url,
            metadata=i.metadata,
        )
        for i in instances
    ]


def status_table(rows: Sequence[StatusRow]) -> Table:
    regions = len({row.region for row in rows})
    table = Table(
        title=f"xregion instances: {len(rows)} in {regions} regions", title_justify="left"
    )
    for name in ("region", "service", "instance", "version", "uptime", "health", "admin"):
        table.add_column(name, no_wrap=True)
    for row in rows:
        table.add_row(
            row.region,
            row.service,
            row.instance,
            row.version,
            fmt_duration(row.uptime_s),
            Text(row.health, style=_HEALTH_STYLE.get(row.health, "")),
            row.admin_url or "-",
        )
    return table
