"""Response bodies are not the replayer's business: a replayed write's outcome is its status.
A large or endless body is neither buffered nor waited for; a small one is drained so the
connection goes back to the pool."""

from __future__ import annotations

import pytest
from nats.js import JetStreamContext

from services.replayer.request import build_request
from services.replayer.service import Replayer
from services.replayer.upstream import Upstream
from shared.settings import ServiceSettings, Settings
from tests.harness.wait import wait_until
from tests.replayer.helpers import count, dead_letters, make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

_BIG = 64 * 1024 * 1024


async def test_a_large_body_is_not_read_and_the_write_is_applied(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    """64 MiB answer to a PUT: applied once, and the service could not push even half of it
    (the replayer hung up after a bounded prefix instead of reading it all into memory)."""
    recorder.streams["/catalog/big"] = _BIG
    event = make_event("/catalog/big")
    applied = count("applied")
    await publish(js, event)
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    await wait_until(lambda: "/catalog/big" in recorder.streamed, 10,
                     message="the service's handler finished")  # fmt: skip
    sent = recorder.streamed["/catalog/big"]
    assert [c.event_id for c in recorder.calls] == [event.event_id]
    assert count("applied") - applied == 1
    assert sent < _BIG // 2


async def test_an_endless_body_does_not_hold_the_event(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    """A 200 whose body never ends is applied at once (the status decides), the service is
    called once, and the connection is closed (else its handler would stream forever)."""
    recorder.streams["/catalog/endless"] = None
    event = make_event("/catalog/endless")
    applied = count("applied")
    await publish(js, event)
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
        await wait_until(lambda: "/catalog/endless" in recorder.streamed, 10,
                         message="the endless answer cut off by the replayer")  # fmt: skip
    assert [(c.event_id, c.status) for c in recorder.calls] == [(event.event_id, 200)]
    assert count("applied") - applied == 1
    assert await dead_letters(js) == []


async def test_an_endless_error_body_keeps_its_status(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    """A 422 with an endless body is dead-lettered as http_422 after one call, not retried
    as a timeout."""
    recorder.script["/catalog/endless-422"] = [422]
    recorder.streams["/catalog/endless-422"] = None
    await publish(js, make_event("/catalog/endless-422"))
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert [c.status for c in recorder.calls] == [422]
    [letter] = await dead_letters(js)
    assert letter["Xr-Dlq-Reason"] == "http_422"


async def test_a_body_that_stalls_after_the_status_does_not_undo_it(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    """Status and a first chunk, then silence: the drain ends at the upstream timeout, the
    200 stands (applied, one call), no retry as if the service had never answered."""
    recorder.stalls.add("/catalog/stall")
    event = make_event("/catalog/stall")
    applied = count("applied")
    await publish(js, event)
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert [(c.event_id, c.status) for c in recorder.calls] == [(event.event_id, 200)]
    assert count("applied") - applied == 1


async def test_a_small_body_is_drained_and_the_connection_reused(settings: Settings) -> None:
    async with Recorder(streams={"/catalog/small": 4096}) as service:
        services = {"catalog": ServiceSettings(upstream=service.url, routes=["/catalog"])}
        async with Upstream(settings.replayer) as up:
            for _ in range(3):
                request = build_request(make_event("/catalog/small"), services)
                assert (await up.call(request, "catalog")).status == 200
    assert len(set(service.peers)) == 1, service.peers
    assert service.streamed["/catalog/small"] == 4096
