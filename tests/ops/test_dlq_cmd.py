"""`xregion dlq list --output json` against a running deployment: a write that eu-west's
service refuses (400) is dead-lettered there by its replayer and listed with its headers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.harness.wait import wait_until
from tests.ops.stack import LocalDeployment, run_xregion

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.asyncio(loop_scope="package"),
]

ORIGIN, REFUSING = "us-east", "eu-west"
PREFIX = "/catalog/dlq-json/"
LETTER_KEYS = [
    "seq", "stored", "at", "origin", "service", "reason", "status", "attempts", "event_id",
    "target", "error",
]  # fmt: skip


@pytest.fixture
def refusing(deployment: LocalDeployment) -> Iterator[None]:
    upstream = deployment.stacks[REFUSING].upstream
    upstream.refused_prefix = PREFIX
    yield
    upstream.refused_prefix = None


async def dlq_json(config: str, *flags: str) -> dict[str, Any]:
    code, out, err = await run_xregion(
        "dlq", "list", "--config", config, "--output", "json", *flags
    )
    assert code == 0, out + err
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.mark.usefixtures("refusing")
async def test_dlq_list_json_shows_a_refused_replay(deployment: LocalDeployment) -> None:
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as http:
        url = f"{deployment.stacks[ORIGIN].bridge_url}{PREFIX}1"
        reply = await http.put(url, json={"v": 1})
    assert reply.status_code == 200, reply.text  # us-east's own service took it
    event_id = reply.headers["Xr-Event-Id"]
    config = str(deployment.stacks[REFUSING].config)

    async def listed() -> dict[str, Any] | None:
        doc = await dlq_json(config, "--reason", "http_400")
        mine = [d for d in doc["dead_letters"] if d["event_id"] == event_id]
        return mine[0] if mine else None

    letter = await wait_until(listed, 30, message="the refused replay dead-lettered")
    try:
        doc = await dlq_json(config)
        assert list(doc) == ["region", "stream", "dead_letters"]
        assert (doc["region"], doc["stream"]) == (REFUSING, "XR_DLQ_EU_WEST")
        assert list(letter) == LETTER_KEYS
        assert (letter["origin"], letter["service"]) == (ORIGIN, "catalog")
        assert (letter["reason"], letter["status"]) == ("http_400", 400)
        assert isinstance(letter["seq"], int)
        assert isinstance(letter["attempts"], int)
        assert letter["attempts"] >= 1
        assert letter["target"] is None
        assert "refused by the test" in letter["error"]
        for key in ("stored", "at"):
            assert letter[key].endswith("Z"), letter
            assert datetime.fromisoformat(letter[key]) <= datetime.now(UTC)
        empty = await dlq_json(config, "--reason", "no_such_reason")
        assert empty["dead_letters"] == []
    finally:
        args = ("--config", config, "--seq", str(letter["seq"]), "--yes")
        code, out, err = await run_xregion("dlq", "purge", *args)
        assert code == 0, out + err


async def test_dlq_json_is_for_list_only(deployment: LocalDeployment) -> None:
    config = str(deployment.stacks[REFUSING].config)
    code, out, err = await run_xregion("dlq", "show", "--config", config, "--output", "json")
    assert code == 2, out + err
    assert "only for `dlq list`" in err
