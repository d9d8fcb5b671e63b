"""UUIDv7 ids: layout, order under any clock, parsing helpers."""

from __future__ import annotations

import itertools
import time
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.ids import Uuid7Generator, is_uuid7, uuid7, uuid7_str, uuid7_time_ms

MAX_MS = (1 << 48) - 1


class SteppingClock:
    """A wall clock the test moves by hand."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def test_version_and_variant_bits() -> None:
    u = uuid7()
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert (u.int >> 76) & 0xF == 0x7
    assert (u.int >> 62) & 0b11 == 0b10


def test_ten_thousand_ids_in_a_tight_loop_strictly_increase() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    texts = [str(u) for u in ids]
    assert all(a < b for a, b in itertools.pairwise(texts))


def test_uuid7_str_is_canonical_and_increasing() -> None:
    texts = [uuid7_str() for _ in range(1000)]
    assert all(is_uuid7(t) for t in texts)
    assert texts == sorted(texts)
    assert len(set(texts)) == len(texts)


@settings(deadline=None)
@given(
    st.integers(min_value=0, max_value=MAX_MS),
    st.integers(min_value=0, max_value=(1 << 41) - 1),
    st.integers(min_value=0, max_value=(1 << 32) - 1),
)
def test_next_str_is_the_canonical_text_of_the_same_id(ms: int, seed: int, rand: int) -> None:
    def same_bits(k: int) -> int:
        return seed if k == 41 else rand

    as_text = Uuid7Generator(SteppingClock(ms), same_bits).next_str()
    as_uuid = Uuid7Generator(SteppingClock(ms), same_bits)()
    assert as_text == str(as_uuid)
    assert uuid.UUID(as_text) == as_uuid


def test_same_millisecond_ids_increase_and_keep_the_timestamp() -> None:
    gen = Uuid7Generator(clock_ms=SteppingClock(1_700_000_000_123))
    ids = [gen() for _ in range(10_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert {uuid7_time_ms(u) for u in ids} == {1_700_000_000_123}


def test_timestamp_extraction_from_uuid_and_string() -> None:
    gen = Uuid7Generator(clock_ms=SteppingClock(1_234_567_890_123))
    u = gen()
    assert uuid7_time_ms(u) == 1_234_567_890_123
    assert uuid7_time_ms(str(u)) == 1_234_567_890_123


def test_default_clock_is_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    stamp = uuid7_time_ms(Uuid7Generator()())
    after = time.time_ns() // 1_000_000
    assert before <= stamp <= after


def test_explicit_now_ms_sets_the_timestamp() -> None:
    gen = Uuid7Generator(clock_ms=SteppingClock(0))
    assert uuid7_time_ms(gen(now_ms=42)) == 42
    assert uuid7_time_ms(uuid7(now_ms=0)) >= 0


def test_clock_stepping_backwards_never_breaks_order() -> None:
    clock = SteppingClock(10_000)
    gen = Uuid7Generator(clock_ms=clock)
    first = gen()
    clock.ms = 5_000
    second = gen()
    assert second > first
    assert uuid7_time_ms(second) == 10_000


def test_counter_rollover_borrows_the_next_millisecond() -> None:
    gen = Uuid7Generator(clock_ms=SteppingClock(7), randbits=lambda k: 0)
    first = gen()
    # Reaching 2**42 ids in one millisecond for real would take hours; jump the counter there.
    gen._counter = (1 << 42) - 1
    second = gen()
    assert second > first
    assert uuid7_time_ms(second) == 8


@pytest.mark.parametrize("ms", [-1, MAX_MS + 1])
def test_timestamp_outside_48_bits_is_refused(ms: int) -> None:
    with pytest.raises(ValueError, match="48 bits"):
        Uuid7Generator()(now_ms=ms)


@settings(deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=MAX_MS - 1), min_size=1, max_size=60))
def test_ids_increase_whatever_the_clock_does(readings: list[int]) -> None:
    clock = SteppingClock(readings[0])
    gen = Uuid7Generator(clock_ms=clock)
    previous: uuid.UUID | None = None
    newest_ms = 0
    for ms in readings:
        clock.ms = ms
        newest_ms = max(newest_ms, ms)
        u = gen()
        assert previous is None or u > previous
        assert previous is None or str(u) > str(previous)
        assert uuid7_time_ms(u) == newest_ms
        previous = u


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=MAX_MS))
def test_time_round_trips_through_a_fresh_generator(ms: int) -> None:
    u = Uuid7Generator()(now_ms=ms)
    assert uuid7_time_ms(u) == ms
    assert is_uuid7(str(u))


@pytest.mark.parametrize(
    "text",
    [
        str(uuid.uuid4()),
        str(uuid.uuid1()),
        "",
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "0190b6a4-3b4c-7d2e-8f00-123456789abc".upper(),
        "0190b6a43b4c7d2e8f00123456789abc",
        "{0190b6a4-3b4c-7d2e-8f00-123456789abc}",
        "urn:uuid:0190b6a4-3b4c-7d2e-8f00-123456789abc",
        " 0190b6a4-3b4c-7d2e-8f00-123456789abc",
        "0190b6a4-3b4c-7d2e-8f00-123456789abc\n",
        "0190b6a4-3b4c-7d2e-cf00-123456789abc",  # variant 110x (Microsoft)
        "0190b6a4-3b4c-7d2e-7f00-123456789abc",  # variant 0xxx (NCS)
        "0190b6a4-3b4c-6d2e-8f00-123456789abc",  # version 6
    ],
)
def test_is_uuid7_rejects(text: str) -> None:
    assert not is_uuid7(text)


def test_is_uuid7_accepts_every_rfc_variant_nibble() -> None:
    for nibble in "89ab":
        assert is_uuid7(f"0190b6a4-3b4c-7d2e-{nibble}f00-123456789abc")


@pytest.mark.parametrize("value", [uuid.uuid4(), str(uuid.uuid4()), uuid.UUID(int=0)])
def test_time_of_a_non_v7_uuid_is_refused(value: uuid.UUID | str) -> None:
    with pytest.raises(ValueError, match="not a UUIDv7"):
        uuid7_time_ms(value)
