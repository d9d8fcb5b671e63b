"""Graceful shutdown (docs/DESIGN.md §5): while in-flight events finish, none is handed to another
instance (held ones are kept alive), and what the deadline cuts off is nak'ed at once, also
events that were still queued behind an earlier one of their key."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from services.xregion.local.supercluster import SuperCluster
from shared.regions import replay_consumer, replay_stream
from tests.harness.wait import wait_until
from tests.replayer.helpers import REGION, make_event, make_settings, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_events_held_during_the_drain_are_kept_alive(
    js: JetStreamContext, replay_cluster: SuperCluster, recorder: Recorder, tmp_path: Path
) -> None:
    """Seven calls of 0.9 s on one key, then SIGTERM: the drain outlasts ack_wait (4 s), and no
    held event may be redelivered meanwhile (another instance would call it a second time)."""
    settings = make_settings(
        replay_cluster.client_urls(REGION), recorder.url, tmp_path, shutdown_timeout_s=15.0
    )
    path = "/catalog/drain-slow"
    recorder.delays[path] = 0.9
    events = [make_event(path, hlc_ms=i) for i in range(7)]
    for event in events:
        await publish(js, event)
    other = await js.pull_subscribe_bind(durable=replay_consumer(), stream=replay_stream(REGION))
    redelivered: list[Msg] = []
    replayer = Replayer(settings)
    await replayer.__aenter__()
    try:
        replayer.start_consuming()
        await wait_until(lambda: path in recorder.in_flight_keys, 10, message="first call")
        closing = asyncio.get_running_loop().create_task(replayer.aclose())
        while not closing.done():
            try:
                redelivered.extend(await other.fetch(10, timeout=0.3))
            except TimeoutError:
                pass
        await closing
    finally:
        await replayer.aclose()
        await other.unsubscribe()
    assert [m.metadata.num_delivered for m in redelivered] == []
    assert [c.event_id for c in recorder.calls] == [e.event_id for e in events]


async def test_events_cut_off_by_the_deadline_are_nakd_even_if_queued_behind_their_key(
    js: JetStreamContext, replay_cluster: SuperCluster, recorder: Recorder, tmp_path: Path
) -> None:
    settings = make_settings(
        replay_cluster.client_urls(REGION), recorder.url, tmp_path, shutdown_timeout_s=0.3
    )
    path = "/catalog/drain-cut"
    recorder.delays[path] = 2.0
    for i in range(3):
        await publish(js, make_event(path, hlc_ms=i))
    async with Replayer(settings) as replayer:
        replayer.start_consuming()
        await wait_until(lambda: path in recorder.in_flight_keys, 10, message="first call")
    assert replayer.consumer.inflight == 0

    # Nak'ed, they come back at once; left to time out, they would take ack_wait (4 s).
    other = await js.pull_subscribe_bind(durable=replay_consumer(), stream=replay_stream(REGION))
    back: list[Msg] = []

    async def all_back() -> bool:
        with contextlib.suppress(TimeoutError):
            back.extend(await other.fetch(3 - len(back), timeout=0.2))
        return len(back) == 3

    try:
        await wait_until(all_back, 2.0, message="all three nak'ed")
    finally:
        for msg in back:
            await msg.ack()
        await other.unsubscribe()
