"""Fixtures of the replayer tests: one session-wide single-region NATS cluster (`eu-west`),
re-provisioned per test with an empty replay stream, DLQ and a fresh replayer consumer, so
tests cannot see each other's events. Tests run in the session's event loop, without retry
waits (`no_retry_waits`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.xregion.local.supercluster import SuperCluster, with_free_ports
from services.xregion.natsconf import build_topology
from shared import provision
from shared.natsconn import NatsConnection
from shared.regions import dlq_stream, replay_consumer, replay_stream
from shared.settings import Settings
from tests.harness.fixtures import DEV_REGIONS
from tests.harness.provisioning import provision_region
from tests.replayer.helpers import REGION, make_settings
from tests.replayer.recorder import Recorder


@pytest.fixture(autouse=True)
def _no_retry_waits(no_retry_waits: None) -> None:
    """The replayer's retries run without their waits in these tests (shared/retry.py)."""


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def replay_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[SuperCluster]:
    workdir = tmp_path_factory.mktemp("replayer-nats")
    cluster = SuperCluster(with_free_ports(build_topology(DEV_REGIONS)), workdir)
    await cluster.start(90)
    try:
        yield cluster
    finally:
        await cluster.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def recorder() -> AsyncIterator[Recorder]:
    async with Recorder() as service:
        yield service


@pytest_asyncio.fixture(loop_scope="session")
async def settings(replay_cluster: SuperCluster, recorder: Recorder, tmp_path: Path) -> Settings:
    return make_settings(replay_cluster.client_urls(REGION), recorder.url, tmp_path)


@pytest_asyncio.fixture(loop_scope="session")
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """A clean region: provisioned, replay stream and DLQ empty, a fresh replayer consumer."""
    async with NatsConnection(settings.nats, service="test") as conn:
        js = conn.jetstream()
        await _fresh(js, settings)
        yield js


async def _fresh(js: JetStreamContext, settings: Settings) -> None:
    await provision_region(settings, js=js, timeout_s=30)
    try:
        await js.delete_consumer(replay_stream(REGION), replay_consumer())
    except NotFoundError:
        pass
    await js.purge_stream(replay_stream(REGION))
    await js.purge_stream(dlq_stream(REGION))
    await provision.apply(js, provision.plan(settings, 1))  # the consumer deleted above
