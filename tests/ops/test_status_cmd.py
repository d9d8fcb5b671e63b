"""`xregion status` against a running deployment: one connection to one region's NATS finds
every instance of every region (the services API requests cross the gateways)."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.ops.conftest import LocalDeployment
from tests.ops.stack import REGIONS, SERVICES, run_xregion, write_state_file

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]


async def test_status_finds_all_nine_instances_through_one_region(
    deployment: LocalDeployment,
) -> None:
    us_east = deployment.stacks["us-east"]
    code, out, err = await run_xregion(
        "status", "--config", str(us_east.config), "--json", "--timeout", "1.5"
    )
    assert code == 0, err
    rows = json.loads(out)
    found = sorted((row["region"], row["service"]) for row in rows)
    assert found == sorted(itertools.product(REGIONS, SERVICES))
    assert len({row["instance"] for row in rows}) == 9
    for row in rows:
        stack = deployment.stacks[row["region"]]
        assert row["admin_url"] == stack.admin(row["service"])
        assert row["health"] == "ok", row
        assert row["uptime_s"] > 0
        assert row["version"]
        assert row["metadata"]["region"] == row["region"]


async def test_status_table_from_the_state_file_of_up(deployment: LocalDeployment) -> None:
    # The state file lists ap-south first: status connects there and still sees every region.
    stacks = [deployment.stacks[r] for r in reversed(REGIONS)]
    state = write_state_file(deployment.workdir / "state.json", deployment.cluster, stacks)
    code, out, err = await run_xregion("status", "--state-file", str(state), "--timeout", "1.5")
    assert code == 0, err
    assert "xregion instances: 9 in 3 regions" in out
    lines = [line for line in out.splitlines() if "│" in line]
    for region, service in itertools.product(REGIONS, SERVICES):
        assert any(f" {region} " in line and f" {service} " in line for line in lines), out
    assert sum(" ok " in line for line in lines) == 9
