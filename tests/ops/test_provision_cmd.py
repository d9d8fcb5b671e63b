"""`xregion provision` against a provisioned region: nothing to change, in a table piped to a
file (whole names, no `…`) and as JSON."""

from __future__ import annotations

import json

import pytest

from tests.ops.stack import LocalDeployment, run_piped, run_xregion

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]


async def test_provision_json_reports_every_asset_unchanged(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks["eu-west"].config)
    code, out, err = await run_xregion("provision", "--config", config, "--output", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc) == ["region", "replicas", "assets"]
    assert (doc["region"], doc["replicas"]) == ("eu-west", 1)
    assets = doc["assets"]
    for asset in assets:
        assert list(asset) == ["kind", "name", "action", "note"]
    assert {a["kind"] for a in assets} == {"stream", "kv", "consumer"}
    assert {a["action"] for a in assets} == {"unchanged"}, assets
    names = {a["name"] for a in assets}
    for stream in ("XR_EVENTS_EU_WEST", "XR_REPLAY_EU_WEST", "XR_DLQ_EU_WEST"):
        assert stream in names, names
    assert {"xr-control-eu-west", "xr-versions-eu-west"} <= names


async def test_provision_table_piped_prints_whole_names(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks["eu-west"].config)
    code, out, err = await run_piped("provision", "--config", config)
    assert code == 0, err
    assert "…" not in out, out
    assert "provisioned region eu-west (replicas 1)" in out
    _, doc_out, _ = await run_xregion("provision", "--config", config, "--output", "json")
    for asset in json.loads(doc_out)["assets"]:
        assert f" {asset['name']} " in out, out
