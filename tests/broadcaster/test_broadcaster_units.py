"""Pure parts of the broadcaster: the window and its unsent queue, the gate's breaker, which
publish and pull failures are permanent, canary ids, the settings' consistency rules, the pause
command's paths."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY
from pydantic import ValidationError

from services.broadcaster.backlog import BacklogMonitor
from services.broadcaster.canary import canary_event, canary_event_id, canary_message
from services.broadcaster.gate import Gate, State
from services.broadcaster.policy import Policy, RouteCache
from services.broadcaster.publisher import is_permanent, read_puback
from services.broadcaster.window import Held, Window
from shared.envelope import (
    CANARY_SERVICE,
    HDR_CANARY,
    Event,
    canary_target,
    decode,
    encode,
    new_traceparent,
)
from shared.hlc import Hlc
from shared.ids import is_uuid7, uuid7_str, uuid7_time_ms
from shared.puller import PullFailedError
from shared.retry import RetryPolicy
from shared.settings import BroadcasterSettings
from tests.broadcaster.helpers import XREGION


def held(seq: int, size: int = 10) -> Held[str]:
    return Held(seq, size, f"event-{seq}")


# ---------------------------------------------------------------- route cache


POLICY = Policy.build("us-east", ["us-east", "eu-west", "ap-south"], {})


def _event_message(n: int) -> tuple[str, dict[str, str], bytes]:
    event = Event(
        event_id=uuid7_str(),
        origin="us-east",
        service="svc",
        method="PUT",
        path=f"/svc/{n}",
        hlc=Hlc().now(),
        key=f"/svc/{n}",
        body=b"{}",
        trace=new_traceparent(),
    )
    headers, payload = encode(event)
    return "xr.events.us-east.svc", headers, payload


def test_route_cache_computes_once_for_every_reader_then_forgets() -> None:
    cache = RouteCache(POLICY, readers=2, max_entries=10)
    message = _event_message(1)
    first = cache.route(7, *message)
    assert first == POLICY.route(*message)
    assert cache.route(7, *message) is first  # the second reader takes it
    assert len(cache) == 0
    assert cache.route(7, *message) is not first  # a later redelivery is computed again


def test_route_cache_is_bounded_oldest_first() -> None:
    cache = RouteCache(POLICY, readers=2, max_entries=3)
    messages = {seq: _event_message(seq) for seq in range(5)}
    routes = {seq: cache.route(seq, *m) for seq, m in messages.items()}  # the other reader lags
    assert len(cache) == 3
    assert cache.route(0, *messages[0]) is not routes[0]  # evicted: computed again
    assert cache.route(4, *messages[4]) is routes[4]


# ---------------------------------------------------------------- window


def test_every_held_event_may_be_in_flight_whatever_its_key() -> None:
    window: Window[str] = Window(max_events=10, max_bytes=10_000)
    first, second = held(1), held(2)
    assert window.add(first)
    assert window.add(second)
    assert window.add(held(1)) is False  # a redelivery of a held sequence is not held twice
    assert (len(window), window.unsent) == (2, 0)
    window.done(first)
    assert [h.seq for h in window] == [2]


def test_unsent_events_come_back_lowest_sequence_first() -> None:
    window: Window[str] = Window(max_events=10, max_bytes=10_000)
    events = {seq: held(seq) for seq in (4, 1, 3, 2)}
    for each in events.values():
        window.add(each)
        window.queue(each)
    window.queue(events[3])  # queued once only
    window.done(events[2])  # settled meanwhile: leaves the queue
    assert window.unsent == 3
    assert [h.seq for h in iter(window.pop_unsent, None)] == [1, 3, 4]
    assert window.unsent == 0


def test_a_sequence_held_again_after_done_queues_beside_its_old_entry() -> None:
    window: Window[str] = Window(max_events=10, max_bytes=10_000)
    old, again = held(5), held(5)
    window.add(old)
    window.queue(old)
    window.done(old)
    window.add(held(6))
    window.add(again)
    window.queue(again)
    assert window.pop_unsent() is again


def test_room_by_count_and_by_bytes() -> None:
    window: Window[str] = Window(max_events=3, max_bytes=100)
    window.add(held(1))
    assert window.room() == 2
    window.add(held(2, size=95))
    assert window.room() == 0  # bytes reached
    assert window.held_bytes == 105


def test_take_all_returns_everything_in_stream_order() -> None:
    window: Window[str] = Window(max_events=10, max_bytes=10_000)
    for seq in (5, 1, 7, 3):
        window.add(held(seq))
    window.queue(next(iter(window)))
    assert [h.seq for h in window.take_all()] == [1, 3, 5, 7]
    assert (len(window), window.unsent, window.held_bytes) == (0, 0, 0)


# ---------------------------------------------------------------- gate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def gate(clock: Clock) -> Gate:
    return Gate(RetryPolicy.backoff("broadcaster.gate", base_s=1.0, max_s=8.0), clock=clock)


def test_breaker_opens_on_failure_and_probes_once_after_the_delay() -> None:
    clock = Clock()
    g = gate(clock)
    assert g.try_acquire() is True
    delay = g.failure()
    assert 0.5 <= delay <= 1.0
    assert (g.state, g.may_fetch, g.try_acquire()) == (State.OPEN, False, None)
    clock.now += delay
    assert g.try_acquire() is True  # the probe
    assert g.state is State.HALF_OPEN
    assert g.try_acquire() is None  # one probe at a time
    g.success()
    assert (g.state, g.may_fetch, g.try_acquire()) == (State.CLOSED, True, True)


def test_failed_probe_backs_off_longer_and_abandon_frees_the_probe() -> None:
    clock = Clock()
    g = gate(clock)
    first = g.failure()
    clock.now += first
    assert g.try_acquire() is True
    second = g.failure()
    assert second > first
    clock.now += second
    assert g.try_acquire() is True
    g.abandon()
    assert g.try_acquire() is True  # the next caller probes instead


def test_pause_and_stop() -> None:
    g = gate(Clock())
    g.set_paused(True)
    assert (g.try_acquire(), g.may_fetch) == (None, False)
    g.set_paused(False)
    assert g.try_acquire() is True
    g.stop()
    assert (g.try_acquire(), g.may_fetch) == (False, False)


async def test_acquire_waits_for_resume_and_returns_false_on_stop() -> None:
    g = gate(Clock())
    g.set_paused(True)
    waiter = asyncio.ensure_future(g.acquire())
    # A negative check needs a window: still waiting after a while of being paused.
    done, _ = await asyncio.wait({waiter}, timeout=0.2)
    assert not done
    g.set_paused(False)
    assert await asyncio.wait_for(waiter, 10) is True
    g.set_paused(True)
    waiter = asyncio.ensure_future(g.acquire())
    done, _ = await asyncio.wait({waiter}, timeout=0.2)
    assert not done
    g.stop()
    assert await asyncio.wait_for(waiter, 10) is False


# ---------------------------------------------------------------- failure classification


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (
            {"code": 400, "err_code": 10054, "description": "message size exceeds maximum allowed"},
            True,
        ),
        ({"code": 400, "err_code": 10097, "description": "header size exceeds maximum"}, True),
        ({"code": 400, "err_code": 10165, "description": "invalid per-message TTL"}, True),
        ({"code": 400, "err_code": 10166, "description": "per-message TTL is disabled"}, True),
        ({"code": 503, "err_code": 10077, "description": "insufficient resources"}, False),
        (
            {
                "code": 500,
                "err_code": 10008,
                "description": "JetStream system temporarily unavailable",
            },
            False,
        ),
        ({"code": 400, "err_code": 99999, "description": "something new"}, False),
        ({"code": 400}, False),
        ("not an object", False),
    ],
)
def test_only_errors_about_the_message_itself_are_permanent(error: object, permanent: bool) -> None:
    assert is_permanent(error) is permanent


@pytest.mark.parametrize(
    ("data", "read"),
    [
        (b'{"stream":"T","seq":1}', (1, False)),
        (b'{"stream":"T","seq":1,"duplicate": true}', (1, True)),  # as nats-server 2.15 writes
        (b'{"stream":"T","seq":12,"domain":"hub","duplicate":true}', (12, True)),
        (b'{"error":{"code":503,"err_code":10077,"description":"maximum messages"}}', None),
        (b'{"seq":3,"stream":"T"}', None),  # another order: the full parse decides
    ],
)
def test_the_common_puback_is_read_without_json(data: bytes, read: tuple[int, bool] | None) -> None:
    assert read_puback(data) == read


def test_a_failed_pull_tells_a_deleted_consumer_from_no_responders() -> None:
    deleted = PullFailedError("status 409", status="409", description="Consumer Deleted")
    nobody = PullFailedError("status 503", status="503")
    other = PullFailedError("status 409", status="409", description="Leadership Change")
    assert [e.consumer_deleted for e in (deleted, nobody, other)] == [True, False, False]
    assert [e.no_responders for e in (deleted, nobody, other)] == [False, True, False]
    assert not PullFailedError("OSError()").consumer_deleted


def test_canary_ids_are_uuid7_at_the_slot_and_the_same_for_every_instance() -> None:
    a = canary_event_id("us-east", "eu-west", 1_700_000_005_000)
    assert is_uuid7(a)
    assert uuid7_time_ms(a) == 1_700_000_005_000
    assert a == canary_event_id("us-east", "eu-west", 1_700_000_005_000)
    assert a != canary_event_id("us-east", "ap-south", 1_700_000_005_000)
    assert a != canary_event_id("us-east", "eu-west", 1_700_000_010_000)


def test_a_canary_is_a_valid_event_marked_for_its_target() -> None:
    event = canary_event("us-east", "eu-west", slot_ms=1_700_000_005_000, hlc=Hlc())
    subject, headers, payload = canary_message(event, "eu-west")
    assert subject == f"xr.events.us-east.{CANARY_SERVICE}"
    assert headers[HDR_CANARY] == "eu-west"
    assert canary_target(headers) == "eu-west"
    assert canary_target({HDR_CANARY.upper(): " ap-south "}) == "ap-south"
    assert canary_target({"Xr-Origin": "us-east"}) is None
    assert decode(headers, payload) == event


# ---------------------------------------------------------------- settings, CLI paths


def test_window_must_fit_the_consumer_and_waits_the_ack_wait() -> None:
    with pytest.raises(ValidationError, match="max_ack_pending"):
        BroadcasterSettings(window_events=2000, max_ack_pending=1000)
    with pytest.raises(ValidationError, match="ack_wait_s"):
        BroadcasterSettings(publish_timeout_s=20, ack_wait_s=30)
    with pytest.raises(ValidationError, match="retry_base_s"):
        BroadcasterSettings(retry_base_s=10, retry_max_s=1)
    assert BroadcasterSettings().canary_interval_s == 5.0


def test_pause_without_target_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "region.toml"
    config.write_text(
        'region = "us-east"\nregions = ["us-east", "eu-west"]\n[signing]\nmode = "off"\n'
    )
    for command in ("pause", "resume"):
        result = subprocess.run(
            [str(XREGION), command, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert (
            result.stderr.strip()
            .splitlines()[-1]
            .endswith("--target is required" + (" (or --list)" if command == "pause" else ""))
        )


def test_the_lag_gauge_is_the_oldest_events_age_when_scraped() -> None:
    """Between two polls the lag keeps growing with the clock: the gauge is computed at
    scrape time from when the oldest owed event was stored, not set at the last poll."""
    now = [1_000.0]
    monitor = BacklogMonitor(
        NATS().jetstream(), region="us-east", targets=["ap-south"], interval_s=60,
        wall_s=lambda: now[0],
    )  # fmt: skip
    reading = monitor.readings["ap-south"]

    def scraped() -> float | None:
        return REGISTRY.get_sample_value("xr_broadcaster_lag_seconds", {"target": "ap-south"})

    assert reading.lag_s is None
    assert scraped() == 0.0  # before the first read: nothing known, nothing owed
    reading.oldest_s = 990.0
    assert scraped() == 10.0
    now[0] = 1_030.0
    assert scraped() == 40.0
    reading.oldest_s = 0.0  # nothing owed any more
    assert scraped() == 0.0
