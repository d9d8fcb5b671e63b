"""`Frame` -> rich renderables: the three tables of `xregion top` (pure, no IO).

* **Replication paths**: one row per origin -> target;
* **Regions**: backlogs, dead letters, retries and outbox per region;
* **Health**: one row per scraped process, up/down and its `/readyz` status.

"-" means nothing to show: the process that owns the number is down or not scraped, or the
number has not been observed yet (no canary applied, no lag sample).
"""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from services.xregion.ops.dashboard import Frame, HealthRow, PathRow, RegionRow

__all__ = [
    "HEALTH_TITLE",
    "PATHS_TITLE",
    "REGIONS_TITLE",
    "fmt_count",
    "fmt_duration",
    "fmt_rate",
    "render",
]

PATHS_TITLE = "Replication paths"
REGIONS_TITLE = "Regions"
HEALTH_TITLE = "Health"
DASH = "-"
_STATE_STYLE = {"ok": "green", "paused": "yellow", "unreachable": "bold red"}
_READY_STYLE = {"ok": "green", "degraded": "yellow", "down": "bold red"}


def render(frame: Frame, *, now: float | None = None) -> RenderableType:
    return Group(
        _header(frame, time.time() if now is None else now),
        _paths_table(frame.paths),
        _regions_table(frame.regions),
        _health_table(frame.health),
    )


def _header(frame: Frame, now: float) -> Text:
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    window = f"rates over {frame.window_s:.1f} s" if frame.window_s else "rates from the next frame"
    up = f"{frame.endpoints_up}/{len(frame.health)} endpoints up"
    style = "green" if frame.endpoints_up == len(frame.health) else "bold red"
    return Text.assemble(("xregion top", "bold"), f"  {clock}  {window}  ", (up, style))


def _paths_table(rows: tuple[PathRow, ...]) -> Table:
    table = Table(title=PATHS_TITLE, title_justify="left", expand=False)
    table.add_column("origin → target", no_wrap=True)
    for name in ("fwd/s", "applied/s", "applied", "lag p50", "lag p99", "canary age", "backlog"):
        table.add_column(name, justify="right", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for row in rows:
        table.add_row(
            f"{row.origin} → {row.target}",
            fmt_rate(row.forwarded_per_s),
            fmt_rate(row.applied_per_s),
            fmt_count(row.applied_total),
            _lag(row.lag_p50_s, row),
            _lag(row.lag_p99_s, row),
            fmt_duration(row.canary_age_s),
            fmt_count(row.backlog),
            Text(row.state or DASH, style=_STATE_STYLE.get(row.state or "", "")),
        )
    table.caption = "lag: * = since start (no event in the last window)"
    return table


def _lag(value: float | None, row: PathRow) -> str:
    text = fmt_duration(value)
    return text + "*" if value is not None and row.lag_source == "cumulative" else text


def _regions_table(rows: tuple[RegionRow, ...]) -> Table:
    table = Table(title=REGIONS_TITLE, title_justify="left")
    table.add_column("region", no_wrap=True)
    for name in (
        "replay backlog", "DLQ", "retries/s", "redeliveries/s", "outbox", "conflicts", "repeats",
    ):  # fmt: skip
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            row.region,
            fmt_count(row.replay_backlog),
            _warn(fmt_count(row.dlq), row.dlq),
            fmt_rate(row.upstream_retries_per_s),
            fmt_rate(row.retried_per_s),
            _warn(fmt_count(row.outbox), row.outbox),
            _warn(fmt_count(row.conflicts), row.conflicts),
            _warn(fmt_count(row.repeated), row.repeated),
        )
    return table


def _warn(text: str, value: float | None) -> Text:
    return Text(text, style="yellow" if value else "")


def _health_table(rows: tuple[HealthRow, ...]) -> Table:
    table = Table(title=HEALTH_TITLE, title_justify="left")
    for name in ("region", "service", "admin", "up", "ready", "detail"):
        table.add_column(name, no_wrap=name != "detail")
    for row in rows:
        table.add_row(
            row.region,
            row.service,
            row.url,
            Text("up", style="green") if row.up else Text("down", style="bold red"),
            Text(row.ready or DASH, style=_READY_STYLE.get(row.ready or "", "")),
            row.error or "",
        )
    return table


def fmt_rate(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def fmt_count(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:,.0f}"


def fmt_duration(seconds: float | None) -> str:
    """Milliseconds below a second, seconds below a minute, then minutes and hours."""
    if seconds is None:
        return DASH
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms" if seconds >= 0.01 else f"{seconds * 1000:.1f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
