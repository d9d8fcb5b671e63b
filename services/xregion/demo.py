"""`xregion demo`'s traffic and verdict, against the stacks `up` started.

Three phases of writes through the regions' bridges to the demo service (`configs`):

1. every key is created through one region (round robin over the regions);
2. the conflict keys are written at the same moment through two different regions, and the
   other keys are updated through a region other than the one that created them;
3. some keys are deleted, through yet another region.

Then it waits until every region's demo service holds the same records, and checks them
against what last-writer-wins must give: for each key, the accepted write with the highest
version (`Xr-Hlc`, then `Xr-Event-Id`), a delete leaving no record. It prints records per
region, replication lag p50/p99 per region pair (from the replayers' `xr_replayer_lag_seconds`
histograms) and the conflicts resolved, and a verdict; the exit code is 0 only when every
region converged on exactly the expected data.

The plan and the expected state are pure functions; the IO is `run_demo_traffic`.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.xregion.dashboard import build_frame, total
from services.xregion.deployment import AdminEndpoint
from services.xregion.scrape import Scrape, admin_client, scrape_all
from services.xregion.stack import RegionStack

__all__ = ["Op", "Outcome", "expected_state", "plan_traffic", "run_demo_traffic"]

KEYS = 300
CONFLICT_KEYS = 60
DELETED_KEYS = 30
_CONCURRENCY = 32
_CONVERGE_TIMEOUT_S = 45.0
_SERVICES = 8

Version = tuple[str, str]
Records = dict[str, tuple[Any, Version]]  # "service/property" -> (value, version)


@dataclass(frozen=True, slots=True)
class Op:
    region: str
    method: str  # PUT | DELETE
    key: str  # "service/property"
    value: Any = None


@dataclass(frozen=True, slots=True)
class Outcome:
    op: Op
    status: int | None  # None: no answer (connection error, timeout)
    version: Version | None  # the bridge's Xr-Hlc/Xr-Event-Id of an accepted write


def plan_traffic(
    regions: Sequence[str],
    *,
    keys: int = KEYS,
    conflicts: int = CONFLICT_KEYS,
    deletes: int = DELETED_KEYS,
) -> list[list[Op]]:
    """The writes, phase by phase; the ops within a phase run concurrently."""
    n = len(regions)
    names = [f"svc-{k % _SERVICES}/prop-{k:04d}" for k in range(keys)]
    creates = [Op(regions[k % n], "PUT", key, {"v": 1, "by": regions[k % n]})
               for k, key in enumerate(names)]  # fmt: skip
    second: list[Op] = []
    for k, key in enumerate(names):
        writers = [regions[(k + 1) % n]]
        if k < conflicts and n > 1:
            writers.append(regions[(k + 2) % n] if n > 2 else regions[k % n])
        second += [Op(r, "PUT", key, {"v": 2, "by": r}) for r in writers]
    removals = [Op(regions[(k + 2) % n], "DELETE", names[k])
                for k in range(keys - deletes, keys)]  # fmt: skip
    return [creates, second, removals]


def expected_state(outcomes: Sequence[Outcome]) -> Records:
    """What every region must hold: per key, the accepted write with the highest version."""
    winners: dict[str, Outcome] = {}
    for outcome in outcomes:
        if outcome.version is None:
            continue
        best = winners.get(outcome.op.key)
        if best is None or (best.version is not None and outcome.version > best.version):
            winners[outcome.op.key] = outcome
    return {
        key: (o.op.value, o.version)
        for key, o in winners.items()
        if o.op.method == "PUT" and o.version is not None
    }


async def run_demo_traffic(stacks: Sequence[RegionStack], console: Console) -> int:
    regions = [s.region for s in stacks]
    phases = plan_traffic(regions)
    bridges = {s.region: s.bridge_url for s in stacks}
    started = time.monotonic()
    async with httpx.AsyncClient(
        timeout=10.0, limits=httpx.Limits(max_connections=_CONCURRENCY), trust_env=False
    ) as client:
        outcomes = await _send_all(client, bridges, phases, console)
        sent_s = time.monotonic() - started
        console.print(f"[green]✓[/] {len(outcomes)} writes sent through {len(bridges)} bridges "
                      f"[dim]({sent_s:.1f} s)[/]")  # fmt: skip
        expected = expected_state(outcomes)
        with console.status("waiting for every region to converge …"):
            converged, held = await _converge(client, stacks, expected)
    settle_s = time.monotonic() - started - sent_s
    async with admin_client(2.0) as admin:
        scrapes = await scrape_all(admin, _endpoints(stacks))
    console.print(_regions_table(stacks, outcomes, held, scrapes))
    console.print(_lag_table(regions, scrapes))
    console.print(_conflicts_line(outcomes, scrapes))
    return _verdict(console, converged, expected, outcomes, sent_s, settle_s)


async def _send_all(
    client: httpx.AsyncClient,
    bridges: Mapping[str, str],
    phases: Sequence[Sequence[Op]],
    console: Console,
) -> list[Outcome]:
    outcomes: list[Outcome] = []
    limit = asyncio.Semaphore(_CONCURRENCY)
    with Progress(console=console, transient=True) as progress:
        bar = progress.add_task(
            f"writing through {len(bridges)} bridges", total=sum(map(len, phases))
        )

        async def one(op: Op) -> Outcome:
            async with limit:
                outcome = await _send(client, bridges[op.region], op)
            progress.advance(bar)
            return outcome

        for phase in phases:
            outcomes += await asyncio.gather(*(one(op) for op in phase))
    return outcomes


async def _send(client: httpx.AsyncClient, bridge: str, op: Op) -> Outcome:
    url = f"{bridge}/configs/{op.key}"
    try:
        if op.method == "PUT":
            reply = await client.put(url, json=op.value)
        else:
            reply = await client.delete(url)
    except httpx.HTTPError:
        return Outcome(op, None, None)
    if not (reply.is_success and reply.headers.get("Xr-Event-Id")):
        return Outcome(op, reply.status_code, None)  # not replicated: no version to win
    return Outcome(op, reply.status_code, _reply_version(reply))


def _reply_version(reply: httpx.Response) -> Version | None:
    """The version the demo service stored for this write, from its JSON answer."""
    try:
        body = reply.json()
    except ValueError:
        return None
    version = body.get("version") if isinstance(body, dict) else None
    return _version(version) if isinstance(version, dict) else None


async def _listing(client: httpx.AsyncClient, service: str) -> Records | None:
    try:
        reply = await client.get(f"{service}/configs")
        reply.raise_for_status()
        body = reply.json()
    except (httpx.HTTPError, ValueError):
        return None
    return {f"{c['service']}/{c['property']}": (c["value"], _version(c["version"]))
            for c in body["configs"]}  # fmt: skip


def _version(version: Mapping[str, str]) -> Version:
    return (version["hlc"], version["event_id"])


async def _converge(
    client: httpx.AsyncClient, stacks: Sequence[RegionStack], expected: Records
) -> tuple[bool, dict[str, Records | None]]:
    deadline = time.monotonic() + _CONVERGE_TIMEOUT_S
    while True:
        held = dict(zip([s.region for s in stacks],
                        await asyncio.gather(*(_listing(client, s.service_url) for s in stacks)),
                        strict=True))  # fmt: skip
        if all(records == expected for records in held.values()):
            return True, held
        if time.monotonic() > deadline:
            return False, held
        await asyncio.sleep(0.2)  # polling interval of the convergence check


def _endpoints(stacks: Sequence[RegionStack]) -> list[AdminEndpoint]:
    return [
        AdminEndpoint(s.region, service, url)
        for s in stacks
        for service, url in s.admin_urls().items()
    ]


def _metric(scrapes: Sequence[Scrape], region: str, name: str, **labels: str) -> float:
    return total([s for s in scrapes if s.endpoint.region == region], name, labels) or 0.0


def _regions_table(
    stacks: Sequence[RegionStack],
    outcomes: Sequence[Outcome],
    held: Mapping[str, Records | None],
    scrapes: Sequence[Scrape],
) -> Table:
    table = Table(title="per region")
    for column in ("region", "records", "writes accepted", "writes refused (409)",
                   "replayed: applied", "stale", "dead-lettered"):  # fmt: skip
        table.add_column(column, justify="right" if column != "region" else "left")
    for stack in stacks:
        mine = [o for o in outcomes if o.op.region == stack.region]
        records = held.get(stack.region)
        events = "xr_replayer_events_total"
        table.add_row(
            stack.region,
            "unreachable" if records is None else str(len(records)),
            str(sum(1 for o in mine if o.version is not None)),
            str(sum(1 for o in mine if o.status == 409)),
            f"{_metric(scrapes, stack.region, events, outcome='applied'):.0f}",
            f"{_metric(scrapes, stack.region, events, outcome='stale'):.0f}",
            f"{_metric(scrapes, stack.region, events, outcome='dead_lettered'):.0f}",
        )
    return table


def _lag_table(regions: Sequence[str], scrapes: Sequence[Scrape]) -> Table:
    frame = build_frame(regions, None, scrapes)
    table = Table(title="replication lag (accepted → applied)")
    for column in ("origin → target", "events applied", "p50", "p99"):
        table.add_column(column, justify="left" if column.startswith("origin") else "right")
    for path in frame.paths:
        table.add_row(
            f"{path.origin} → {path.target}",
            "-" if path.applied_total is None else f"{path.applied_total:.0f}",
            _ms(path.lag_p50_s),
            _ms(path.lag_p99_s),
        )
    return table


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _conflicts_line(outcomes: Sequence[Outcome], scrapes: Sequence[Scrape]) -> str:
    by_key = {k: list(g) for k, g in itertools.groupby(
        sorted((o for o in outcomes if o.op.method == "PUT" and o.op.value["v"] == 2),
               key=lambda o: o.op.key), key=lambda o: o.op.key)}  # fmt: skip
    concurrent = sum(1 for ops in by_key.values() if len(ops) > 1)
    regions = {s.endpoint.region for s in scrapes}
    stale = sum(_metric(scrapes, r, "xr_replayer_events_total", outcome="stale") for r in regions)
    refused = sum(1 for o in outcomes if o.status == 409)
    return (
        f"conflicts resolved by last-writer-wins: {concurrent} keys written concurrently from "
        f"two regions; {stale:.0f} replayed writes were older than the stored version (stale, "
        f"not applied) and {refused} client writes were refused with 409"
    )


def _verdict(
    console: Console,
    converged: bool,
    expected: Records,
    outcomes: Sequence[Outcome],
    sent_s: float,
    settle_s: float,
) -> int:
    failed = sum(1 for o in outcomes if o.status is None or o.status >= 500)
    if converged and failed == 0:
        console.print(
            f"converged: every region holds the same {len(expected)} records, exactly what "
            f"last-writer-wins gives for {len(outcomes)} writes ({sent_s:.1f} s of writes, "
            f"converged {settle_s:.1f} s after the last one)",
            style="bold green",
        )
        return 0
    why = (
        f"{failed} writes failed" if failed else f"not converged after {_CONVERGE_TIMEOUT_S:.0f} s"
    )
    console.print(f"NOT converged: {why}; see the logs under the workdir", style="bold red")
    return 1
