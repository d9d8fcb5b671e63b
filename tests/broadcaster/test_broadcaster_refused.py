"""Events a target can never store: dead-lettered in the broadcaster's own region, so the rest
of their key (and the target) goes on. Here ap-south's replay stream takes at most
`SMALL_LIMIT` bytes per message, so one large event is refused for good (err_code 10054) while
eu-west takes everything."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RawStreamMsg, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from services.broadcaster.forwarder import FORWARD_REFUSED
from services.broadcaster.gate import State
from services.broadcaster.publisher import Failure, Publisher
from services.broadcaster.service import Broadcaster
from services.xregion.local.supercluster import SuperCluster
from services.xregion.ops.dlq import Selection, run_dlq
from services.xregion.ops.trace import run_trace
from shared.dlq import HDR_DLQ_BODY
from shared.envelope import (
    HDR_DLQ_AT,
    HDR_DLQ_ERROR,
    HDR_DLQ_REASON,
    HDR_DLQ_TARGET,
    HDR_EVENT_ID,
    HDR_MSG_ID,
)
from shared.ids import uuid7_str
from shared.natsconn import NatsConnection
from shared.regions import (
    broadcast_consumer,
    dlq_stream,
    dlq_subject,
    events_stream,
    replay_stream,
    replay_subject,
)
from tests.broadcaster.helpers import JS_TRANSIENT, ORIGIN, Producer, bc_settings, count_replay
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="package")]

REFUSING = "ap-south"
ACCEPTING = "eu-west"
SMALL_LIMIT = 2048
BIG_BODY = 8192


@pytest_asyncio.fixture(loop_scope="package")
async def small_replay(js: JetStreamContext) -> AsyncIterator[None]:
    """ap-south's replay stream refuses messages over SMALL_LIMIT bytes, for this test."""
    old = await _set_max_msg_size(js, replay_stream(REFUSING), SMALL_LIMIT)
    try:
        yield
    finally:
        await _set_max_msg_size(js, replay_stream(REFUSING), old)


async def _set_max_msg_size(js: JetStreamContext, stream: str, limit: int) -> int:
    """Set a stream's max_msg_size; the value it had."""

    async def update() -> int:
        config = (await js.stream_info(stream)).config
        old = config.max_msg_size if config.max_msg_size is not None else -1
        await js.update_stream(dataclasses.replace(config, max_msg_size=limit))
        return old

    return await wait_until(update, 15, interval=0.2, ignore=JS_TRANSIENT, message=stream)


async def _send_big(producer: Producer) -> tuple[str, int]:
    """One event too large for the refusing target; its event id and stream sequence."""
    event = dataclasses.replace(producer.event(len(producer.sent)), body=b"b" * BIG_BODY)
    await producer.send_event(event)
    sent = producer.sent[-1]
    return sent.event_id, sent.seq


async def _dead_letter(js: JetStreamContext, service: str) -> RawStreamMsg | None:
    try:
        return await js.get_last_msg(dlq_stream(ORIGIN), dlq_subject(ORIGIN, ORIGIN, service))
    except NotFoundError:
        return None


async def _acked_past(js: JetStreamContext, target: str, seq: int) -> bool:
    info = await js.consumer_info(events_stream(ORIGIN), broadcast_consumer(target))
    return info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= seq


def _outcome(target: str, outcome: str) -> float:
    labels = {"origin": ORIGIN, "target": target, "outcome": outcome}
    return REGISTRY.get_sample_value("xr_broadcaster_forwarded_total", labels) or 0.0


def _dead_lettered(target: str) -> float:
    return _outcome(target, "dead_lettered")


async def test_a_refused_event_is_dead_lettered_and_its_key_goes_on(
    cluster: SuperCluster,
    js: JetStreamContext,
    small_replay: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # One key: a large event first, two small ones after it. Before, the large one was retried
    # forever and the small ones never reached ap-south.
    producer = Producer(js, "refused-key", keys=1)
    big_id, big_seq = await _send_big(producer)
    await producer.send(2)
    counted = _dead_lettered(REFUSING)

    with capture_logs() as logs:
        async with Broadcaster(bc_settings(cluster)) as broadcaster:
            await wait_until(
                lambda: _counts_are(js, producer.service, {REFUSING: 2, ACCEPTING: 3}),
                20,
                message="the later events of the key reached ap-south, all reached eu-west",
            )
            letter = await wait_until(
                lambda: _dead_letter(js, producer.service), 10, message="dead letter stored"
            )
            await wait_until(lambda: _acked_past(js, REFUSING, big_seq), 10, message="source acked")
            assert broadcaster.forwarders[REFUSING].gate.state is State.CLOSED

    assert letter is not None
    headers = letter.headers or {}
    assert headers[HDR_EVENT_ID] == big_id
    assert headers[HDR_DLQ_REASON] == FORWARD_REFUSED
    assert REFUSING in headers[HDR_DLQ_ERROR]
    assert "message size exceeds maximum allowed" in headers[HDR_DLQ_ERROR]
    assert headers[HDR_MSG_ID] == f"fwd:{REFUSING}:{big_seq}"
    assert headers[HDR_DLQ_TARGET] == REFUSING
    assert headers[HDR_DLQ_AT]
    assert letter.data == b"b" * BIG_BODY
    assert _dead_lettered(REFUSING) == counted + 1
    lines = [e for e in logs if e["event"] == "broadcaster.dead_lettered"]
    assert len(lines) == 1
    (line,) = lines
    assert line["log_level"] == "error"
    assert (line["event_id"], line["origin"], line["service"], line["target"]) == (
        big_id,
        ORIGIN,
        producer.service,
        REFUSING,
    )
    assert line["trace_id"]
    # `xregion dlq list` of the region shows it.
    selection = Selection(region=ORIGIN, service=producer.service)
    assert await run_dlq(bc_settings(cluster), "list", selection, yes=False) == 0
    row = capsys.readouterr().out.splitlines()[-1]
    assert FORWARD_REFUSED in row
    assert big_id in row
    # `xregion trace` tells the two targets apart: refused by one, forwarded to the other.
    assert await run_trace(bc_settings(cluster), big_id, window_s=60) == 0
    traced = capsys.readouterr().out
    assert re.search(rf"^  {REFUSING} +refused +dead letter XR_DLQ_US_EAST seq \d+: ", traced, re.M)
    assert re.search(rf"^  {ACCEPTING} +forwarded +XR_REPLAY_EU_WEST seq \d+", traced, re.M)
    # Once ap-south takes such events, `xregion dlq replay` sends it there, and only there.
    await _set_max_msg_size(js, replay_stream(REFUSING), -1)
    assert await run_dlq(bc_settings(cluster), "replay", selection, yes=False) == 0
    await wait_until(
        lambda: _counts_are(js, producer.service, {REFUSING: 3, ACCEPTING: 3}),
        20,
        message="the replayed event in ap-south's replay stream",
    )
    assert await _dead_letter(js, producer.service) is None


async def _set_dlq(js: JetStreamContext, config: StreamConfig) -> None:
    async def update() -> bool:
        await js.update_stream(config)
        return True

    await wait_until(update, 15, interval=0.2, ignore=JS_TRANSIENT, message=config.name or "")


@contextlib.asynccontextmanager
async def _dlq_changed(js: JetStreamContext, **changes: Any) -> AsyncIterator[StreamConfig]:
    """This region's DLQ stream with `changes` to its config (yields the old one), put back
    afterwards, also if the test put it back itself."""
    old = (await js.stream_info(dlq_stream(ORIGIN))).config
    await _set_dlq(js, dataclasses.replace(old, **changes))
    try:
        yield old
    finally:
        await _set_dlq(js, old)


async def test_the_source_waits_for_a_dead_letter_that_cannot_be_stored(
    cluster: SuperCluster, js: JetStreamContext, small_replay: None
) -> None:
    # The region's own DLQ cannot take the dead letter for now (full, discarding new messages:
    # err_code 10077, which may pass): the source must stay unacked, and the dead letter goes
    # again until the DLQ takes it. Later events of its key do not wait for it (no per-key
    # lanes: the target's replayer orders them).
    producer = Producer(js, "refused-dlq-down", keys=1)
    _, big_seq = await _send_big(producer)
    await producer.send(1)
    await js.publish(
        dlq_subject(ORIGIN, ORIGIN, "dlq-filler"), b"", headers={"Nats-Msg-Id": uuid7_str()}
    )
    held = (await js.stream_info(dlq_stream(ORIGIN))).state.messages
    with capture_logs() as logs:
        async with (
            _dlq_changed(js, max_msgs=held, discard=DiscardPolicy.NEW) as old,
            Broadcaster(bc_settings(cluster)) as broadcaster,
        ):
            await wait_until(
                lambda: any(e["event"] == "broadcaster.dead_letter_failed" for e in logs),
                20,
                message="the dead letter was refused by the DLQ",
            )
            await wait_until(
                lambda: _counts_are(js, producer.service, {REFUSING: 1, ACCEPTING: 2}),
                20,
                message="the later event of the key went on meanwhile",
            )
            assert not await _acked_past(js, REFUSING, big_seq), "acked without dead letter"
            assert await _dead_letter(js, producer.service) is None

            await _set_dlq(js, old)
            letter = await wait_until(
                lambda: _dead_letter(js, producer.service), 20, message="dead letter stored"
            )
            assert letter is not None
            assert await _counts_are(js, producer.service, {REFUSING: 1, ACCEPTING: 2})
            assert letter.data == b"b" * BIG_BODY  # the whole letter: nothing was refused for good
            await wait_until(lambda: _acked_past(js, REFUSING, big_seq), 10, message="source acked")
            assert broadcaster.forwarders[ACCEPTING].gate.state is State.CLOSED


async def test_a_dlq_that_refuses_the_letter_for_good_gets_a_slim_one(
    cluster: SuperCluster, js: JetStreamContext, small_replay: None
) -> None:
    producer = Producer(js, "refused-dlq-slim", keys=1)
    big_id, big_seq = await _send_big(producer)
    await producer.send(1)
    # The whole letter (8 KiB of body) is over the DLQ's limit, a slim one is not.
    async with _dlq_changed(js, max_msg_size=SMALL_LIMIT), Broadcaster(bc_settings(cluster)):
        await wait_until(
            lambda: _counts_are(js, producer.service, {REFUSING: 1, ACCEPTING: 2}),
            20,
            message="the key went on once the slim letter was stored",
        )
        await wait_until(lambda: _acked_past(js, REFUSING, big_seq), 10, message="source acked")
    letter = await _dead_letter(js, producer.service)
    assert letter is not None
    headers = letter.headers or {}
    assert not letter.data
    assert (headers[HDR_EVENT_ID], headers[HDR_DLQ_TARGET]) == (big_id, REFUSING)
    assert headers[HDR_MSG_ID] == f"fwd:{REFUSING}:{big_seq}"
    assert "the DLQ refused them" in headers[HDR_DLQ_BODY]
    assert "message size exceeds maximum allowed" in headers[HDR_DLQ_BODY]


async def test_a_dlq_that_refuses_even_a_slim_letter_never_holds_the_key_back(
    cluster: SuperCluster, js: JetStreamContext, small_replay: None
) -> None:
    producer = Producer(js, "refused-dlq-nowhere", keys=1)
    big_id, big_seq = await _send_big(producer)
    await producer.send(1)
    dropped = _outcome(REFUSING, "dropped")
    with capture_logs() as logs:
        async with _dlq_changed(js, max_msg_size=64), Broadcaster(bc_settings(cluster)):
            await wait_until(
                lambda: _counts_are(js, producer.service, {REFUSING: 1, ACCEPTING: 2}),
                20,
                message="the key went on without any dead letter",
            )
            await wait_until(lambda: _acked_past(js, REFUSING, big_seq), 10, message="source acked")
    assert await _dead_letter(js, producer.service) is None
    assert _outcome(REFUSING, "dropped") == dropped + 1
    (line,) = [e for e in logs if e["event"] == "broadcaster.dropped"]
    assert (line["event_id"], line["target"], line["log_level"]) == (big_id, REFUSING, "error")
    assert "message size exceeds maximum allowed" in line["dead_letter_error"]


async def _refused(conn: NatsConnection, subject: str, payload: bytes) -> Failure:
    """Publish one message that must fail; its failure."""
    failures: list[Failure] = []

    async def acked(item: str, seq: int, duplicate: bool) -> None:
        raise AssertionError(f"{subject}: a message that had to be refused was stored")

    publisher: Publisher[str] = Publisher(
        conn.nc, timeout_s=5.0, on_acked=acked, on_failed=lambda _, f: failures.append(f)
    )
    await publisher.start()
    try:
        await publisher.publish("one", subject, payload, {"Nats-Msg-Id": uuid7_str()})
        await wait_until(lambda: bool(failures), 10, message=f"{subject} refused")
    finally:
        await publisher.aclose()
    (failure,) = failures
    return failure


async def test_a_frame_over_max_payload_fails_for_good(conn: NatsConnection) -> None:
    payload = b"x" * conn.nc.max_payload
    failure = await _refused(conn, f"xr.replay.{ACCEPTING}.{ORIGIN}.big", payload)
    assert failure.permanent
    assert not failure.answered  # found out here: says nothing of the target (the breaker)
    assert "max_payload" in failure.reason
    assert conn.is_connected


async def test_a_stream_refusal_is_permanent_and_answered(
    conn: NatsConnection, small_replay: None
) -> None:
    subject = f"xr.replay.{REFUSING}.{ORIGIN}.refused-probe"
    failure = await _refused(conn, subject, b"x" * BIG_BODY)
    assert failure.permanent
    assert failure.answered
    assert "message size exceeds maximum allowed" in failure.reason


async def _counts_are(js: JetStreamContext, service: str, wanted: dict[str, int]) -> bool:
    return all([await count_replay(js, t, service) == n for t, n in wanted.items()])


async def test_an_event_naming_another_origin_is_dead_lettered_and_the_path_goes_on(
    cluster: SuperCluster, js: JetStreamContext
) -> None:
    """An event in us-east's stream that claims to come from eu-west (forged, or written with
    a stolen credential) would be published under eu-west's replay subject, which us-east's
    broadcaster may never publish to: it is dead-lettered instead, and the events after it
    reach their target."""
    producer = Producer(js, "forged-origin", keys=10)
    forged = dataclasses.replace(producer.event(0), origin=ACCEPTING)
    await producer.send_event(forged)
    await producer.send(3)

    async def letter() -> RawStreamMsg | None:
        try:
            subject = dlq_subject(ORIGIN, ACCEPTING, producer.service)
            return await js.get_last_msg(dlq_stream(ORIGIN), subject)
        except NotFoundError:
            return None

    with capture_logs() as logs:
        async with Broadcaster(bc_settings(cluster)):
            await wait_until(
                lambda: _counts_are(js, producer.service, {REFUSING: 3, ACCEPTING: 3}),
                20,
                message="the events after the forged one reached both targets",
            )
            found = await wait_until(letter, 10, message="the forged event's dead letter")
            await wait_until(
                lambda: _acked_past(js, REFUSING, producer.sent[0].seq), 10, message="acked"
            )

    assert found is not None
    headers = found.headers or {}
    assert headers[HDR_EVENT_ID] == forged.event_id
    assert "is not 'us-east'" in headers[HDR_DLQ_ERROR]
    subject = replay_subject(REFUSING, ACCEPTING, producer.service)
    info = await js.stream_info(replay_stream(REFUSING), subjects_filter=subject)
    assert not (info.state.subjects or {}).get(subject), "the forged event was forwarded"
    assert [e["origin"] for e in logs if e["event"] == "broadcaster.foreign_origin"] == [ACCEPTING]
