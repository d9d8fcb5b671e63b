"""`xregion status`: every running xregion instance in every region, found through NATS, and
the state and backlog of every replication path.

Connects to one region's NATS (the first of the state file's or `--config` files' regions
that accepts a connection), collects every `$SRV.PING|INFO|STATS` answer for `--timeout`
seconds (`discovery.py`; the requests cross the gateways, so every region answers) and, on
the same connection, reads every path's pause switch from its origin's control bucket (as
`pause --list` does). It then scrapes each instance's admin port (its URL is in the
instance's metadata): `/readyz` for its health, and the broadcasters' `/metrics` for each
path's backlog (as `top` does). Prints one row per instance and one per path. Exit 0 when at
least one instance answered, 1 when none did, 2 on bad usage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from services.xregion.errors import XregionError
from services.xregion.ops.dashboard import PathRow, build_frame
from services.xregion.ops.dashboard_view import fmt_count, fmt_duration
from services.xregion.ops.deployment import (
    AdminEndpoint,
    Deployment,
)
from services.xregion.ops.discovery import Instance, discover
from services.xregion.ops.output import (
    count,
    iso_utc,
    number,
    print_json,
    table_console,
)
from services.xregion.ops.pause import PathSwitch, all_paths, read_switches
from services.xregion.ops.scrape import Scrape, admin_client, scrape_all
from shared.natsconn import NatsConnectError, NatsConnection

__all__ = [
    "PathStatus",
    "StatusRow",
    "path_statuses",
    "paths_table",
    "run_status",
    "status_json",
    "status_rows",
    "status_table",
    "status_tables",
]

_CONNECT_TIMEOUT_S = 3.0
_HEALTH_STYLE = {"ok": "green", "degraded": "yellow", "down": "bold red", "unreachable": "red"}
_SWITCH_STYLE = {"running": "green", "paused": "yellow", "unknown": "bold red"}


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
    started: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "service": self.service,
            "instance": self.instance,
            "version": self.version,
            "started": iso_utc(self.started),
            "uptime_s": number(self.uptime_s, 3),
            "health": self.health,
            "admin_url": self.admin_url,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True, slots=True)
class PathStatus:
    """One path: its switch (control bucket) and what its origin's broadcasters report."""

    switch: PathSwitch
    backlog: float | None = None  # None: no broadcaster of the origin answered
    forwarding: str | None = None  # ok | paused | unreachable

    def as_json(self) -> dict[str, Any]:
        return self.switch.as_json() | {
            "backlog": count(self.backlog),
            "forwarding": self.forwarding,
        }


async def run_status(
    deployment: Deployment,
    *,
    timeout_s: float = 1.0,
    as_json: bool = False,
    console: Console | None = None,
) -> int:
    """Find, check and print every instance and path; the exit code (XregionError when none)."""
    instances, switches = await _from_nats(deployment, timeout_s)
    if not instances:
        raise XregionError(f"no xregion instance answered within {timeout_s:g} s")
    scrapes = await _scrape(instances, timeout_s)
    rows = status_rows(instances, _health(instances, scrapes), datetime.now(UTC))
    paths = path_statuses(switches, build_frame(deployment.regions, None, scrapes).paths)
    if as_json:
        print_json(status_json(rows, paths))
    else:
        (console or table_console()).print(status_tables(rows, paths))
    return 0


async def _from_nats(
    deployment: Deployment, timeout_s: float
) -> tuple[list[Instance], list[PathSwitch]]:
    """The instances that answer, and every path's switch, through the first NATS that works."""
    failures = []
    for region, settings in deployment.nats.items():
        quick = settings.model_copy(
            update={
                "first_connect_timeout_s": min(settings.first_connect_timeout_s, _CONNECT_TIMEOUT_S)
            }
        )
        try:
            async with NatsConnection(quick, service="status") as conn:
                switches = read_switches(conn.jetstream(timeout_s), all_paths(deployment.regions))
                return await asyncio.gather(discover(conn.nc, timeout_s), switches)
        except NatsConnectError as exc:
            failures.append(f"{region}: {exc}")
    raise XregionError("cannot connect to NATS: " + "; ".join(failures))


async def _scrape(instances: Sequence[Instance], timeout_s: float) -> list[Scrape]:
    """`/readyz` and `/metrics` of every instance that names its admin URL."""
    endpoints = [
        AdminEndpoint(i.region, i.service, i.admin_url.rstrip("/"))
        for i in instances
        if i.admin_url is not None
    ]
    async with admin_client(timeout_s) as client:
        return await scrape_all(client, endpoints)


def _health(instances: Sequence[Instance], scrapes: Sequence[Scrape]) -> dict[str, str]:
    """Instance id -> its `/readyz` status ("unreachable" if no answer, "-" if no URL)."""
    ready = {s.endpoint.url: s.ready or "unreachable" for s in scrapes}
    return {
        i.id: "-" if i.admin_url is None else ready.get(i.admin_url.rstrip("/"), "unreachable")
        for i in instances
    }


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
            started=i.started,
        )
        for i in instances
    ]


def path_statuses(switches: Sequence[PathSwitch], frame: Sequence[PathRow]) -> list[PathStatus]:
    """Each switch with its path's backlog and state from `top`'s frame of the broadcasters."""
    seen = {(row.origin, row.target): row for row in frame}
    statuses = []
    for switch in switches:
        row = seen.get((switch.origin, switch.target))
        backlog = None if row is None else row.backlog
        statuses.append(PathStatus(switch, backlog, None if row is None else row.state))
    return statuses


def status_json(rows: Sequence[StatusRow], paths: Sequence[PathStatus]) -> dict[str, Any]:
    return {
        "instances": [row.as_json() for row in rows],
        "paths": [path.as_json() for path in paths],
    }


def status_tables(rows: Sequence[StatusRow], paths: Sequence[PathStatus]) -> RenderableType:
    return Group(status_table(rows), paths_table(paths))


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


def paths_table(paths: Sequence[PathStatus]) -> Table:
    paused = sum(1 for p in paths if p.switch.state == "paused")
    table = Table(title=f"replication paths: {paused} paused", title_justify="left")
    errors = any(p.switch.error for p in paths)  # the detail column only says what failed
    names = ("origin → target", "switch", "since", "by", "backlog", "forwarding")
    for name in (*names, "detail") if errors else names:
        table.add_column(name, no_wrap=True, justify="right" if name == "backlog" else "left")
    for path in paths:
        switch = path.switch
        cells: list[RenderableType] = [
            f"{switch.origin} → {switch.target}",
            Text(switch.state, style=_SWITCH_STYLE.get(switch.state, "")),
            switch.paused.since if switch.paused else "-",
            switch.paused.by if switch.paused else "-",
            fmt_count(path.backlog),
            path.forwarding or "-",
        ]
        table.add_row(*cells, *([switch.error or ""] if errors else []))
    return table
