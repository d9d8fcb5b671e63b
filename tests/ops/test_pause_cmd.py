"""`xregion pause|resume` and `pause --list` with `--output json` against a running
deployment: every path listed, a paused path shows since when and by whom, and resumes."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.ops.stack import REGIONS, LocalDeployment, run_xregion

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]

KEYS = ["origin", "target", "state", "since", "by", "error"]
ORIGIN, TARGET = "ap-south", "us-east"


async def pause_json(*args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = await run_xregion(*args, "--output", "json")
    assert out.startswith("{"), err  # stdout is the JSON alone (warnings go to stderr)
    doc: dict[str, Any] = json.loads(out)
    assert list(doc) == ["paths"]
    for path in doc["paths"]:
        assert list(path) == KEYS
    return code, doc


def states(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(p["origin"], p["target"]): p["state"] for p in doc["paths"]}


async def test_pause_list_json_shows_a_paused_path(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks[ORIGIN].config)
    code, doc = await pause_json("pause", "--config", config, "--list")
    assert code == 0
    assert list(states(doc)) == list(itertools.permutations(REGIONS, 2))
    assert set(states(doc).values()) == {"running"}
    path = ("--config", config, "--target", TARGET, "--origin", ORIGIN)
    try:
        code, doc = await pause_json("pause", *path)
        assert code == 0
        (switched,) = doc["paths"]
        assert (switched["origin"], switched["target"], switched["state"]) == (
            ORIGIN, TARGET, "paused"
        )  # fmt: skip

        code, doc = await pause_json("pause", "--config", config, "--list")
        assert code == 0
        assert [k for k, state in states(doc).items() if state == "paused"] == [(ORIGIN, TARGET)]
        (paused,) = [p for p in doc["paths"] if p["state"] == "paused"]
        since = datetime.fromisoformat(paused["since"])
        assert paused["since"].endswith("Z")
        assert since <= datetime.now(UTC)
        assert "@" in paused["by"]
        assert paused["error"] is None
    finally:
        code, doc = await pause_json("resume", *path)
    assert code == 0
    assert states(doc) == {(ORIGIN, TARGET): "running"}
    code, doc = await pause_json("pause", "--config", config, "--list")
    assert set(states(doc).values()) == {"running"}


async def test_pause_list_table_is_unchanged(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks[ORIGIN].config)
    code, out, err = await run_xregion("pause", "--config", config, "--list")
    assert code == 0, err
    assert out.splitlines() == [
        f"{o} -> {t}  running" for o, t in itertools.permutations(REGIONS, 2)
    ]
