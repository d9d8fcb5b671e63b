"""`xregion status` against a running deployment: one connection to one region's NATS finds
every instance of every region (the services API requests cross the gateways), and every
path's pause switch and backlog; its JSON, its table piped to a file, a paused path."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.harness.wait import wait_until
from tests.ops.stack import (
    REGIONS,
    SERVICES,
    LocalDeployment,
    run_piped,
    run_xregion,
    write_state_file,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]

INSTANCE_KEYS = [
    "region", "service", "instance", "version", "started", "uptime_s", "health", "admin_url",
    "metadata",
]  # fmt: skip
PATH_KEYS = ["origin", "target", "state", "since", "by", "error", "backlog", "forwarding"]
HEADERS = ("region", "service", "instance", "version", "uptime", "health", "admin")
PATH_HEADERS = ("origin → target", "switch", "since", "by", "backlog", "forwarding")


async def status_json(deployment: LocalDeployment, *flags: str) -> dict[str, Any]:
    config = str(deployment.stacks["us-east"].config)
    code, out, err = await run_xregion(
        "status", "--config", config, "--timeout", "1.5", *(flags or ("--output", "json"))
    )
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def path_of(doc: dict[str, Any], origin: str, target: str) -> dict[str, Any]:
    paths: list[dict[str, Any]] = doc["paths"]
    (path,) = [p for p in paths if (p["origin"], p["target"]) == (origin, target)]
    return path


async def test_status_finds_all_nine_instances_through_one_region(
    deployment: LocalDeployment,
) -> None:
    doc = await status_json(deployment)
    assert list(doc) == ["instances", "paths"]
    rows = doc["instances"]
    found = sorted((row["region"], row["service"]) for row in rows)
    assert found == sorted(itertools.product(REGIONS, SERVICES))
    assert len({row["instance"] for row in rows}) == 9
    for row in rows:
        assert list(row) == INSTANCE_KEYS
        stack = deployment.stacks[row["region"]]
        assert row["admin_url"] == stack.admin(row["service"])
        assert row["health"] == "ok", row
        assert isinstance(row["uptime_s"], float)
        assert row["uptime_s"] > 0
        assert datetime.fromisoformat(row["started"]) < datetime.now(UTC)
        assert row["started"].endswith("Z")
        assert row["version"]
        assert row["metadata"]["region"] == row["region"]


async def test_status_json_lists_every_path_running_with_its_backlog(
    deployment: LocalDeployment,
) -> None:
    doc = await status_json(deployment)
    assert [(p["origin"], p["target"]) for p in doc["paths"]] == list(
        itertools.permutations(REGIONS, 2)
    )
    for path in doc["paths"]:
        assert list(path) == PATH_KEYS
        assert (path["state"], path["since"], path["by"], path["error"]) == (
            "running", None, None, None
        ), path  # fmt: skip
        assert isinstance(path["backlog"], int), path
        assert path["forwarding"] == "ok", path


async def test_status_json_flag_is_a_deprecated_alias(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks["eu-west"].config)
    code, out, err = await run_xregion("status", "--config", config, "--json", "--timeout", "1.5")
    assert code == 0, err
    assert "--json is deprecated: use --output json" in err
    doc = json.loads(out)
    assert len(doc["instances"]) == 9
    assert len(doc["paths"]) == 6


async def test_status_table_from_the_state_file_of_up(deployment: LocalDeployment) -> None:
    # The state file lists ap-south first: status connects there and still sees every region.
    stacks = [deployment.stacks[r] for r in reversed(REGIONS)]
    state = write_state_file(deployment.workdir / "state.json", deployment.cluster, stacks)
    code, out, err = await run_xregion("status", "--state-file", str(state), "--timeout", "1.5")
    assert code == 0, err
    assert "xregion instances: 9 in 3 regions" in out
    assert "replication paths: 0 paused" in out
    lines = [line for line in out.splitlines() if "│" in line]
    for region, service in itertools.product(REGIONS, SERVICES):
        assert any(f" {region} " in line and f" {service} " in line for line in lines), out
    assert sum(" ok " in line for line in lines if "→" not in line) == 9  # instances' health
    for origin, target in itertools.permutations(REGIONS, 2):
        assert any(f" {origin} → {target} " in line and " running " in line for line in lines)


async def test_status_piped_to_a_file_prints_whole_columns(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks["us-east"].config)
    code, out, err = await run_piped("status", "--config", config, "--timeout", "1.5")
    assert code == 0, err
    assert "…" not in out, out
    assert "\x1b[" not in out, "no colour codes in a file"
    header = next(line for line in out.splitlines() if " instance " in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == list(HEADERS)
    paths_header = next(line for line in out.splitlines() if " switch " in line)
    assert [cell.strip() for cell in paths_header.split("┃")[1:-1]] == list(PATH_HEADERS)
    for stack in deployment.stacks.values():
        for service in SERVICES:
            assert f" {stack.admin(service)} " in out, out
    assert sum(f" {region} " in out for region in REGIONS) == 3


@contextlib.asynccontextmanager
async def paused_path(deployment: LocalDeployment, origin: str, target: str) -> AsyncIterator[None]:
    """`xregion pause` of origin -> target for the block; resumed (and drained) after it."""
    config = str(deployment.stacks[origin].config)
    path = ("--config", config, "--target", target, "--origin", origin)
    code, out, err = await run_xregion("pause", *path)
    assert code == 0, out + err
    try:
        yield
    finally:
        code, out, err = await run_xregion("resume", *path)
        assert code == 0, out + err

        async def drained() -> bool:
            doc = await status_json(deployment)
            now = path_of(doc, origin, target)
            return (now["state"], now["forwarding"], now["backlog"]) == ("running", "ok", 0)

        await wait_until(drained, 30, message=f"{origin} -> {target} resumed and drained")


async def test_status_shows_a_paused_path_and_its_backlog(deployment: LocalDeployment) -> None:
    origin, target = "us-east", "eu-west"
    writes = 5
    async with paused_path(deployment, origin, target):
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
            for n in range(writes):
                url = f"{deployment.stacks[origin].bridge_url}/catalog/held/{n}"
                reply = await http.put(url, json={"n": n})
                assert reply.status_code == 200, reply.text

        async def backlog_shown() -> dict[str, Any] | None:
            doc = await status_json(deployment)
            now = path_of(doc, origin, target)
            held = now["forwarding"] == "paused" and (now["backlog"] or 0) >= writes
            return doc if held else None

        doc = await wait_until(backlog_shown, 30, message="the paused path's backlog shown")
        path = path_of(doc, origin, target)
        assert path["state"] == "paused"
        assert path["by"]
        assert datetime.fromisoformat(path["since"]) <= datetime.now(UTC)
        assert path_of(doc, origin, "ap-south")["state"] == "running"

        code, out, err = await run_piped(
            "status", "--config", str(deployment.stacks[target].config), "--timeout", "1.5"
        )
        assert code == 0, err
        assert "replication paths: 1 paused" in out
        (row,) = [line for line in out.splitlines() if f" {origin} → {target} " in line]
        cells = [cell.strip() for cell in row.split("│")[1:-1]]
        assert cells[1] == "paused", row
        assert int(cells[4].replace(",", "")) >= writes, row
        assert cells[5] == "paused", row
