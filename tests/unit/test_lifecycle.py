"""shared/lifecycle.py without sockets: parts start in order and stop in reverse, a run ends on
the first trigger, a failed background task stops the service with one line naming it and exit
code 1, and the stop sequence has one deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Self

import pytest
from structlog.testing import capture_logs

from shared.lifecycle import Closeable, Lifecycle, serve


class Part(Closeable):
    """A part that writes down when it starts and stops."""

    def __init__(self, name: str, journal: list[str]) -> None:
        self.name = name
        self._journal = journal

    async def __aenter__(self) -> Self:
        self._journal.append(f"start {self.name}")
        return self

    async def aclose(self) -> None:
        self._journal.append(f"stop {self.name}")


class Service(Closeable):
    """A service of three parts and one background task owner, wired like the real ones."""

    def __init__(self, *, stop_timeout_s: float = 10.0) -> None:
        self.lifecycle = Lifecycle("toy", stop_timeout_s=stop_timeout_s)
        self.journal: list[str] = []
        self.nats_closed = asyncio.Event()
        self.lifecycle.stop_when(self.nats_closed, "the NATS connection closed for good")

    async def __aenter__(self) -> Self:
        for name in ("nats", "outbox"):
            await self.lifecycle.enter(Part(name, self.journal))
        self.background = self.lifecycle.tasks("background")
        await self.lifecycle.enter(Part("http", self.journal))
        return self

    async def aclose(self) -> None:
        await self.lifecycle.aclose()


def stopped_by(event: asyncio.Event) -> Callable[[], Awaitable[object]]:
    return event.wait


async def test_parts_start_in_order_and_stop_in_reverse_after_a_requested_shutdown() -> None:
    stop = asyncio.Event()
    service = Service()
    with capture_logs() as logs:
        code = await serve(
            service, shutdown_trigger=stopped_by(stop), on_started=lambda s: stop.set()
        )
    assert code == 0
    assert service.journal == [
        "start nats", "start outbox", "start http", "stop http", "stop outbox", "stop nats",
    ]  # fmt: skip
    assert [(e["event"], e["reason"]) for e in logs if e["event"] == "toy.exit"] == [
        ("toy.exit", "shutdown requested")
    ]


async def test_a_failed_background_task_stops_the_service_with_one_line_and_exit_1() -> None:
    async def drain() -> None:
        raise RuntimeError("outbox unreadable")

    def start_task(service: Service) -> None:
        _ = service.background.spawn(drain(), name="outbox-drainer")

    service = Service()
    with capture_logs() as logs:
        code = await serve(service, shutdown_trigger=asyncio.Event().wait, on_started=start_task)
    assert code == 1
    (failed,) = [e for e in logs if e["event"] == "toy.failed"]
    assert failed["log_level"] == "error"
    assert failed["failed"] == "task outbox-drainer"
    assert failed["error"] == "RuntimeError('outbox unreadable')"
    assert not [e for e in logs if e["event"] == "task.failed"]  # the lifecycle says it, once
    (exit_line,) = [e for e in logs if e["event"] == "toy.exit"]
    assert exit_line["exit_code"] == 1
    assert "outbox-drainer" in exit_line["reason"]
    assert service.journal[-3:] == ["stop http", "stop outbox", "stop nats"]


async def test_a_stop_trigger_ends_the_run_with_exit_1() -> None:
    service = Service()
    with capture_logs() as logs:
        code = await serve(
            service,
            shutdown_trigger=asyncio.Event().wait,
            on_started=lambda s: s.nats_closed.set(),
        )
    assert code == 1
    assert [e["reason"] for e in logs if e["event"] == "toy.exit"] == [
        "the NATS connection closed for good"
    ]


async def test_a_part_that_reports_a_failure_stops_the_service() -> None:
    service = Service()
    with capture_logs() as logs:
        code = await serve(
            service,
            shutdown_trigger=asyncio.Event().wait,
            on_started=lambda s: s.lifecycle.fail("forwarder eu-west admit", ValueError("bad")),
        )
    assert code == 1
    assert [e["failed"] for e in logs if e["event"] == "toy.failed"] == ["forwarder eu-west admit"]


async def test_a_step_past_the_deadline_is_cut_and_the_steps_after_it_still_run() -> None:
    journal: list[str] = []
    hang = asyncio.Event()
    lifecycle = Lifecycle("toy", stop_timeout_s=0.2)
    await lifecycle.enter(Part("nats", journal))

    async def closes() -> None:
        await asyncio.sleep(0.01)  # a step that needs the loop a moment (a socket's close)
        journal.append("closed after the cut")

    lifecycle.on_stop(closes, name="closes")

    async def stuck() -> None:
        try:
            await hang.wait()
        finally:
            journal.append("stuck step cleaned up")

    lifecycle.on_stop(stuck, name="stuck")
    with capture_logs() as logs:
        await lifecycle.aclose()
    assert journal == ["start nats", "stuck step cleaned up", "closed after the cut", "stop nats"]
    assert [e["step"] for e in logs if e["event"] == "toy.stop_cut"] == ["stuck"]
    await lifecycle.aclose()  # idempotent: nothing left to stop
    assert journal[-1] == "stop nats"


async def test_an_error_in_a_stop_step_is_raised_after_the_others_ran() -> None:
    journal: list[str] = []
    lifecycle = Lifecycle("toy", stop_timeout_s=5.0)
    await lifecycle.enter(Part("nats", journal))

    async def broken() -> None:
        raise OSError("disk gone")

    lifecycle.on_stop(broken)
    with pytest.raises(OSError, match="disk gone"):
        await lifecycle.aclose()
    assert journal == ["start nats", "stop nats"]


async def test_a_task_that_fails_while_stopping_still_makes_the_exit_code_1() -> None:
    stop = asyncio.Event()
    service = Service()

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("could not flush") from None

    def start(s: Service) -> None:
        _ = s.background.spawn(fails_when_cancelled(), name="flusher")
        stop.set()

    with capture_logs() as logs:
        code = await serve(service, shutdown_trigger=stopped_by(stop), on_started=start)
    assert code == 1
    assert [e["failed"] for e in logs if e["event"] == "toy.failed"] == ["task flusher"]
