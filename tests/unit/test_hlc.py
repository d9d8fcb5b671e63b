"""Hybrid logical clock: ordering invariants under any wall clock, strict text form."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.hlc import (
    LOGICAL_MAX,
    WALL_MS_MAX,
    ClockDriftError,
    Hlc,
    HlcStamp,
    InvalidHlcError,
)

DRIFT_MS = 60_000
START_MS = 1_700_000_000_000

stamps = st.builds(
    HlcStamp,
    st.integers(min_value=0, max_value=WALL_MS_MAX),
    st.integers(min_value=0, max_value=LOGICAL_MAX),
)


class FakeWall:
    """A wall clock the test moves by hand, including backwards."""

    def __init__(self, ms: int = START_MS) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


# An operation: ("now", 0, 0), ("jump", delta_ms, 0) or ("update", remote offset_ms, logical);
# offsets past DRIFT_MS must be refused without touching the clock.
Op = tuple[str, int, int]
ops = st.lists(
    st.one_of(
        st.just(("now", 0, 0)),
        st.tuples(st.just("jump"), st.integers(min_value=-500_000, max_value=500_000), st.just(0)),
        st.tuples(
            st.just("update"),
            st.integers(min_value=-2 * DRIFT_MS, max_value=2 * DRIFT_MS),
            st.one_of(
                st.integers(min_value=0, max_value=5),
                st.integers(min_value=LOGICAL_MAX - 3, max_value=LOGICAL_MAX),
            ),
        ),
    ),
    max_size=80,
)


def _apply(clock: Hlc, wall: FakeWall, op: Op) -> HlcStamp | None:
    kind, a, b = op
    if kind == "jump":
        wall.ms += a
        return None
    if kind == "now":
        return clock.now()
    remote = HlcStamp(wall.ms + a, b)
    before = clock.last
    try:
        stamp = clock.update(remote)
    except ClockDriftError:
        assert a > DRIFT_MS
        assert clock.last == before
        return None
    assert a <= DRIFT_MS
    assert stamp > remote
    return stamp


@settings(deadline=None, max_examples=300)
@given(ops)
def test_every_stamp_is_greater_than_all_before(operations: list[Op]) -> None:
    wall = FakeWall()
    clock = Hlc(wall_ms=wall, max_drift_ms=DRIFT_MS)
    issued: list[HlcStamp] = []
    for op in operations:
        stamp = _apply(clock, wall, op)
        if stamp is None:
            continue
        assert not issued or stamp > issued[-1]
        assert clock.last == stamp
        issued.append(stamp)


@settings(deadline=None)
@given(stamps, stamps)
def test_string_order_is_stamp_order(a: HlcStamp, b: HlcStamp) -> None:
    assert (str(a) < str(b)) == (a < b)
    assert (str(a) == str(b)) == (a == b)


@settings(deadline=None)
@given(stamps)
def test_text_form_is_fixed_width_and_round_trips(stamp: HlcStamp) -> None:
    text = str(stamp)
    assert len(text) == 22
    assert HlcStamp.parse(text) == stamp


def test_text_form_example() -> None:
    assert str(HlcStamp(1_700_000_000_123, 7)) == "001700000000123-000007"
    assert HlcStamp(1_700_000_000_123, 7).wall_time_s == pytest.approx(1_700_000_000.123)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1-1",
        "00170000000012-000007",  # 14 wall digits
        "0001700000000123-000007",  # 16 wall digits
        "001700000000123-00007",  # 5 logical digits
        "001700000000123-0000007",  # 7 logical digits
        "001700000000123000007",  # no dash
        "001700000000123_000007",
        "00170000000012a-000007",
        "-01700000000123-000007",  # negative
        "+01700000000123-000007",
        "001700000000123--00007",
        " 001700000000123-000007",
        "001700000000123-000007\n",
        "\u0661" * 15 + "-" + "\u0661" * 6,  # Arabic-Indic digits: isdigit() but not ASCII
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidHlcError, match="malformed HLC"):
        HlcStamp.parse(text)


@pytest.mark.parametrize(
    ("wall", "logical"), [(-1, 0), (0, -1), (WALL_MS_MAX + 1, 0), (0, LOGICAL_MAX + 1)]
)
def test_stamp_fields_out_of_range_are_refused(wall: int, logical: int) -> None:
    with pytest.raises(InvalidHlcError, match="outside"):
        HlcStamp(wall, logical)


def test_now_follows_the_wall_clock_and_counts_within_a_millisecond() -> None:
    wall = FakeWall(1_000)
    clock = Hlc(wall_ms=wall)
    assert clock.now() == HlcStamp(1_000, 0)
    assert clock.now() == HlcStamp(1_000, 1)
    wall.ms = 1_005
    assert clock.now() == HlcStamp(1_005, 0)


def test_wall_clock_stepping_back_keeps_counting_on_the_last_wall_time() -> None:
    wall = FakeWall(1_000)
    clock = Hlc(wall_ms=wall)
    clock.now()
    wall.ms = 400
    assert clock.now() == HlcStamp(1_000, 1)


@pytest.mark.parametrize(
    ("last", "remote", "physical", "expected"),
    [
        (HlcStamp(100, 3), HlcStamp(100, 7), 50, HlcStamp(100, 8)),  # all tie: max + 1
        (HlcStamp(100, 3), HlcStamp(90, 7), 50, HlcStamp(100, 4)),  # local ahead
        (HlcStamp(90, 3), HlcStamp(100, 7), 50, HlcStamp(100, 8)),  # remote ahead
        (HlcStamp(90, 3), HlcStamp(95, 7), 120, HlcStamp(120, 0)),  # wall clock ahead
    ],
)
def test_update_follows_the_receive_rule(
    last: HlcStamp, remote: HlcStamp, physical: int, expected: HlcStamp
) -> None:
    wall = FakeWall(last.wall_ms)
    clock = Hlc(wall_ms=wall)
    for _ in range(last.logical + 1):
        clock.now()
    assert clock.last == last
    wall.ms = physical
    assert clock.update(remote) == expected


def test_logical_overflow_rolls_the_wall_time() -> None:
    wall = FakeWall(5_000)
    clock = Hlc(wall_ms=wall)
    assert clock.update(HlcStamp(5_000, LOGICAL_MAX)) == HlcStamp(5_001, 0)
    assert clock.now() == HlcStamp(5_001, 1)


def test_logical_overflow_from_now() -> None:
    wall = FakeWall(5_000)
    clock = Hlc(wall_ms=wall)
    clock.update(HlcStamp(5_000, LOGICAL_MAX - 1))
    assert clock.now() == HlcStamp(5_001, 0)


def test_remote_too_far_ahead_is_refused_and_leaves_the_clock_alone() -> None:
    wall = FakeWall(10_000)
    clock = Hlc(wall_ms=wall, max_drift_ms=1_000)
    before = clock.now()
    remote = HlcStamp(11_001, 0)
    with pytest.raises(ClockDriftError, match="1001 ms ahead") as info:
        clock.update(remote)
    assert info.value.remote == remote
    assert info.value.drift_ms == 1_001
    assert info.value.max_drift_ms == 1_000
    assert isinstance(info.value, ValueError)
    assert clock.last == before
    assert clock.now() == HlcStamp(10_000, 1)


def test_remote_exactly_at_the_drift_limit_is_accepted() -> None:
    clock = Hlc(wall_ms=FakeWall(10_000), max_drift_ms=1_000)
    assert clock.update(HlcStamp(11_000, 4)) == HlcStamp(11_000, 5)


def test_peek_and_last_do_not_advance() -> None:
    clock = Hlc(wall_ms=FakeWall(10))
    assert clock.peek() == clock.last == HlcStamp(0, 0)
    stamp = clock.now()
    assert clock.peek() == clock.last == stamp
    assert clock.peek() == stamp


def test_negative_drift_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_drift_ms"):
        Hlc(max_drift_ms=-1)


def test_default_wall_clock_is_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    stamp = Hlc().now()
    after = time.time_ns() // 1_000_000
    assert before <= stamp.wall_ms <= after
    assert stamp.logical == 0
