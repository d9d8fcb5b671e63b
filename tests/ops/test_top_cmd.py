"""`xregion top --once` against a running deployment under traffic: every panel, live rates,
lag and canary ages read from the real processes' metrics, and every endpoint up."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest

from tests.harness.wait import wait_until
from tests.ops.stack import (
    REGIONS,
    SERVICES,
    LocalDeployment,
    RegionStack,
    run_xregion,
    write_state_file,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]

WRITES_PER_S = 20
PATH_COLUMNS = ("fwd/s", "applied/s", "applied", "lag p50", "lag p99", "canary age", "backlog")


@contextlib.asynccontextmanager
async def traffic(stack: RegionStack) -> AsyncIterator[list[int]]:
    """Writes through the region's bridge at a steady rate while the block runs; yields the
    list of response statuses so far."""
    statuses: list[int] = []

    async def write(http: httpx.AsyncClient) -> None:
        for n in itertools.count():
            reply = await http.put(f"{stack.bridge_url}/catalog/items/{n % 50}", json={"n": n})
            statuses.append(reply.status_code)
            await asyncio.sleep(1 / WRITES_PER_S)  # pacing of the traffic, not a wait

    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        writer = asyncio.get_running_loop().create_task(write(http), name="ops-traffic")
        try:
            yield statuses
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
    assert statuses, "no write was answered"
    assert set(statuses) == {200}, statuses


def replayed(statuses: list[int], targets: list[RegionStack]) -> bool:
    assert set(statuses) <= {200}, f"the bridge answered {statuses}"
    return all(t.upstream.calls >= 5 for t in targets)


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    """Cells of the rendered table rows whose first cell starts with `first_cell`."""
    rows = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0].startswith(first_cell):
            rows.append(cells)
    return rows


def path_cells(text: str, origin: str, target: str) -> dict[str, str]:
    (cells,) = table_rows(text, f"{origin} → {target}")
    return dict(zip(PATH_COLUMNS, cells[1:], strict=False)) | {"state": cells[-1]}


def number(cell: str) -> float:
    return float(cell.rstrip("*").removesuffix("ms").removesuffix("s").replace(",", ""))


async def test_top_once_shows_live_rates_lag_and_health(deployment: LocalDeployment) -> None:
    origin = deployment.stacks["us-east"]
    targets = [deployment.stacks[r] for r in REGIONS if r != "us-east"]
    async with traffic(origin) as statuses:
        await wait_until(
            lambda: replayed(statuses, targets), 30, message="writes replayed in every target"
        )
        code, out, err = await run_xregion("top", "--once", *_configs(deployment))
    assert code == 0, err
    for title in ("Replication paths", "Regions", "Health", "9/9 endpoints up"):
        assert title in out, out
    for target in targets:
        cells = path_cells(out, "us-east", target.region)
        assert number(cells["fwd/s"]) > 0, out
        assert number(cells["applied/s"]) > 0, out
        assert number(cells["applied"]) >= 5, out
        assert number(cells["lag p50"]) > 0, out
        assert number(cells["lag p99"]) >= number(cells["lag p50"]), out
        assert cells["state"] == "ok", out
    for source, dest in itertools.permutations(REGIONS, 2):  # canaries flow on every path
        assert path_cells(out, source, dest)["canary age"] != "-", out
    health = [row for region in REGIONS for row in table_rows(out, region) if row[1] in SERVICES]
    assert len(health) == 9, out
    assert all(row[3:5] == ["up", "ok"] for row in health), out


async def test_top_once_from_the_state_file_marks_a_dead_endpoint_down(
    deployment: LocalDeployment,
) -> None:
    stacks = list(deployment.stacks.values())
    state = write_state_file(deployment.workdir / "top-state.json", deployment.cluster, stacks)
    text = state.read_text().replace(stacks[0].admin("bridge"), "http://127.0.0.1:9")
    state.write_text(text)  # port 9 (discard): nothing listens there
    code, out, err = await run_xregion(
        "top", "--once", "--interval", "0.5", "--state-file", str(state)
    )
    assert code == 0, err
    assert "8/9 endpoints up" in out, out
    (down,) = [row for row in table_rows(out, stacks[0].region) if "http://127.0.0.1:9" in row]
    assert down[3] == "down", out


FRAME_KEYS = ["at", "window_s", "endpoints_up", "endpoints", "paths", "regions", "health"]
PATH_KEYS = [
    "origin", "target", "forwarded_per_s", "applied_per_s", "applied_total", "lag_p50_s",
    "lag_p99_s", "lag_source", "canary_age_s", "backlog", "state",
]  # fmt: skip
REGION_KEYS = [
    "region", "replay_backlog", "dlq", "upstream_retries_per_s", "retried_per_s", "outbox",
    "conflicts", "repeated",
]  # fmt: skip
HEALTH_KEYS = ["region", "service", "url", "up", "ready", "error"]


async def test_top_once_json_matches_the_deployment(deployment: LocalDeployment) -> None:
    origin = deployment.stacks["us-east"]
    targets = [deployment.stacks[r] for r in REGIONS if r != "us-east"]
    async with traffic(origin) as statuses:
        await wait_until(
            lambda: replayed(statuses, targets), 30, message="writes replayed in every target"
        )
        code, out, err = await run_xregion(
            "top", "--once", "--output", "json", *_configs(deployment)
        )
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc) == FRAME_KEYS
    assert datetime.fromisoformat(doc["at"]) <= datetime.now(UTC)
    assert doc["window_s"] > 0
    assert (doc["endpoints_up"], doc["endpoints"]) == (9, 9)
    paths = {(p["origin"], p["target"]): p for p in doc["paths"]}
    assert list(paths) == list(itertools.permutations(REGIONS, 2))
    for path in doc["paths"]:
        assert list(path) == PATH_KEYS
        assert path["state"] == "ok", path
        assert isinstance(path["backlog"], int), path
        assert isinstance(path["canary_age_s"], float), path  # canaries flow on every path
    for target in targets:
        path = paths[("us-east", target.region)]
        assert path["forwarded_per_s"] > 0, path
        assert path["applied_per_s"] > 0, path
        assert path["applied_total"] >= 5, path
        assert 0 < path["lag_p50_s"] <= path["lag_p99_s"], path
    assert [r["region"] for r in doc["regions"]] == list(REGIONS)
    for region in doc["regions"]:
        assert list(region) == REGION_KEYS
        assert isinstance(region["replay_backlog"], int), region
    assert len(doc["health"]) == 9
    for row in doc["health"]:
        assert list(row) == HEALTH_KEYS
        assert (row["up"], row["ready"], row["error"]) == (True, "ok", None), row
        assert row["url"] == deployment.stacks[row["region"]].admin(row["service"])


def _configs(deployment: LocalDeployment) -> list[str]:
    return [arg for config in deployment.configs() for arg in ("--config", config)]
