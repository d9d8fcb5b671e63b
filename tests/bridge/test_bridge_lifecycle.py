"""A bridge whose outbox drainer fails stops with one clear line naming the drainer and its
error, and exit code 1 (shared/lifecycle.py): it must not go on answering writes it would spool
into an outbox that no longer drains. A spooled entry corrupted on disk (its headers no longer
parse) is not such a failure: it is moved aside, kept for an operator, and the drain goes on."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from services.bridge.outbox import OutboxEntry
from services.bridge.service import Bridge, outbox_path, serve
from services.xregion.local.supercluster import SuperCluster, free_ports
from tests.bridge.helpers import (
    REGION,
    BridgeProcess,
    TcpLink,
    http_client,
    region_file,
    send,
    write_region_file,
)
from tests.bridge.upstream_app import TestUpstream
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Writes spool quickly once NATS is cut, and the drainer tries again often.
FAST_SPOOL = {"publish_timeout_s": 0.5, "outbox_retry_base_s": 0.05, "outbox_retry_max_s": 0.5}


def corrupt_outbox(path: Path) -> int:
    """Overwrite the headers of every spooled entry with text that is not JSON; how many."""
    with sqlite3.connect(path) as db:
        return db.execute("UPDATE outbox SET headers = 'not json {'").rowcount


def log_lines(bridge: BridgeProcess) -> list[dict[str, Any]]:
    lines = []
    for line in bridge.log_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_a_corrupted_outbox_entry_is_moved_aside_and_the_bridge_goes_on(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    service = "drainer-corrupt"
    port, admin = free_ports(2)
    listen = f"127.0.0.1:{port}"
    async with TcpLink(bridge_cluster.client_urls(REGION)[0]) as link:
        config = tmp_path / "region.toml"
        config.write_text(
            region_file(
                nats_urls=[link.url],
                data_dir=tmp_path / "data",
                services={service: {"upstream": upstream.url, "routes": [f"/{service}"]}},
                bridge=FAST_SPOOL,
            )
        )
        bridge = BridgeProcess(
            config, listen=listen, admin_listen=f"127.0.0.1:{admin}", log=tmp_path / "b.log"
        )
        try:
            await bridge.start()
            link.cut()  # NATS is gone for the bridge: the write is spooled
            async with http_client() as http:
                reply = await send(http, "PUT", bridge.url, f"/{service}/k", data=b"v")
                assert reply.status == 200
                spooled = outbox_path(tmp_path / "data", listen)
                assert await asyncio.to_thread(corrupt_outbox, spooled) == 1
                line = await wait_until(
                    lambda: _line(bridge, "bridge.outbox_unreadable"), 30, message="moved aside"
                )
                assert line is not None
                assert line["event_id"] == reply.headers["Xr-Event-Id"]
                assert "not JSON" in line["error"]
                assert await asyncio.to_thread(_rows, spooled) == (0, 1)
                link.restore()
                later = await send(http, "PUT", bridge.url, f"/{service}/k2", data=b"w")
                assert later.status == 200
                metrics = (await send(http, "GET", bridge.admin_url, "/metrics")).body.decode()
            assert "xr_bridge_outbox_unreadable_total 1.0" in metrics
            assert bridge.proc is not None
            assert bridge.proc.returncode is None
        finally:
            await bridge.stop()
    assert not _line(bridge, "bridge.failed")


async def test_a_failed_outbox_drainer_stops_the_bridge_with_one_line_and_exit_1(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    # The fault is injected where the drainer reads the outbox: an error it has no rule for.
    service = "drainer-fails"
    async with TcpLink(bridge_cluster.client_urls(REGION)[0]) as link:
        settings = write_region_file(
            tmp_path / "region.toml",
            nats_urls=[link.url],
            data_dir=tmp_path / "data",
            services={service: {"upstream": upstream.url, "routes": [f"/{service}"]}},
            bridge=FAST_SPOOL,
        )
        started: list[Bridge] = []

        async def unreadable(limit: int) -> list[OutboxEntry]:
            raise RuntimeError("disk controller gone")

        def on_started(bridge: Bridge) -> None:
            started.append(bridge)
            bridge.outbox.oldest = unreadable  # type: ignore[method-assign]

        async def write_while_cut() -> None:
            await wait_until(lambda: started, 30, message="bridge started")
            link.cut()
            async with http_client() as http:
                reply = await send(http, "PUT", started[0].url, f"/{service}/k", data=b"v")
            assert reply.status == 200

        with capture_logs() as logs:
            writer = asyncio.ensure_future(write_while_cut())
            code = await asyncio.wait_for(
                serve(settings, shutdown_trigger=asyncio.Event().wait, on_started=on_started), 60
            )
            await writer
    assert code == 1
    (failed,) = [e for e in logs if e["event"] == "bridge.failed"]
    assert failed["log_level"] == "error"
    assert failed["failed"] == "task outbox-drainer"
    assert failed["error"] == "RuntimeError('disk controller gone')"
    (exit_line,) = [e for e in logs if e["event"] == "bridge.exit"]
    assert exit_line["exit_code"] == 1
    assert "outbox-drainer" in exit_line["reason"]


def _line(bridge: BridgeProcess, event: str) -> dict[str, Any] | None:
    return next((line for line in log_lines(bridge) if line["event"] == event), None)


def _rows(path: Path) -> tuple[int, int]:
    """Entries in the outbox, and moved aside."""
    with sqlite3.connect(path) as db:
        waiting = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        aside = db.execute("SELECT COUNT(*) FROM outbox_unreadable").fetchone()[0]
    return int(waiting), int(aside)
