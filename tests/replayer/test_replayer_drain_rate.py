"""A big drain against a fast local service (a small version of `bench/bench_replayer.py`):
asserts only correctness — every event applied exactly once, each key's calls in HLC order,
the newest value kept — and prints the rate, never asserts it (timing belongs to the bench).
Then the same events are redelivered (past the stream's dedup): no call at all; the newest
of each key is `duplicate`, the others `stale`, answered from the versions this instance
remembers."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from shared.envelope import Event
from shared.settings import Settings
from tests.replayer.helpers import count, make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.asyncio(loop_scope="session")]

EVENTS = 5000
KEYS = 500


async def publish_all(js: JetStreamContext, events: list[Event], *, msg_id: bool = True) -> None:
    for start in range(0, len(events), 500):
        await asyncio.gather(*(publish(js, e, msg_id=msg_id) for e in events[start : start + 500]))


async def test_a_big_drain_applies_every_event_once_in_key_order(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    events = [make_event(f"/catalog/b{i % KEYS}", hlc_ms=i, body=b"%d" % i) for i in range(EVENTS)]
    await publish_all(js, events)
    fast = settings.model_copy(
        update={"replayer": settings.replayer.model_copy(update={"concurrency": 128})}
    )
    applied0, duplicate0, stale0 = count("applied"), count("duplicate"), count("stale")
    started = time.monotonic()
    async with Replayer(fast) as replayer:
        await replayer.run_until_idle()
        elapsed = time.monotonic() - started
        assert len(recorder.succeeded) == EVENTS
        assert recorder.repeats == []
        assert count("applied") - applied0 == EVENTS
        by_key: dict[str, list[str]] = {}
        for call in recorder.calls:
            by_key.setdefault(call.path, []).append(call.hlc)
        assert all(stamps == sorted(stamps) for stamps in by_key.values())
        for event in events[-KEYS:]:  # the newest event of each key holds the value
            assert recorder.values[event.path] == (str(event.hlc), event.body)

        await publish_all(js, events, msg_id=False)  # redelivered, past the stream's dedup
        await replayer.run_until_idle()
    assert len(recorder.calls) == EVENTS
    assert count("duplicate") - duplicate0 == KEYS  # the newest of each key
    assert count("stale") - stale0 == EVENTS - KEYS  # the others are older than it
    print(f"\nreplayer drain: {EVENTS} events in {elapsed:.2f} s = {EVENTS / elapsed:.0f}/s")
