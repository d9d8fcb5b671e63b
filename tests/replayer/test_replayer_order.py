"""Per-key order with concurrency and two replayer instances sharing the region's consumer."""

from __future__ import annotations

import random
import time

import pytest
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from shared.regions import replay_consumer, replay_stream
from shared.settings import Settings
from tests.harness.wait import wait_until
from tests.replayer.helpers import REGION, count, make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EVENTS = 1000
KEYS = 20


async def test_two_instances_keep_per_key_hlc_order(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    recorder.max_delay_s = 0.004
    rng = random.Random(5)
    newest: dict[str, str] = {}
    for i in range(EVENTS):
        path = f"/catalog/key-{rng.randrange(KEYS)}"
        event = make_event(path, hlc_ms=i, body=f"v{i}".encode())
        newest[path] = event.event_id
        await publish(js, event)
    applied0, stale0 = count("applied"), count("stale")
    started = time.monotonic()

    async def all_acked() -> bool:
        info = await js.consumer_info(replay_stream(REGION), replay_consumer())
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    async with Replayer(settings) as first, Replayer(settings) as second:
        first.start_consuming()
        second.start_consuming()
        await wait_until(all_acked, 90, interval=0.2, message="every event acked")
    elapsed = time.monotonic() - started

    assert recorder.overlaps == 0, "two calls for one key were in flight at once"
    by_key: dict[str, list[str]] = {}
    for call in recorder.calls:
        assert 200 <= call.status < 300
        by_key.setdefault(call.path, []).append(call.hlc)
    for path, stamps in by_key.items():
        assert stamps == sorted(set(stamps)), path  # strictly increasing
    for path, event_id in newest.items():
        assert recorder.succeeded[event_id].path == path  # the newest of each key was applied
        assert recorder.values[path][0] == recorder.succeeded[event_id].hlc
    assert recorder.repeats == []
    assert count("applied") - applied0 + count("stale") - stale0 == EVENTS
    assert count("applied") - applied0 == len(recorder.calls)
    print(f"{EVENTS} events, 2 instances: {elapsed:.1f} s, {len(recorder.calls)} applied")
