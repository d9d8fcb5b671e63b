"""Collections replicate: creates, patches and deletes of a plain REST service converge.

The downstream service of every region is a real `collection_service` process that keeps no
versions and ignores `Xr-*` headers (tests/harness/collection_service.py); each region runs
bridge, broadcaster and replayer as real `xregion` processes (tests/harness/collection_stack.py).
The deployment is shared by the module; every test has its own xregion service (route prefix
and collection), so counts and metrics of one test are not mixed with another's:

| service   | route      | region-file extras              | test                           |
|-----------|------------|---------------------------------|--------------------------------|
| `items`   | `/items`   |                                 | concurrent creates             |
| `outage`  | `/outage`  |                                 | creates while a region is down |
| `created` | `/created` | `create_key = "json:id"`        | create, patch, delete          |
| `pairs`   | `/pairs`   |                                 | PATCH vs PUT, PATCH vs PATCH   |
| `ruled`   | `/ruled`   | `rules = { PATCH = "replace" }` | the rule override              |
| `crash`   | `/crash`   |                                 | replayer SIGKILL under load    |

The rules (POST, PATCH: `apply`, every event applied once, never skipped for a newer event of
its key; PUT, DELETE: `replace`, last writer wins) are what the tests check. A service whose
extras this build does not accept is left out of the region files, and its tests fail saying
so. Regions: A = us-east, B = eu-west, C = ap-south.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import pytest
import pytest_asyncio

from services.xregion.ops.scrape import parse_metrics
from tests.harness.collection_stack import (
    REGIONS,
    CollectionDeployment,
    metric_total,
    run_xregion,
)
from tests.harness.wait import wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="module"),
]

A, B, C = REGIONS
SERVICES: dict[str, dict[str, Any]] = {
    "items": {"routes": ["/items"]},
    "outage": {"routes": ["/outage"]},
    "created": {"routes": ["/created"], "create_key": "json:id"},
    "pairs": {"routes": ["/pairs"]},
    "ruled": {"routes": ["/ruled"], "rules": {"PATCH": "replace"}},
    "crash": {"routes": ["/crash"]},
}
EVENTS = "xr_replayer_events_total"
CONFLICTS = "xr_replayer_conflicts_total"
# Outcomes that end an event's handling (`retried` is one attempt; canaries are no events).
NOT_SETTLED = frozenset({"retried", "canary"})
SETTLE_TIMEOUT_S = 45.0
STATE_TIMEOUT_S = 10.0
PAUSE_TIMEOUT_S = 10.0

Items = dict[str, dict[str, Any]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def deployment(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[CollectionDeployment]:
    deployment = await CollectionDeployment.start(tmp_path_factory.mktemp("collections"), SERVICES)
    try:
        yield deployment
    finally:
        await deployment.stop()


# ---------------------------------------------------------------------- helpers


def require(deployment: CollectionDeployment, service: str) -> None:
    if service in deployment.unsupported:
        pytest.fail(deployment.unsupported[service])


async def holdings(deployment: CollectionDeployment, collection: str) -> dict[str, Items]:
    """Every region's items of `collection`, read from its own collection_service."""
    stacks = deployment.stacks
    found = await asyncio.gather(
        *(stacks[r].service.items(deployment.http, collection) for r in REGIONS)
    )
    return dict(zip(REGIONS, found, strict=True))


async def outcomes(
    deployment: CollectionDeployment, region: str, service: str
) -> dict[tuple[str, str], float]:
    """(origin, outcome) -> count of `xr_replayer_events_total` of `service` in `region`."""
    text = await deployment.stacks[region].replayer.metrics(deployment.http)
    counts: dict[tuple[str, str], float] = {}
    for sample in parse_metrics(text):
        if sample.name == EVENTS and sample.labels.get("service") == service:
            key = (sample.labels.get("origin", ""), sample.labels.get("outcome", ""))
            counts[key] = counts.get(key, 0.0) + sample.value
    return counts


async def outcome_count(
    deployment: CollectionDeployment, region: str, service: str, origin: str, outcome: str
) -> float:
    return (await outcomes(deployment, region, service)).get((origin, outcome), 0.0)


async def conflicts(
    deployment: CollectionDeployment, region: str, service: str, origin: str
) -> float:
    text = await deployment.stacks[region].replayer.metrics(deployment.http)
    labels = {"origin": origin, "service": service, "kind": "out_of_order"}
    return metric_total(text, CONFLICTS, labels)


async def settled(
    deployment: CollectionDeployment, region: str, service: str, origin: str
) -> float:
    """Events of `service` from `origin` whose handling ended in `region` (any outcome)."""
    counts = await outcomes(deployment, region, service)
    return sum(
        n for (o, outcome), n in counts.items() if o == origin and outcome not in NOT_SETTLED
    )


async def report(deployment: CollectionDeployment, collection: str, service: str) -> str:
    """What each region holds and how its replayer ended events: for failure messages."""
    held = await holdings(deployment, collection)
    lines = []
    for region in REGIONS:
        counts = await outcomes(deployment, region, service)
        shown = ", ".join(f"{o}/{k}={n:g}" for (o, k), n in sorted(counts.items()))
        lines.append(f"{region}: {len(held[region])} items; replayer {service}: {shown or '-'}")
    return "\n".join(lines)


async def wait_settled(
    deployment: CollectionDeployment,
    service: str,
    collection: str,
    expected: Mapping[tuple[str, str], float],
    timeout_s: float = SETTLE_TIMEOUT_S,
) -> None:
    """Until each (target, origin) replayer settled at least `expected[...]` events."""

    async def done() -> bool:
        for (target, origin), n in expected.items():
            if await settled(deployment, target, service, origin) < n:
                return False
        return True

    try:
        await wait_until(done, timeout_s, interval=0.1, message=f"{service} events settled")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{await report(deployment, collection, service)}") from None


async def wait_state(
    deployment: CollectionDeployment,
    collection: str,
    service: str,
    check: Callable[[dict[str, Items]], bool],
    what: str,
    timeout_s: float = STATE_TIMEOUT_S,
) -> dict[str, Items]:
    """Until `check(holdings)` holds; an AssertionError with every region's state if not."""

    async def ok() -> dict[str, Items] | None:
        held = await holdings(deployment, collection)
        return held if check(held) else None

    try:
        found = await wait_until(ok, timeout_s, interval=0.1, message=what)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{await report(deployment, collection, service)}") from None
    assert found is not None
    return found


def everywhere(
    held: Mapping[str, Items], item: str, test: Callable[[dict[str, Any]], bool]
) -> bool:
    return all(item in held[r] and test(held[r][item]) for r in REGIONS)


def expect_all(ids: Iterable[str]) -> Callable[[dict[str, Items]], bool]:
    wanted = set(ids)
    return lambda held: all(set(held[r]) == wanted for r in REGIONS)


async def write(
    deployment: CollectionDeployment,
    region: str,
    method: str,
    path: str,
    body: Mapping[str, Any] | None = None,
    expect: int = 200,
) -> str:
    """A client's write through `region`'s bridge; the `Xr-Event-Id` of its event."""
    url = deployment.stacks[region].bridge_url + path
    reply = await deployment.http.request(method, url, json=body)
    assert reply.status_code == expect, (
        f"{method} {path} via {region}: {reply.status_code} {reply.text}"
    )
    event_id: str | None = reply.headers.get("Xr-Event-Id")
    assert event_id, f"{method} {path} via {region}: no Xr-Event-Id (not replicated?)"
    return event_id


async def set_paused(
    deployment: CollectionDeployment, origin: str, target: str, paused: bool
) -> None:
    """`xregion pause|resume --target T --origin O`; until the origin's broadcaster obeys."""
    command = "pause" if paused else "resume"
    config = str(deployment.stacks[origin].config)
    code, out, err = await run_xregion(
        command, "--target", target, "--origin", origin, "--config", config
    )
    assert code == 0, f"xregion {command}: exit {code}\n{out}\n{err}"
    broadcaster = deployment.stacks[origin].broadcaster

    async def obeyed() -> bool:
        text = await broadcaster.metrics(deployment.http)
        value = metric_total(text, "xr_broadcaster_paused", {"target": target})
        return value == (1.0 if paused else 0.0)

    await wait_until(
        obeyed, PAUSE_TIMEOUT_S, interval=0.05, message=f"{origin} -> {target} {command}d"
    )


async def put_everywhere(
    deployment: CollectionDeployment, service: str, collection: str, item: str
) -> None:
    """PUT `{"base": 1}` through A and wait until every region holds it."""
    await write(deployment, A, "PUT", f"/{collection}/{item}", {"base": 1})
    await wait_state(
        deployment, collection, service,
        lambda held: everywhere(held, item, lambda v: v.get("base") == 1),
        f"{collection}/{item} created everywhere",
        timeout_s=SETTLE_TIMEOUT_S,
    )  # fmt: skip


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------------- tests


async def test_concurrent_creates_reach_every_region_once(deployment: CollectionDeployment) -> None:
    """60 creates per bridge, all at once, all to `/items`: every region holds the 180 items,
    each replayed create reached each service exactly once (by its Idempotency-Key)."""
    per_region = 60
    ids = {r: [f"{r}-{i:03d}" for i in range(per_region)] for r in REGIONS}

    async def create(region: str, item: str) -> tuple[str, str]:
        body = {"id": item, "origin": region}
        return region, await write(deployment, region, "POST", "/items", body, expect=201)

    made = await asyncio.gather(*(create(r, i) for r in REGIONS for i in ids[r]))
    event_ids: dict[str, list[str]] = {r: [] for r in REGIONS}
    for region, event_id in made:
        event_ids[region].append(event_id)

    expected = {(t, o): per_region for t in REGIONS for o in REGIONS if o != t}
    await wait_settled(deployment, "items", "items", expected)
    all_ids = [i for r in REGIONS for i in ids[r]]
    await wait_state(deployment, "items", "items", expect_all(all_ids), "180 items everywhere")

    for region in REGIONS:
        calls = await deployment.stacks[region].service.calls(deployment.http)
        seen = calls["by_idempotency_key"]
        replayed = [e for o in REGIONS if o != region for e in event_ids[o]]
        wrong = {e: seen.get(e, 0) for e in replayed if seen.get(e, 0) != 1}
        assert not wrong, f"{region}: replayed creates not called exactly once: {wrong}"
        local = [e for e in event_ids[region] if e in seen]
        assert not local, f"{region}: its own creates came back as replays: {local}"
        assert calls["by_request"].get("POST /items") == 3 * per_region, (
            region,
            calls["by_request"],
        )


async def test_creates_while_a_region_is_down_arrive_when_it_returns(
    deployment: CollectionDeployment,
) -> None:
    """C's NATS server is stopped while A and B take 30 creates each; once it is back every
    region holds all 60."""
    per_region = 30
    run = unique("b")
    ids = {r: [f"{run}-{r}-{i:02d}" for i in range(per_region)] for r in (A, B)}
    (server,) = [s.name for s in deployment.cluster.servers if s.cluster == C]
    await deployment.cluster.stop_server(server)
    try:
        await asyncio.gather(
            *(
                write(deployment, r, "POST", "/outage", {"id": i, "origin": r}, expect=201)
                for r in (A, B)
                for i in ids[r]
            )
        )
        # A and B have settled each other's creates while C was still down.
        await wait_settled(deployment, "outage", "outage", {(A, B): per_region, (B, A): per_region})
    finally:
        await deployment.cluster.start_server(server)
    await deployment.cluster.wait_ready(60)
    await deployment.wait_ready()

    await wait_settled(deployment, "outage", "outage", {(C, A): per_region, (C, B): per_region})
    all_ids = ids[A] + ids[B]
    await wait_state(deployment, "outage", "outage", expect_all(all_ids), "60 items everywhere")


async def test_create_patch_delete_in_quick_succession(deployment: CollectionDeployment) -> None:
    """With `create_key = "json:id"` a create and the PATCH and DELETE of its item are one
    key: replayed in order, deleted items are nowhere and patched ones have their patch.

    The paths out of A are paused while A takes the writes, so B and C get them all in one
    burst and handle them concurrently (only a shared key keeps an item's writes in order)."""
    require(deployment, "created")
    count = 20
    run = unique("c")
    gone = [f"{run}-gone-{i:02d}" for i in range(count)]
    kept = [f"{run}-kept-{i:02d}" for i in range(count)]

    async def create_patch_delete(item: str) -> None:
        await write(deployment, A, "POST", "/created", {"id": item, "v": 1}, expect=201)
        await write(deployment, A, "PATCH", f"/created/{item}", {"v": 2})
        await write(deployment, A, "DELETE", f"/created/{item}", expect=204)

    async def create_patch(item: str) -> None:
        await write(deployment, A, "POST", "/created", {"id": item, "v": 1}, expect=201)
        await write(deployment, A, "PATCH", f"/created/{item}", {"patched": True})

    expected = {(B, A): await settled(deployment, B, "created", A) + 5 * count}
    expected[C, A] = await settled(deployment, C, "created", A) + 5 * count
    for target in (B, C):
        await set_paused(deployment, A, target, True)
    try:
        await asyncio.gather(
            *(create_patch_delete(i) for i in gone), *(create_patch(i) for i in kept)
        )
    finally:
        for target in (B, C):
            await set_paused(deployment, A, target, False)

    await wait_settled(deployment, "created", "created", expected)
    held = await wait_state(
        deployment, "created", "created", expect_all(kept), f"the {count} kept items everywhere"
    )
    for region in REGIONS:
        unpatched = [i for i in kept if held[region][i].get("patched") is not True]
        assert not unpatched, f"{region}: items without their patch: {unpatched}"
        counts = await outcomes(deployment, region, "created")
        lettered = {k: n for k, n in counts.items() if k[1] == "dead_lettered" and n}
        assert not lettered, f"{region}: dead letters {lettered}"


async def test_changes_that_overtake_their_create_from_another_region(
    deployment: CollectionDeployment,
) -> None:
    """B patches and deletes items A created, and both reach C before A's creates (A -> C
    paused): C answers 404 to both. The patch waits (retried) until its create arrives; the
    delete is done (absent is what it asks for) and, newer than the create, makes it stale.
    C ends like A and B: the patched item with its patch, the deleted one nowhere."""
    require(deployment, "created")
    run = unique("o")
    patched, deleted = f"{run}-patched", f"{run}-deleted"
    retried_before = await outcome_count(deployment, C, "created", B, "retried")
    settled_before = await settled(deployment, C, "created", B)
    await set_paused(deployment, A, C, True)
    try:
        for item in (patched, deleted):
            await write(deployment, A, "POST", "/created", {"id": item, "v": 1}, expect=201)
        await wait_state(
            deployment, "created", "created",
            lambda held: patched in held[B] and deleted in held[B], "A's creates in B",
            timeout_s=SETTLE_TIMEOUT_S,
        )  # fmt: skip
        await write(deployment, B, "PATCH", f"/created/{patched}", {"p": True})
        await write(deployment, B, "DELETE", f"/created/{deleted}", expect=204)

        async def overtaken() -> bool:
            retried = await outcome_count(deployment, C, "created", B, "retried")
            return (
                retried > retried_before
                and await settled(deployment, C, "created", B) >= settled_before + 1
            )

        try:
            await wait_until(overtaken, SETTLE_TIMEOUT_S, interval=0.1,
                             message="C retried B's patch and settled B's delete")  # fmt: skip
        except TimeoutError as exc:
            held = await report(deployment, "created", "created")
            raise AssertionError(f"{exc}\n{held}") from None
    finally:
        await set_paused(deployment, A, C, False)

    def converged(held: dict[str, Items]) -> bool:
        return everywhere(held, patched, lambda v: v.get("p") is True) and all(
            deleted not in held[r] for r in REGIONS
        )

    await wait_state(deployment, "created", "created", converged,
                     "the patch everywhere and the deleted item nowhere",
                     timeout_s=SETTLE_TIMEOUT_S)  # fmt: skip
    lettered = await outcome_count(deployment, C, "created", B, "dead_lettered")
    assert lettered == 0, await report(deployment, "created", "created")


async def test_patch_older_than_an_applied_put_is_stale(deployment: CollectionDeployment) -> None:
    """C gets B's PUT first, then A's older PATCH (A -> C paused): the PATCH is stale there and
    C holds the PUT's body, as A and B do."""
    item = unique("d")
    await put_everywhere(deployment, "pairs", "pairs", item)
    await set_paused(deployment, A, C, True)
    try:
        b_from_a = await settled(deployment, B, "pairs", A)
        c_from_b = await settled(deployment, C, "pairs", B)
        await write(deployment, A, "PATCH", f"/pairs/{item}", {"patched": A})
        await wait_settled(deployment, "pairs", "pairs", {(B, A): b_from_a + 1})
        await write(deployment, B, "PUT", f"/pairs/{item}", {"put": B})
        await wait_settled(deployment, "pairs", "pairs", {(C, B): c_from_b + 1})
        c_from_a = await settled(deployment, C, "pairs", A)
        stale_before = await outcome_count(deployment, C, "pairs", A, "stale")
    finally:
        await set_paused(deployment, A, C, False)

    await wait_settled(deployment, "pairs", "pairs", {(C, A): c_from_a + 1})
    put_body = {"id": item, "put": B}
    held = await wait_state(
        deployment, "pairs", "pairs",
        lambda h: everywhere(h, item, lambda v: v == put_body),
        f"{item} is the PUT's body everywhere",
    )  # fmt: skip
    assert held[C][item] == put_body
    stale_after = await outcome_count(deployment, C, "pairs", A, "stale")
    assert stale_after == stale_before + 1, await report(deployment, "pairs", "pairs")


async def test_concurrent_patches_are_both_applied(deployment: CollectionDeployment) -> None:
    """A and B patch one item; C gets B's newer patch first, then A's older one (A -> C
    paused): both fields everywhere, and C counts an out-of-order conflict."""
    item = unique("e")
    await put_everywhere(deployment, "pairs", "pairs", item)
    await set_paused(deployment, A, C, True)
    try:
        b_from_a = await settled(deployment, B, "pairs", A)
        c_from_b = await settled(deployment, C, "pairs", B)
        await write(deployment, A, "PATCH", f"/pairs/{item}", {"a": 1})
        await write(deployment, B, "PATCH", f"/pairs/{item}", {"b": 2})
        await wait_settled(
            deployment, "pairs", "pairs", {(C, B): c_from_b + 1, (B, A): b_from_a + 1}
        )
        c_from_a = await settled(deployment, C, "pairs", A)
        conflicts_before = await conflicts(deployment, C, "pairs", A)
    finally:
        await set_paused(deployment, A, C, False)

    await wait_settled(deployment, "pairs", "pairs", {(C, A): c_from_a + 1})
    await wait_state(
        deployment, "pairs", "pairs",
        lambda h: everywhere(h, item, lambda v: v.get("a") == 1 and v.get("b") == 2),
        f"{item} has both patches everywhere",
    )  # fmt: skip
    assert await conflicts(deployment, C, "pairs", A) >= conflicts_before + 1, (
        f"{C}: no {CONFLICTS}{{kind=out_of_order}} for A's older patch\n"
        + await report(deployment, "pairs", "pairs")
    )


async def test_rule_override_makes_an_older_patch_stale(deployment: CollectionDeployment) -> None:
    """`rules = { PATCH = "replace" }`: in the shape of the test above A's older patch is
    stale in C (last writer wins), so C has B's field and not A's."""
    require(deployment, "ruled")
    item = unique("f")
    await put_everywhere(deployment, "ruled", "ruled", item)
    await set_paused(deployment, A, C, True)
    try:
        c_from_b = await settled(deployment, C, "ruled", B)
        await write(deployment, A, "PATCH", f"/ruled/{item}", {"a": 1})
        await write(deployment, B, "PATCH", f"/ruled/{item}", {"b": 2})
        await wait_settled(deployment, "ruled", "ruled", {(C, B): c_from_b + 1})
        c_from_a = await settled(deployment, C, "ruled", A)
        stale_before = await outcome_count(deployment, C, "ruled", A, "stale")
    finally:
        await set_paused(deployment, A, C, False)

    await wait_settled(deployment, "ruled", "ruled", {(C, A): c_from_a + 1})
    held = await holdings(deployment, "ruled")
    assert held[C][item].get("b") == 2, held[C][item]
    assert "a" not in held[C][item], (
        f"{C} applied A's older PATCH under rule replace: {held[C][item]}"
    )
    assert await outcome_count(deployment, C, "ruled", A, "stale") == stale_before + 1
    assert await conflicts(deployment, C, "ruled", A) == 0


async def test_replayer_killed_under_load_every_item_once_everywhere(
    deployment: CollectionDeployment,
) -> None:
    """C's replayer is SIGKILLed while creates from A and B stream in; once restarted, every
    region holds every item and nothing was dead-lettered."""
    per_region = 80
    run = unique("g")
    ids = {r: [f"{run}-{r}-{i:02d}" for i in range(per_region)] for r in (A, B)}
    c_service = deployment.stacks[C].service
    replayer = deployment.stacks[C].replayer

    async def some_replayed() -> bool:
        calls = await c_service.calls(deployment.http)
        return calls["by_request"].get("POST /crash", 0) >= 10

    sending = asyncio.ensure_future(
        asyncio.gather(
            *(
                write(deployment, r, "POST", "/crash", {"id": i, "origin": r}, expect=201)
                for r in (A, B)
                for i in ids[r]
            )
        )
    )
    try:
        await wait_until(some_replayed, SETTLE_TIMEOUT_S, message="C replaying creates")
        replayer.kill()
        await replayer.wait_dead()
        await replayer.spawn()
    finally:
        event_ids = set(await sending)
    await deployment.wait_ready()
    # The restarted replayer's counters start at 0: wait until nothing is owed to C instead.
    await wait_until(
        lambda: deployment.drained(C), SETTLE_TIMEOUT_S, interval=0.1, message=f"{C} drained"
    )
    await wait_settled(deployment, "crash", "crash", {(A, B): per_region, (B, A): per_region})

    all_ids = ids[A] + ids[B]
    await wait_state(deployment, "crash", "crash", expect_all(all_ids), "160 items everywhere")
    for region in REGIONS:
        counts = await outcomes(deployment, region, "crash")
        lettered = {k: n for k, n in counts.items() if k[1] == "dead_lettered" and n}
        assert not lettered, f"{region}: dead letters {lettered}"
    # A call repeated after the kill carries the event's Idempotency-Key (the service counts
    # by it) and is counted `repeated` by the restarted replayer; nothing is called 3 times.
    # The service is shared with the module's other tests: count this test's events only.
    calls = {
        key: n
        for key, n in (await c_service.calls(deployment.http))["by_idempotency_key"].items()
        if key in event_ids
    }
    assert set(calls) == event_ids, f"{len(event_ids - set(calls))} events never called in {C}"
    twice = {key for key, n in calls.items() if n > 1}
    thrice = {key: n for key, n in calls.items() if n > 2}
    assert not thrice, f"called more than twice in {C}: {thrice}"
    repeated = sum(
        n
        for (_, outcome), n in (await outcomes(deployment, C, "crash")).items()
        if outcome == "repeated"
    )
    assert len(twice) <= repeated, f"{len(twice)} keys called twice, {repeated} counted"
