"""A replayer whose background task fails stops (fetching stopped, NATS closed) with one clear
line naming the task and its error, and exit code 1 (shared/lifecycle.py)."""

from __future__ import annotations

import asyncio

import pytest
from nats.js import JetStreamContext
from structlog.testing import capture_logs

from services.replayer.service import Replayer, serve
from shared.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_a_failed_background_task_stops_the_replayer_with_one_line_and_exit_1(
    settings: Settings, js: JetStreamContext
) -> None:
    started: list[Replayer] = []

    async def poll() -> None:
        raise RuntimeError("stream info unreadable")

    def start_failing_task(replayer: Replayer) -> None:
        started.append(replayer)
        _ = replayer.lifecycle.tasks("probe").spawn(poll(), name="dlq-probe")

    with capture_logs() as logs:
        code = await asyncio.wait_for(
            serve(settings, shutdown_trigger=asyncio.Event().wait, on_started=start_failing_task),
            60,
        )
    assert code == 1
    (replayer,) = started
    assert replayer.failed.is_set()
    assert not replayer.consumer.bound  # the ordered stop ran: the consumer was let go
    (failed,) = [e for e in logs if e["event"] == "replayer.failed"]
    assert failed["log_level"] == "error"
    assert failed["failed"] == "task dlq-probe"
    assert failed["error"] == "RuntimeError('stream info unreadable')"
    (exit_line,) = [e for e in logs if e["event"] == "replayer.exit"]
    assert exit_line["exit_code"] == 1
    assert "dlq-probe" in exit_line["reason"]
