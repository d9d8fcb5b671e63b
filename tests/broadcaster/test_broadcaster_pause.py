"""Pause and resume a target region with the real `xregion pause|resume` commands while a
broadcaster runs: the paused path stops within a second, its events wait in the stream,
the other path keeps going, and after resume everything arrives once, in per-key order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from services.broadcaster.pause import set_pause
from services.broadcaster.service import Broadcaster
from services.xregion.local.supercluster import SuperCluster
from shared.envelope import decode
from shared.regions import broadcast_consumer, events_stream
from tests.broadcaster.helpers import (
    ORIGIN,
    REGIONS,
    XREGION,
    Producer,
    bc_settings,
    count_replay,
    key_orders,
    metric_value,
    read_replay,
    write_region_file,
)
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]


async def xregion(*args: str) -> tuple[int, str]:
    """Run the real command line (without blocking the broadcaster in this event loop);
    the exit code and stdout (stderr joins it only when the command failed)."""
    proc = await asyncio.create_subprocess_exec(
        str(XREGION),
        "--log-level",
        "warning",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    text = out.decode() if proc.returncode == 0 else out.decode() + err.decode()
    return proc.returncode, text


@pytest_asyncio.fixture(loop_scope="package")
async def resumed(js: JetStreamContext) -> AsyncIterator[None]:
    """Whatever happens in the test, every path into eu-west runs again afterwards."""
    try:
        yield
    finally:
        for origin in REGIONS:
            if origin != "eu-west":
                await set_pause(js, origin, "eu-west", paused=False)


@pytest.mark.usefixtures("resumed")
async def test_pause_then_resume(
    cluster: SuperCluster, js: JetStreamContext, tmp_path: Path
) -> None:
    settings = bc_settings(cluster)
    config = write_region_file(tmp_path / "us-east.toml", settings)
    producer = Producer(js, "pz", keys=7)
    async with Broadcaster(settings) as broadcaster:
        eu_west = broadcaster.forwarders["eu-west"]
        code, out = await xregion("pause", "--config", str(config), "--target", "eu-west")
        assert code == 0, out
        assert "us-east -> eu-west  paused" in out
        assert "ap-south -> eu-west  paused" in out  # no --origin: every path into eu-west
        await wait_until(lambda: eu_west.gate.paused, 30, message="the pause obeyed")

        await producer.send(100)
        await wait_until(lambda: _count(js, "ap-south", 100), 30, message="ap-south fed")
        assert await count_replay(js, "eu-west", "pz") == 0
        info = await js.consumer_info(events_stream(ORIGIN), broadcast_consumer("eu-west"))
        assert (info.num_pending or 0) + (info.num_ack_pending or 0) >= 100  # waiting
        await wait_until(lambda: _backlog(broadcaster.admin_url), 10, message="backlog shown")
        async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
            ready = (await http.get(broadcaster.admin_url + "/readyz")).json()
        assert ready["checks"]["targets"]["status"] == "degraded"
        assert "paused: eu-west" in ready["checks"]["targets"]["detail"]

        code, out = await xregion("pause", "--config", str(config), "--list")
        assert code == 0, out
        assert "us-east -> eu-west  paused" in out
        assert "us-east -> ap-south  running" in out

        args = ("--config", str(config), "--target", "eu-west", "--origin", ORIGIN)
        code, out = await xregion("resume", *args)
        assert code == 0, out
        assert out.strip() == "us-east -> eu-west  running"
        await wait_until(lambda: _count(js, "eu-west", 100), 30, message="eu-west caught up")
        assert not eu_west.gate.paused

    assert await count_replay(js, "eu-west", "pz") == 100
    stored = [decode(m.headers, m.data) for m in await read_replay(js, "eu-west", "pz")]
    assert key_orders((e.key, e.event_id) for e in stored) == producer.key_orders()


async def _count(js: JetStreamContext, target: str, n: int) -> bool:
    return await count_replay(js, target, "pz") >= n


async def _backlog(admin_url: str) -> bool:
    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
        text = (await http.get(admin_url + "/metrics")).text
    paused = metric_value(text, "xr_broadcaster_paused", target="eu-west")
    backlog = metric_value(text, "xr_broadcaster_backlog", target="eu-west")
    lag = metric_value(text, "xr_broadcaster_lag_seconds", target="eu-west")
    return paused == 1 and backlog >= 100 and lag > 0
