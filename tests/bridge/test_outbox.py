"""The outbox on a real SQLite file, and the drainer and delivery against a scripted
publisher (a seam the bridge owns: the JetStream side is covered by the integration tests,
tests/bridge/test_refused.py for events the stream refuses for good)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest

from services.bridge.deadletters import DeadLetters
from services.bridge.delivery import Delivered, Delivery, Outcome
from services.bridge.drainer import Drainer
from services.bridge.outbox import Outbox, OutboxFullError, OutboxLockedError
from services.bridge.publisher import PublishRefusedError, PublishUnknownError
from shared.dlq import HDR_DLQ_BODY, PUBLISH_REFUSED
from shared.envelope import HDR_DLQ_REASON, Event, EventTooLargeError, new_traceparent
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.retry import RetryPolicy
from shared.tasks import TaskSet
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
    """Fails while `down` (dead letters too while `dlq_down`), refuses ids in `too_large` (over
    max_payload) and in `refused` (by the stream, for good), records what it acked."""

    def __init__(self) -> None:
        self.down = False
        self.dlq_down = False
        self.too_large: set[str] = set()
        self.refused: set[str] = set()
        self.acked: list[str] = []
        self.letters: list[tuple[str, dict[str, str], bytes]] = []
        self.gate: asyncio.Event | None = None  # when set: each publish waits for it
        self.waiting = 0

    async def publish(
        self,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        *,
        timeout_s: float,
        block: bytes | None = None,
    ) -> object:
        msg_id = headers["Nats-Msg-Id"]
        if self.gate is not None:
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        if msg_id in self.too_large:
            raise EventTooLargeError(10, 5)
        if msg_id in self.refused:
            raise PublishRefusedError(10054, "message size exceeds maximum allowed")
        if self.down or (self.dlq_down and subject.startswith("xr.dlq.")):
            raise PublishUnknownError("down")
        if subject.startswith("xr.dlq."):
            self.letters.append((subject, dict(headers), payload))
        self.acked.append(msg_id)
        return None


def drainer_for(outbox: Outbox, publisher: ScriptedPublisher, *, batch: int) -> Drainer:
    return Drainer(
        outbox,
        publisher,
        dead_letters=dead_letters(publisher),
        batch=batch,
        timeout_s=1.0,
        retry=RetryPolicy.backoff("bridge.outbox", base_s=0.01, max_s=0.05),
    )


def delivery_for(
    outbox: Outbox,
    publisher: ScriptedPublisher,
    *,
    tasks: TaskSet | None = None,
    connected: Callable[[], bool] = lambda: True,
    on_spooled: Callable[[], None] = lambda: None,
) -> Delivery:
    return Delivery(
        publisher,
        outbox,
        dead_letters=dead_letters(publisher),
        timeout_s=1.0,
        connected=connected,
        on_spooled=on_spooled,
        tasks=TaskSet("deliveries") if tasks is None else tasks,
    )


def dead_letters(publisher: ScriptedPublisher) -> DeadLetters:
    return DeadLetters(publisher, region="us-east", max_payload=lambda: 1_000, timeout_s=1.0)


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
    drainer = drainer_for(outbox, publisher, batch=3)
    for n in range(7):
        await put(outbox, n, b"%d" % n)
    publisher.down = True
    assert not await drainer.drain_pass()
    assert outbox.depth == 7
    publisher.down = False
    assert await drainer.drain(timeout_s=10)
    assert publisher.acked == [f"id-{n}" for n in range(7)]
    assert outbox.depth == 0


async def test_drainer_dead_letters_what_can_never_be_published(outbox: Outbox) -> None:
    publisher = ScriptedPublisher()
    publisher.too_large = {"id-1"}
    publisher.refused = {"id-2"}
    drainer = drainer_for(outbox, publisher, batch=10)
    await put(outbox, 0)
    await put(outbox, 1, b"x" * 2_000)  # the letter would not fit max_payload with it
    await put(outbox, 2, b"kept")
    await put(outbox, 3)
    assert await drainer.drain_pass()  # one pass: the good ones are not held back
    assert outbox.depth == 0
    assert [m for m in publisher.acked if not m.startswith("pub:")] == ["id-0", "id-3"]
    letters = {h["Nats-Msg-Id"]: (subject, h, body) for subject, h, body in publisher.letters}
    assert sorted(letters) == ["pub:id-1", "pub:id-2"]
    for subject, h, _ in letters.values():
        assert subject == "xr.dlq.us-east.us-east.svc"
        assert h[HDR_DLQ_REASON] == PUBLISH_REFUSED
    assert letters["pub:id-1"][2] == b""
    assert "2000 bytes" in letters["pub:id-1"][1][HDR_DLQ_BODY]
    assert letters["pub:id-2"][2] == b"kept"
    assert "err_code 10054" in letters["pub:id-2"][1]["Xr-Dlq-Error"]


async def test_drainer_keeps_a_refused_entry_until_its_dead_letter_is_stored(
    outbox: Outbox,
) -> None:
    publisher = ScriptedPublisher()
    publisher.refused = {"id-0"}
    publisher.dlq_down = True
    drainer = drainer_for(outbox, publisher, batch=10)
    for n in range(3):
        await put(outbox, n)
    assert not await drainer.drain_pass()  # the entry is kept: the pass is not a success
    assert publisher.acked == ["id-1", "id-2"]
    assert [e.event_id for e in await outbox.oldest(10)] == ["id-0"]
    publisher.dlq_down = False
    assert await drainer.drain_pass()
    assert outbox.depth == 0
    assert publisher.acked == ["id-1", "id-2", "pub:id-0"]


async def test_delivery_dead_letters_a_refused_event_or_spools_it(outbox: Outbox) -> None:
    publisher = ScriptedPublisher()
    delivery = delivery_for(outbox, publisher)
    refused, unstored = event("/r"), event("/s")
    publisher.refused = {refused.event_id, unstored.event_id}
    headers_r = {"Nats-Msg-Id": refused.event_id}
    delivered = await delivery.deliver(refused, "xr.events.us-east.svc", headers_r, b"body")
    assert delivered == Delivered(Outcome.FAILED, dead_lettered=True)
    ((subject, letter, body),) = publisher.letters
    assert (subject, letter["Nats-Msg-Id"], body) == (
        "xr.dlq.us-east.us-east.svc",
        f"pub:{refused.event_id}",
        b"body",
    )
    assert outbox.depth == 0
    # No dead letter either: the event is kept in the outbox (nothing is lost).
    publisher.dlq_down = True
    headers_s = {"Nats-Msg-Id": unstored.event_id}
    delivered = await delivery.deliver(unstored, "xr.events.us-east.svc", headers_s, b"")
    assert delivered == Delivered(Outcome.SPOOLED)
    assert [e.event_id for e in await outbox.oldest(10)] == [unstored.event_id]


async def test_delivery_publishes_or_spools_and_keeps_key_order(outbox: Outbox) -> None:
    publisher = ScriptedPublisher()
    drainer = drainer_for(outbox, publisher, batch=10)
    connected = True
    delivery = delivery_for(outbox, publisher, connected=lambda: connected, on_spooled=drainer.wake)

    async def deliver(key: str) -> tuple[str, Outcome]:
        e = event(key)
        delivered = await delivery.deliver(e, "s", {"Nats-Msg-Id": e.event_id}, b"")
        return e.event_id, delivered.outcome

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
    assert await delivery.deliver(too_large, "s", headers_d, b"") == Delivered(Outcome.FAILED)


async def test_a_cancelled_caller_hands_its_event_to_a_delivery_of_its_own(
    outbox: Outbox,
) -> None:
    """The publish runs in the caller's task; a caller cancelled while it waits for the ack
    (the HTTP server's shutdown deadline) must not take the event with it."""
    publisher = ScriptedPublisher()
    tasks = TaskSet("deliveries")
    delivery = delivery_for(outbox, publisher, tasks=tasks)
    e = event("/c")
    publisher.gate = asyncio.Event()

    async def cancelled_while_publishing() -> None:
        caller = asyncio.get_running_loop().create_task(
            delivery.deliver(e, "s", {"Nats-Msg-Id": e.event_id}, b"")
        )
        await wait_until(lambda: publisher.waiting == 1, 5)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller

    await cancelled_while_publishing()
    assert len(tasks) == 1  # the event's new delivery, publishing it again under its id
    publisher.gate.set()
    assert await tasks.wait(5)
    assert publisher.acked == [e.event_id]
    assert outbox.depth == 0
    # The shutdown deadline cancels that delivery too: it ends there, handing nothing on.
    publisher.gate.clear()
    await cancelled_while_publishing()
    await wait_until(lambda: publisher.waiting == 1 and len(tasks) == 1, 5)
    await tasks.cancel("shutdown deadline")
    assert len(tasks) == 0
    assert publisher.waiting == 0


async def test_a_caller_cancelled_while_its_event_is_spooled_does_not_stop_the_spool(
    outbox: Outbox,
) -> None:
    publisher = ScriptedPublisher()
    publisher.down = True
    tasks = TaskSet("deliveries")
    delivery = delivery_for(outbox, publisher, tasks=tasks)
    e = event("/s")
    caller = asyncio.get_running_loop().create_task(
        delivery.deliver(e, "s", {"Nats-Msg-Id": e.event_id}, b"")
    )
    await wait_until(lambda: len(tasks) == 1, 5, interval=0)  # the spool has started
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert await tasks.wait(5)
    assert [entry.event_id for entry in await outbox.oldest(10)] == [e.event_id]
    assert outbox.depth == 1  # the row and the count, not one without the other
