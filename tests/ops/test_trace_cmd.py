"""`xregion trace EVENT_ID` against a running deployment: a write through us-east's bridge is
found published in us-east, forwarded to and applied in both other regions; an id that no
events stream holds exits 1; a malformed one exits 2."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import httpx
import pytest

from shared.ids import uuid7_str
from tests.harness.wait import wait_until
from tests.ops.stack import REGIONS, LocalDeployment, run_xregion

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]

ORIGIN = "us-east"


def facts(text: str) -> dict[tuple[str, str], str]:
    """{(region, what): detail} from trace's indented lines."""
    found = {}
    for line in text.splitlines():
        match = re.fullmatch(r"  (\S+)\s+(published|forwarded|refused|not forwarded|version|"
                             r"dead-lettered)\s+(.*)", line)  # fmt: skip
        if match:
            found[(match[1], match[2])] = match[3]
    return found


async def test_trace_follows_a_write_into_every_region(deployment: LocalDeployment) -> None:
    origin = deployment.stacks[ORIGIN]
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        reply = await http.put(f"{origin.bridge_url}/catalog/traced/1", json={"v": 1})
    assert reply.status_code == 200, reply.text
    event_id = reply.headers["Xr-Event-Id"]
    config = str(origin.config)
    targets = [r for r in REGIONS if r != ORIGIN]

    async def applied_everywhere() -> dict[tuple[str, str], str] | None:
        code, out, err = await run_xregion("trace", event_id, "--config", config)
        assert code == 0, out + err
        seen = facts(out)
        done = all(seen.get((r, "version")) == "applied" for r in REGIONS)
        return seen if done else None

    seen = await wait_until(applied_everywhere, 30, message="the write applied everywhere")
    assert seen is not None
    assert seen[(ORIGIN, "published")].startswith("XR_EVENTS_US_EAST seq ")
    for target in targets:
        stream = f"XR_REPLAY_{target.upper().replace('-', '_')}"
        assert seen[(target, "forwarded")].startswith(f"{stream} seq "), seen
        assert (target, "dead-lettered") not in seen


async def test_trace_of_an_unknown_or_malformed_id(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks[ORIGIN].config)
    code, out, err = await run_xregion("trace", uuid7_str(), "--config", config, "--window", "5")
    assert code == 1, out + err
    assert "not in any region's events stream" in out
    code, out, err = await run_xregion("trace", "not-an-id", "--config", config)
    assert code == 2, out + err
    assert "is not an event id" in err


TRACE_KEYS = [
    "event_id", "found", "origin", "method", "path", "service", "key", "hlc", "searched",
    "steps",
]  # fmt: skip
STEP_KEYS = ["region", "step", "stream", "seq", "at", "after_s", "state", "reason", "detail"]


async def test_trace_json_follows_a_write_into_every_region(deployment: LocalDeployment) -> None:
    origin = deployment.stacks[ORIGIN]
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        reply = await http.put(f"{origin.bridge_url}/catalog/traced/json", json={"v": 2})
    assert reply.status_code == 200, reply.text
    event_id = reply.headers["Xr-Event-Id"]
    config = str(origin.config)

    async def applied_everywhere() -> dict[str, Any] | None:
        code, out, err = await run_xregion(
            "trace", event_id, "--config", config, "--output", "json"
        )
        assert code == 0, out + err
        doc: dict[str, Any] = json.loads(out)
        versions = {s["region"]: s["state"] for s in doc["steps"] if s["step"] == "version"}
        return doc if versions == dict.fromkeys(REGIONS, "applied") else None

    doc = await wait_until(applied_everywhere, 30, message="the write applied everywhere")
    assert list(doc) == TRACE_KEYS
    assert (doc["event_id"], doc["found"], doc["origin"]) == (event_id, True, ORIGIN)
    assert (doc["method"], doc["path"], doc["service"]) == (
        "PUT",
        "/catalog/traced/json",
        "catalog",
    )
    assert doc["key"]
    assert doc["hlc"]
    assert datetime.fromisoformat(doc["searched"]["from"]) < datetime.fromisoformat(
        doc["searched"]["to"]
    )
    for step in doc["steps"]:
        assert list(step) == STEP_KEYS
    steps = {(s["region"], s["step"]): s for s in doc["steps"]}
    published = steps[(ORIGIN, "published")]
    assert (published["stream"], published["state"]) == ("XR_EVENTS_US_EAST", None)
    assert isinstance(published["seq"], int)
    assert published["at"].endswith("Z")
    for target in (r for r in REGIONS if r != ORIGIN):
        forwarded = steps[(target, "forwarded")]
        assert forwarded["stream"] == f"XR_REPLAY_{target.upper().replace('-', '_')}"
        assert isinstance(forwarded["after_s"], float), forwarded
        assert (target, "dead_lettered") not in steps


async def test_trace_json_of_an_unknown_id_exits_1(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks[ORIGIN].config)
    args = ("trace", uuid7_str(), "--config", config, "--window", "5", "--output", "json")
    code, out, err = await run_xregion(*args)
    assert code == 1, out + err
    doc = json.loads(out)
    assert list(doc) == TRACE_KEYS
    assert (doc["found"], doc["origin"], doc["steps"]) == (False, None, [])
