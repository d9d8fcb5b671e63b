"""A consumer deleted while the broadcaster runs (an operator's mistake, a re-created stream):
readiness turns red naming it, the other target keeps receiving, and once `xregion provision`
has made it again, forwarding resumes and readiness comes back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from services.broadcaster.service import Broadcaster
from services.xregion.local.supercluster import SuperCluster
from shared.regions import broadcast_consumer, events_stream
from shared.settings import Settings
from tests.broadcaster.helpers import JS_TRANSIENT, ORIGIN, Producer, bc_settings, count_replay
from tests.harness.provisioning import provision_region
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]

LOST = "eu-west"
KEPT = "ap-south"


@pytest_asyncio.fixture(loop_scope="package")
async def reprovisioned(cluster: SuperCluster, js: JetStreamContext) -> AsyncIterator[Settings]:
    """The origin's settings; its consumers are provisioned again after the test, whatever
    happened (the later tests need them)."""
    settings = bc_settings(cluster)
    try:
        yield settings
    finally:
        await _provision(js, settings)


async def _provision(js: JetStreamContext, settings: Settings) -> None:
    await provision_region(
        settings, js=js, timeout_s=20, ignore=JS_TRANSIENT, message="consumers provisioned"
    )


async def test_a_deleted_consumer_turns_readiness_red_until_it_is_provisioned_again(
    js: JetStreamContext, reprovisioned: Settings
) -> None:
    producer = Producer(js, "consumer-lost")
    settings = reprovisioned
    async with Broadcaster(settings) as broadcaster:
        await producer.send(3)
        await wait_until(lambda: _all_have(js, producer, 3), 20, message="forwarded before")
        assert (await _consumers_check(broadcaster.admin_url))["status"] == "ok"

        await js.delete_consumer(events_stream(ORIGIN), broadcast_consumer(LOST))
        check = await wait_until(
            lambda: _down(broadcaster.admin_url), 20, message="readiness turned red"
        )
        assert broadcast_consumer(LOST) in check["detail"]
        assert "xregion provision" in check["detail"]
        assert broadcast_consumer(KEPT) not in check["detail"]

        await producer.send(3)
        await wait_until(
            lambda: _has(js, KEPT, producer, 6), 20, message=f"{KEPT} unaffected meanwhile"
        )
        assert await count_replay(js, LOST, producer.service) == 3
        assert (await _consumers_check(broadcaster.admin_url))["status"] == "down"

        await _provision(js, settings)
        await wait_until(lambda: _has(js, LOST, producer, 6), 30, message=f"{LOST} resumed")
        await wait_until(lambda: _ok(broadcaster.admin_url), 10, message="readiness back")
        assert not broadcaster.failed.is_set()


async def _consumers_check(admin_url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
        check: dict[str, Any] = (await http.get(admin_url + "/readyz")).json()["checks"][
            "consumers"
        ]
    return check


async def _down(admin_url: str) -> dict[str, Any] | None:
    check = await _consumers_check(admin_url)
    return check if check["status"] == "down" else None


async def _ok(admin_url: str) -> bool:
    return bool((await _consumers_check(admin_url))["status"] == "ok")


async def _has(js: JetStreamContext, target: str, producer: Producer, n: int) -> bool:
    return await count_replay(js, target, producer.service) >= n


async def _all_have(js: JetStreamContext, producer: Producer, n: int) -> bool:
    return all([await _has(js, t, producer, n) for t in (LOST, KEPT)])
