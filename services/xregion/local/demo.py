"""`xregion demo`'s traffic and verdict, against the stacks `up` started.

Three phases of writes through the regions' bridges to the demo service, to its configs
(`replace` writes: last writer wins) and its items (`apply` creates and patches, `replace`
deletes):

1. every config key is created through one region, and every item (client-assigned ids)
   through one region (round robin over the regions);
2. the conflict keys are written at the same moment through two different regions, and the
   other keys are updated through a region other than the one that created them; some items
   are patched through another region, a few of them at the same moment through two regions
   (different fields, so both patches must survive);
3. some keys are deleted, through yet another region, and some items through the region that
   created them.

Phases 2 and 3 start once every region holds the items written so far: a client patches an
item it can see, and xregion keeps one key's order per origin, not across origins (a patch
that reached a region before the item's create from another region would get 404 there and
be dead-lettered).

Then it waits until every region's demo service holds the same records and items, and checks
them: for each config key, the accepted write with the highest version (`Xr-Hlc`, then
`Xr-Event-Id`), a delete leaving no record; for the items, every accepted create with every
accepted patch merged in, minus the accepted deletes. It prints records and items per region,
replication lag p50/p99 per region pair (from the replayers' `xr_replayer_lag_seconds`
histograms), the conflicts resolved or applied out of order, and a verdict; the exit code is 0
only when every region converged on exactly the expected data and every item write was
accepted.

The plan and the expected state are pure functions; the IO is `run_demo_traffic`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from services.xregion.local.stack import RegionStack
from services.xregion.ops.dashboard import build_frame, total
from services.xregion.ops.deployment import AdminEndpoint
from services.xregion.ops.scrape import Scrape, admin_client, scrape_all

__all__ = [
    "Op",
    "Outcome",
    "expected_items",
    "expected_state",
    "plan_traffic",
    "run_demo_traffic",
]

KEYS = 300
CONFLICT_KEYS = 60
DELETED_KEYS = 30
ITEMS = 120
PATCHED_ITEMS = 48
CONCURRENT_PATCHES = 12
DELETED_ITEMS = 24
_CONCURRENCY = 32
_CONVERGE_TIMEOUT_S = 45.0
_REPLICATED_TIMEOUT_S = 20.0
_SERVICES = 8

Version = tuple[str, str]
Records = dict[str, tuple[Any, Version]]  # "service/property" -> (value, version)
Items = dict[str, tuple[dict[str, Any], Version]]  # id -> (fields, version of its create)
Resource = Literal["configs", "items"]


@dataclass(frozen=True, slots=True)
class Op:
    region: str
    method: str  # configs: PUT | DELETE; items: POST | PATCH | DELETE
    key: str  # configs: "service/property"; items: the item id
    value: Any = None
    resource: Resource = "configs"

    @property
    def path(self) -> str:
        if self.method == "POST":
            return f"/{self.resource}"  # a create names its item in the body
        return f"/{self.resource}/{self.key}"


@dataclass(frozen=True, slots=True)
class Outcome:
    op: Op
    status: int | None  # None: no answer (connection error, timeout)
    version: Version | None  # the answer's version of an accepted write (an item's: its create's)


@dataclass(frozen=True, slots=True)
class Held:
    """What one region's demo service holds."""

    records: Records
    items: Items


def plan_traffic(
    regions: Sequence[str],
    *,
    keys: int = KEYS,
    conflicts: int = CONFLICT_KEYS,
    deletes: int = DELETED_KEYS,
    items: int = ITEMS,
    patched: int = PATCHED_ITEMS,
    concurrent_patches: int = CONCURRENT_PATCHES,
    item_deletes: int = DELETED_ITEMS,
) -> list[list[Op]]:
    """The writes, phase by phase; the ops within a phase run concurrently."""
    config_phases = _config_plan(regions, keys, conflicts, deletes)
    item_phases = _item_plan(regions, items, patched, concurrent_patches, item_deletes)
    return [c + i for c, i in zip(config_phases, item_phases, strict=True)]


def _config_plan(regions: Sequence[str], keys: int, conflicts: int, deletes: int) -> list[list[Op]]:
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


def _item_plan(
    regions: Sequence[str], items: int, patched: int, concurrent: int, deletes: int
) -> list[list[Op]]:
    """Item k is created through region k mod n, patched (k < `patched`) through the next
    region, and (k < `concurrent`) at the same moment through the one after that, in another
    field; every (items / deletes)-th item is deleted through the region that created it."""
    n = len(regions)
    ids = [f"item-{k:04d}" for k in range(items)]
    creates = [Op(regions[k % n], "POST", i, {"id": i, "name": f"item {k}", "by": regions[k % n]},
                  "items") for k, i in enumerate(ids)]  # fmt: skip
    patches: list[Op] = []
    for k in range(min(patched, items)):
        patches.append(Op(regions[(k + 1) % n], "PATCH", ids[k], {"size": k % 7 + 1}, "items"))
        if k < concurrent and n > 1:
            other = regions[(k + 2) % n] if n > 2 else regions[k % n]
            patches.append(Op(other, "PATCH", ids[k], {"color": f"c{k % 5}"}, "items"))
    step = items // deletes if deletes else 0
    removals = [Op(regions[k % n], "DELETE", ids[k], resource="items")
                for k in range(step - 1, items, step)] if step else []  # fmt: skip
    return [creates, patches, removals]


def expected_state(outcomes: Sequence[Outcome]) -> Records:
    """What every region must hold of the configs: per key, the accepted write with the
    highest version."""
    winners: dict[str, Outcome] = {}
    for outcome in outcomes:
        if outcome.version is None or outcome.op.resource != "configs":
            continue
        best = winners.get(outcome.op.key)
        if best is None or (best.version is not None and outcome.version > best.version):
            winners[outcome.op.key] = outcome
    return {
        key: (o.op.value, o.version)
        for key, o in winners.items()
        if o.op.method == "PUT" and o.version is not None
    }


def expected_items(outcomes: Sequence[Outcome]) -> Items:
    """What every region must hold of the items: every accepted create with every accepted
    patch merged in, minus the accepted deletes. `outcomes` are in phase order; within a
    phase an item has one create, or patches of different fields, or one delete."""
    items: Items = {}
    for o in outcomes:
        if o.version is None or o.op.resource != "items":
            continue
        if o.op.method == "POST":
            items[o.op.key] = ({k: v for k, v in o.op.value.items() if k != "id"}, o.version)
        elif o.op.method == "PATCH" and o.op.key in items:
            fields, version = items[o.op.key]
            items[o.op.key] = ({**fields, **o.op.value}, version)
        elif o.op.method == "DELETE":
            items.pop(o.op.key, None)
    return items


async def run_demo_traffic(stacks: Sequence[RegionStack], console: Console) -> int:
    regions = [s.region for s in stacks]
    phases = plan_traffic(regions)
    bridges = {s.region: s.bridge_url for s in stacks}
    started = time.monotonic()
    async with httpx.AsyncClient(
        timeout=10.0, limits=httpx.Limits(max_connections=_CONCURRENCY), trust_env=False
    ) as client:
        outcomes = await _send_all(client, bridges, stacks, phases, console)
        sent_s = time.monotonic() - started
        console.print(f"[green]✓[/] {len(outcomes)} writes sent through {len(bridges)} bridges "
                      f"[dim]({sent_s:.1f} s)[/]")  # fmt: skip
        expected = Held(expected_state(outcomes), expected_items(outcomes))
        with console.status("waiting for every region to converge …"):
            converged, held = await _converge(
                client, stacks, lambda h: h == expected, _CONVERGE_TIMEOUT_S
            )
    settle_s = time.monotonic() - started - sent_s
    async with admin_client(2.0) as admin:
        scrapes = await scrape_all(admin, _endpoints(stacks))
    console.print(_regions_table(stacks, outcomes, held, scrapes))
    console.print(_lag_table(regions, scrapes))
    console.print(_conflicts_line(outcomes, scrapes))
    return _verdict(console, converged, expected, held, outcomes, sent_s, settle_s)


async def _send_all(
    client: httpx.AsyncClient,
    bridges: Mapping[str, str],
    stacks: Sequence[RegionStack],
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

        for i, phase in enumerate(phases):
            if i:
                # On a timeout the writes go on: the verdict reports what did not arrive.
                await _converge(
                    client, stacks, _holds(expected_items(outcomes)), _REPLICATED_TIMEOUT_S
                )
            outcomes += await asyncio.gather(*(one(op) for op in phase))
    return outcomes


def _holds(items: Items) -> Callable[[Held], bool]:
    return lambda held: held.items == items


async def _send(client: httpx.AsyncClient, bridge: str, op: Op) -> Outcome:
    body = None if op.method == "DELETE" else op.value
    try:
        reply = await client.request(op.method, bridge + op.path, json=body)
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


async def _listing(client: httpx.AsyncClient, service: str) -> Held | None:
    try:
        configs, items = await asyncio.gather(
            client.get(f"{service}/configs"), client.get(f"{service}/items")
        )
        configs.raise_for_status()
        items.raise_for_status()
        records, collection = configs.json()["configs"], items.json()["items"]
    except (httpx.HTTPError, ValueError):
        return None
    return Held(
        {f"{c['service']}/{c['property']}": (c["value"], _version(c["version"])) for c in records},
        {i["id"]: (i["fields"], _version(i["version"])) for i in collection},
    )


def _version(version: Mapping[str, str]) -> Version:
    return (version["hlc"], version["event_id"])


async def _converge(
    client: httpx.AsyncClient,
    stacks: Sequence[RegionStack],
    done: Callable[[Held], bool],
    timeout_s: float,
) -> tuple[bool, dict[str, Held | None]]:
    """Poll every region's demo service until `done` holds for each, or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = dict(zip([s.region for s in stacks],
                        await asyncio.gather(*(_listing(client, s.service_url) for s in stacks)),
                        strict=True))  # fmt: skip
        if all(h is not None and done(h) for h in held.values()):
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
    held: Mapping[str, Held | None],
    scrapes: Sequence[Scrape],
) -> Table:
    table = Table(title="per region")
    for column in ("region", "records", "items", "writes accepted", "writes refused (409)",
                   "replayed: applied", "stale", "dead-lettered"):  # fmt: skip
        table.add_column(column, justify="right" if column != "region" else "left")
    for stack in stacks:
        mine = [o for o in outcomes if o.op.region == stack.region]
        state = held.get(stack.region)
        events = "xr_replayer_events_total"
        table.add_row(
            stack.region,
            "unreachable" if state is None else str(len(state.records)),
            "unreachable" if state is None else str(len(state.items)),
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
    ops = [o.op for o in outcomes]
    concurrent = _written_twice(
        op for op in ops if op.resource == "configs" and op.method == "PUT" and op.value["v"] == 2
    )
    patched = _written_twice(op for op in ops if op.method == "PATCH")
    regions = {s.endpoint.region for s in scrapes}
    stale = sum(_metric(scrapes, r, "xr_replayer_events_total", outcome="stale") for r in regions)
    out_of_order = sum(_metric(scrapes, r, "xr_replayer_conflicts_total") for r in regions)
    refused = sum(1 for o in outcomes if o.status == 409)
    return (
        f"conflicts resolved by last-writer-wins: {concurrent} keys written concurrently from "
        f"two regions; {stale:.0f} replayed writes were older than the stored version (stale, "
        f"not applied) and {refused} client writes were refused with 409\n"
        f"conflicts applied: {patched} items patched concurrently from two regions; "
        f"{out_of_order:.0f} replayed patches came after a newer patch of their item "
        f"(xr_replayer_conflicts_total), applied all the same"
    )


def _written_twice(ops: Iterable[Op]) -> int:
    """Keys that more than one of `ops` writes (the plan's writes from two regions at once)."""
    return sum(1 for n in Counter(op.key for op in ops).values() if n > 1)


def _verdict(
    console: Console,
    converged: bool,
    expected: Held,
    held: Mapping[str, Held | None],
    outcomes: Sequence[Outcome],
    sent_s: float,
    settle_s: float,
) -> int:
    failed = sum(1 for o in outcomes if o.status is None or o.status >= 500)
    # Every item write of the plan is valid when sent: a refusal means one did not happen.
    refused = sum(1 for o in outcomes if o.op.resource == "items" and o.version is None)
    if converged and failed == refused == 0:
        items = Counter(o.op.method for o in outcomes if o.op.resource == "items")
        configs = sum(1 for o in outcomes if o.op.resource == "configs")
        console.print(
            f"converged: every region holds the same {len(expected.records)} records, exactly "
            f"what last-writer-wins gives for {configs} writes, and the same "
            f"{len(expected.items)} items: {items['POST']} created, {items['PATCH']} patches "
            f"all applied, {items['DELETE']} deleted ({sent_s:.1f} s of writes, converged "
            f"{settle_s:.1f} s after the last one)",
            style="bold green",
        )
        return 0
    if failed or refused:
        why = f"{failed} writes failed, {refused} item writes refused"
    else:
        why = f"not converged after {_CONVERGE_TIMEOUT_S:.0f} s ({_differences(expected, held)})"
    console.print(f"NOT converged: {why}; see the logs under the workdir", style="bold red")
    return 1


def _differences(expected: Held, held: Mapping[str, Held | None]) -> str:
    """What differs, per region: records and items missing, extra or with other contents."""
    parts = []
    for region, state in held.items():
        if state is None:
            parts.append(f"{region}: unreachable")
            continue
        for name, want, have in (("records", expected.records, state.records),
                                 ("items", expected.items, state.items)):  # fmt: skip
            if want != have:
                parts.append(f"{region}: {name} {_diff(want, have)}")
    return "; ".join(parts)


def _diff(want: Mapping[str, object], have: Mapping[str, object]) -> str:
    missing, extra = want.keys() - have.keys(), have.keys() - want.keys()
    other = sum(1 for k in want.keys() & have.keys() if want[k] != have[k])
    return f"{len(missing)} missing, {len(extra)} extra, {other} different"
