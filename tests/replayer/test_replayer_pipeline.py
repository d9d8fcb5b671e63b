"""End to end, the pipeline's smoke test: a write through us-east's bridge is applied by the
replayers of eu-west and ap-south (bridge → events stream → broadcaster → gateways → replay
streams → replayers → each region's service)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest
from nats.js.errors import NotFoundError

from services.bridge.service import Bridge
from services.broadcaster.service import Broadcaster
from services.replayer.service import Replayer
from services.xregion.local.supercluster import SuperCluster
from shared import provision
from shared.natsconn import NatsConnection
from shared.regions import replay_consumer, replay_stream
from shared.settings import (
    BridgeSettings,
    BroadcasterSettings,
    NatsSettings,
    ReplayerSettings,
    ServiceSettings,
    Settings,
    SigningSettings,
)
from tests.harness.fixtures import DEV_REGIONS
from tests.harness.provisioning import provision_region
from tests.harness.wait import wait_until
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def region_settings(cluster: SuperCluster, region: str, upstream: str, tmp_path: Path) -> Settings:
    return Settings(
        region=region,
        regions=list(DEV_REGIONS),
        data_dir=tmp_path / region,
        nats=NatsSettings(servers=cluster.client_urls(region), first_connect_timeout_s=10),
        signing=SigningSettings(mode="off"),
        bridge=BridgeSettings(listen="127.0.0.1:0", admin_listen="127.0.0.1:0"),
        broadcaster=BroadcasterSettings(admin_listen="127.0.0.1:0", fetch_timeout_s=0.3),
        replayer=ReplayerSettings(admin_listen="127.0.0.1:0", fetch_timeout_s=0.3),
        services={"catalog": ServiceSettings(upstream=upstream, routes=["/catalog"])},
    )


async def fresh_region(settings: Settings) -> None:
    async with NatsConnection(settings.nats, service="test") as conn:
        js = conn.jetstream()
        await provision_region(settings, js=js, timeout_s=30)
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(replay_stream(settings.region), replay_consumer())
        await js.purge_stream(replay_stream(settings.region))
        await provision.apply(js, provision.plan(settings, 1))  # the consumer deleted above


async def test_a_write_through_the_bridge_is_applied_in_every_other_region(
    replay_cluster: SuperCluster, tmp_path: Path
) -> None:
    async with Recorder() as origin_service, Recorder() as eu, Recorder() as ap:
        east = region_settings(replay_cluster, "us-east", origin_service.url, tmp_path)
        west = region_settings(replay_cluster, "eu-west", eu.url, tmp_path)
        south = region_settings(replay_cluster, "ap-south", ap.url, tmp_path)
        for settings in (east, west, south):
            await fresh_region(settings)
        async with (
            Bridge(east) as bridge,
            Broadcaster(east),
            Replayer(west) as west_replayer,
            Replayer(south) as south_replayer,
        ):
            west_replayer.start_consuming()
            south_replayer.start_consuming()
            headers = {"Content-Type": "application/json"}
            async with httpx.AsyncClient() as client:
                url = f"{bridge.url}/catalog/e2e"
                response = await client.put(url, content=b'{"v":1}', headers=headers)
            assert response.status_code == 200
            event_id = response.headers["Xr-Event-Id"]
            await wait_until(lambda: event_id in eu.succeeded and event_id in ap.succeeded, 30,
                             message="the write applied in eu-west and ap-south")  # fmt: skip
    assert [c.path for c in origin_service.calls] == ["/catalog/e2e"]
    for service in (eu, ap):
        [call] = service.calls
        assert call.body == b'{"v":1}'
        assert call.headers["Xr-Replayed-From"] == "us-east"
        assert call.headers["Idempotency-Key"] == event_id
