"""A broadcaster whose background task fails stops (forwarders drained and stopped, NATS
closed) with one clear line naming the task and its error, and exit code 1
(shared/lifecycle.py)."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from services.broadcaster.service import Broadcaster, serve
from services.xregion.local.supercluster import SuperCluster
from tests.broadcaster.helpers import bc_settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]


async def test_a_failed_background_task_stops_the_broadcaster_with_one_line_and_exit_1(
    cluster: SuperCluster,
) -> None:
    started: list[Broadcaster] = []

    async def watch() -> None:
        raise RuntimeError("control bucket unreadable")

    def start_failing_task(broadcaster: Broadcaster) -> None:
        started.append(broadcaster)
        _ = broadcaster.lifecycle.tasks("probe").spawn(watch(), name="pause-probe")

    with capture_logs() as logs:
        code = await asyncio.wait_for(
            serve(
                bc_settings(cluster),
                shutdown_trigger=asyncio.Event().wait,
                on_started=start_failing_task,
            ),
            60,
        )
    assert code == 1
    (broadcaster,) = started
    assert broadcaster.failed.is_set()
    (failed,) = [e for e in logs if e["event"] == "broadcaster.failed"]
    assert failed["log_level"] == "error"
    assert failed["failed"] == "task pause-probe"
    assert failed["error"] == "RuntimeError('control bucket unreadable')"
    (exit_line,) = [e for e in logs if e["event"] == "broadcaster.exit"]
    assert exit_line["exit_code"] == 1
    assert "pause-probe" in exit_line["reason"]
    stopped = {e["target"] for e in logs if e["event"] == "broadcaster.forwarder_stopped"}
    assert stopped == set(broadcaster.forwarders)  # the ordered stop ran
