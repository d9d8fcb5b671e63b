"""NATS stopped during a stream of writes: every write the bridge answered 2xx is in the
events stream exactly once after NATS is back (own super-cluster: a server is stopped)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from services.bridge.service import Bridge
from shared.natsconn import NatsConnection
from shared.provision import versions_bucket
from shared.versions import read_record, record_key
from tests.bridge.helpers import (
    REGION,
    http_client,
    provision_region,
    running_bridge,
    send,
    stored_events,
    write_region_file,
)
from tests.bridge.upstream_app import TestUpstream
from tests.harness.fixtures import MakeSuperCluster
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

WRITERS = 4


class Writers:
    """Concurrent clients writing distinct keys until told to stop; they keep every event id
    the bridge answered with a 2xx, and count any other answer."""

    def __init__(self, http: aiohttp.ClientSession, bridge: Bridge, service: str) -> None:
        self._http = http
        self._bridge = bridge
        self._service = service
        self._stop = asyncio.Event()
        self.accepted: list[str] = []
        self.refused = 0

    def stop(self) -> None:
        self._stop.set()

    async def run(self, writer: int) -> None:
        i = 0
        while not self._stop.is_set():
            path = f"/{self._service}/w{writer}/{i}"
            reply = await send(self._http, "PUT", self._bridge.url, path, data=path.encode())
            if 200 <= reply.status < 300:
                self.accepted.append(reply.headers["Xr-Event-Id"])
            else:
                self.refused += 1
            i += 1


async def test_nats_stopped_during_writes_every_2xx_is_stored_exactly_once(
    make_supercluster: MakeSuperCluster, tmp_path: Path
) -> None:
    cluster = await make_supercluster()
    server = next(s.name for s in cluster.servers if s.cluster == REGION)
    service = "outage"
    async with TestUpstream() as upstream:
        settings = write_region_file(
            tmp_path / "region.toml",
            nats_urls=cluster.client_urls(REGION),
            data_dir=tmp_path / "data",
            services={service: {"upstream": upstream.url, "routes": [f"/{service}"]}},
            bridge={
                "publish_timeout_s": 0.5,
                "outbox_retry_base_s": 0.05,
                "outbox_retry_max_s": 0.5,
            },
        )
        await provision_region(settings)
        async with running_bridge(settings) as bridge, http_client() as http:
            writers = Writers(http, bridge, service)
            async with asyncio.TaskGroup() as tasks:
                for n in range(WRITERS):
                    tasks.create_task(writers.run(n))
                await wait_until(lambda: len(writers.accepted) >= 50, 30, message="50 writes")
                await cluster.stop_server(server)
                before = len(writers.accepted)
                # Writes keep succeeding: spooled, then answered (a write is counted in the
                # outbox before its client has its answer, so wait for both).
                await wait_until(
                    lambda: bridge.outbox.depth >= 50 and len(writers.accepted) >= before + 50,
                    30,
                    message="50 writes spooled and answered while NATS is down",
                )
                await cluster.start_server(server)
                await wait_until(lambda: bridge.outbox.depth == 0, 60, message="outbox drained")
                after = len(writers.accepted)
                await wait_until(lambda: len(writers.accepted) >= after + 50, 30)
                writers.stop()
            await wait_until(lambda: bridge.outbox.depth == 0, 30, message="outbox drained")

    assert writers.refused == 0
    async with NatsConnection(settings.nats, service="test-reader") as reader:
        events = await stored_events(reader.jetstream(), service)
        kv = await reader.jetstream().key_value(versions_bucket(REGION))
        records = [await read_record(kv, record_key(service, e.event.key)) for e in events]
    stored = [e.event.event_id for e in events]
    assert len(stored) == len(set(stored)), "an event was stored twice"
    assert sorted(stored) == sorted(writers.accepted), "an accepted write is missing"
    # Every write has its version record (each writes its own key), the 50+ spooled ones too:
    # the drainer records them once they are published. Only a write published just before
    # the server stopped may have lost its record (it is started after the answer), one per
    # writer at most.
    unrecorded = [
        e.event.event_id
        for e, (record, _) in zip(events, records, strict=True)
        if record is None or record.event_id != e.event.event_id
    ]
    assert len(unrecorded) <= WRITERS, f"{len(unrecorded)} writes without their version record"
