"""A real `xregion bridge` process whose outbox drainer fails stops with one clear line naming
the drainer and its error, and exit code 1 (shared/lifecycle.py): it must not go on answering
writes it would spool into an outbox that no longer drains.

The fault is real: a spooled entry is corrupted on disk (its headers no longer parse), which
the drainer does not know how to handle."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from services.bridge.service import outbox_path
from services.xregion.local.supercluster import SuperCluster, free_ports
from tests.bridge.helpers import (
    REGION,
    BridgeProcess,
    TcpLink,
    http_client,
    region_file,
    send,
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


async def test_a_failed_outbox_drainer_stops_the_bridge_with_one_line_and_exit_1(
    bridge_cluster: SuperCluster, upstream: TestUpstream, tmp_path: Path
) -> None:
    service = "drainer-fails"
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
            assert bridge.proc is not None
            proc = bridge.proc
            await wait_until(
                lambda: proc.returncode is not None, 30, message="the bridge exited by itself"
            )
            assert proc.returncode == 1
        finally:
            await bridge.stop()
    lines = log_lines(bridge)
    (failed,) = [line for line in lines if line["event"] == "bridge.failed"]
    assert failed["level"] == "error"
    assert failed["failed"] == "task outbox-drainer"
    assert "JSONDecodeError" in failed["error"]
    (exit_line,) = [line for line in lines if line["event"] == "bridge.exit"]
    assert exit_line["exit_code"] == 1
    assert "outbox-drainer" in exit_line["reason"]
