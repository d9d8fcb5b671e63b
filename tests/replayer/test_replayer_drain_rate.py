"""Drain rate of a backlog against a fast local service (a small version of the `make bench`
benchmark; prints events/s, asserts only that everything is applied once)."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from shared.settings import Settings
from tests.replayer.helpers import make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

EVENTS = 5000


async def test_drain_rate_one_instance(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    events = [make_event(f"/catalog/b{i % 500}", hlc_ms=i) for i in range(EVENTS)]
    for start in range(0, EVENTS, 500):
        await asyncio.gather(*(publish(js, e) for e in events[start : start + 500]))
    fast = settings.model_copy(
        update={"replayer": settings.replayer.model_copy(update={"concurrency": 128})}
    )
    started = time.monotonic()
    async with Replayer(fast, retry_waits=False) as replayer:
        await replayer.run_until_idle()
    elapsed = time.monotonic() - started
    assert len(recorder.succeeded) == EVENTS
    assert recorder.repeats == []
    print(f"\nreplayer drain: {EVENTS} events in {elapsed:.2f} s = {EVENTS / elapsed:.0f}/s")
