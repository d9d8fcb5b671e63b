"""The outbox on a real SQLite file, and the drainer and delivery against a scripted
publisher (a seam the bridge owns: the JetStream side is covered by the integration tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest

from services.bridge.delivery import Delivery, Outcome
from services.bridge.drainer import Drainer
from services.bridge.outbox import Outbox, OutboxFullError, OutboxLockedError
from services.bridge.publisher import PublishUnknownError
from shared.envelope import Event, EventTooLargeError, new_traceparent
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.natsconn import Backoff
from tests.harness.wait import wait_until


def headers(n: int) -> dict[str, str]:
    return {"Nats-Msg-Id": f"id-{n}", "Xr-Service": "svc"}


async def put(box: Outbox, n: int, payload: bytes = b"", key: str = "/k") -> int:
    return await box.put(f"id-{n}", key, "xr.events.us-east.svc", headers(n), payload)


def event(key: str) -> Event:
    return Event(
        event_id=uuid7_str(),
        origin="us-east",
        service="svc",
        method="PUT",
        path=key,
        hlc=HlcStamp(1, 0),
        key=key,
        body=b"",
        trace=new_traceparent(),
    )


class ScriptedPublisher:
    """Fails while `down`, refuses ids in `too_large`, records what it acked."""

    def __init__(self) -> None:
        self.down = False
        self.too_large: set[str] = set()
        self.acked: list[str] = []

    async def publish(
        self,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        *,
        timeout_s: float,
        wire_bytes: int | None = None,
    ) -> object:
        msg_id = headers["Nats-Msg-Id"]
        if msg_id in self.too_large:
            raise EventTooLargeError(10, 5)
        if self.down:
            raise PublishUnknownError("down")
        self.acked.append(msg_id)
        return None


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[Outbox]:
    async with Outbox(tmp_path / "outbox.sqlite3", max_bytes=10_000) as box:
        yield box


async def test_entries_come_back_in_order_and_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    async with Outbox(path, max_bytes=10_000) as box:
        for n in range(5):
            await put(box, n, b"body %d" % n, key=f"/k{n % 2}")
        assert box.depth == 5
        first_two = await box.oldest(2)
        await box.remove(e.seq for e in first_two)
    async with Outbox(path, max_bytes=10_000) as box:
        assert box.depth == 3
        assert box.holds("/k0")
        entries = await box.oldest(10)
        await box.remove([entries[1].seq])
        assert not box.holds("/k1")
    assert [e.event_id for e in entries] == ["id-2", "id-3", "id-4"]
    assert [e.key for e in entries] == ["/k0", "/k1", "/k0"]
    assert entries[0].payload == b"body 2"
    assert entries[0].headers == headers(2)
    assert entries[0].subject == "xr.events.us-east.svc"


async def test_a_full_outbox_refuses_and_one_owner_at_a_time(outbox: Outbox) -> None:
    await put(outbox, 1, b"x" * 9_000)
    with pytest.raises(OutboxFullError):
        await put(outbox, 2, b"x" * 2_000)
    assert outbox.depth == 1
    assert outbox.is_full
    with pytest.raises(OutboxLockedError):
        async with Outbox(outbox.path, max_bytes=10_000):
            pass


async def test_drainer_republishes_in_order_and_deletes_only_acked(outbox: Outbox) -> None:
    publisher = ScriptedPublisher()
    drainer = Drainer(outbox, publisher, batch=3, timeout_s=1.0, backoff=Backoff(0.01, 0.05))
    for n in range(7):
        await put(outbox, n, b"%d" % n)
    publisher.down = True
    assert not await drainer.drain_pass()
    assert outbox.depth == 7
    publisher.down = False
    assert await drainer.drain(timeout_s=10)
    assert publisher.acked == [f"id-{n}" for n in range(7)]
    assert outbox.depth == 0


async def test_drainer_drops_what_can_never_be_published(outbox: Outbox) -> None:
    publisher = ScriptedPublisher()
    publisher.too_large = {"id-1"}
    drainer = Drainer(outbox, publisher, batch=10, timeout_s=1.0, backoff=Backoff(0.01, 0.05))
    for n in range(3):
        await put(outbox, n)
    assert await drainer.drain(timeout_s=10)
    assert publisher.acked == ["id-0", "id-2"]


async def test_delivery_publishes_or_spools_and_keeps_key_order(outbox: Outbox) -> None:
    publisher = ScriptedPublisher()
    drainer = Drainer(outbox, publisher, batch=10, timeout_s=1.0, backoff=Backoff(0.01, 0.05))
    connected = True
    delivery = Delivery(
        publisher,
        outbox,
        timeout_s=1.0,
        connected=lambda: connected,
        on_spooled=drainer.wake,
    )

    async def deliver(key: str) -> tuple[str, Outcome]:
        e = event(key)
        outcome = await delivery.deliver(e, "s", {"Nats-Msg-Id": e.event_id}, b"")
        return e.event_id, outcome

    first, outcome = await deliver("/a")
    assert outcome is Outcome.PUBLISHED
    publisher.down = True
    second, outcome = await deliver("/a")
    assert outcome is Outcome.SPOOLED
    publisher.down = False
    # An earlier event of /a waits in the outbox: the next one queues behind it ...
    third, outcome = await deliver("/a")
    assert outcome is Outcome.SPOOLED
    # ... while another key goes straight through.
    other, outcome = await deliver("/b")
    assert outcome is Outcome.PUBLISHED
    connected = False
    fourth, outcome = await deliver("/c")
    assert outcome is Outcome.SPOOLED  # no publish attempt while disconnected
    connected = True
    task = asyncio.get_running_loop().create_task(drainer.run())
    try:
        await wait_until(lambda: outbox.depth == 0, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert publisher.acked == [first, other, second, third, fourth]
    too_large = event("/d")
    publisher.too_large = {too_large.event_id}
    headers_d = {"Nats-Msg-Id": too_large.event_id}
    assert await delivery.deliver(too_large, "s", headers_d, b"") is Outcome.FAILED
