"""Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014).

A stamp is a wall time in milliseconds plus a logical counter. Stamps from one clock only ever
grow, even when the wall clock steps backwards, and a stamp taken after receiving a remote
stamp is greater than it, so "newer" between regions means "happened after" as far as any
region could have observed.

The text form is fixed width, `{wall_ms:015d}-{logical:06d}` (22 characters), so comparing two
stamps as strings (for example in a NATS header or a service's version column) gives the same
answer as comparing them as stamps. To keep that width the logical counter is capped at
999_999: a clock whose counter would pass the cap moves its wall time 1 ms ahead and restarts
the counter at 0. That stays greater than everything before, and it only happens after a
million events within one millisecond of wall time.

Errors::

    ValueError
     ├── InvalidHlcError   a malformed or out-of-range stamp
     └── ClockDriftError   a remote stamp too far ahead of the local wall clock
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "LOGICAL_MAX",
    "WALL_MS_MAX",
    "ClockDriftError",
    "Hlc",
    "HlcStamp",
    "InvalidHlcError",
]

WALL_MS_MAX = 10**15 - 1
LOGICAL_MAX = 999_999
_STAMP_RE = re.compile(r"([0-9]{15})-([0-9]{6})")


class InvalidHlcError(ValueError):
    """A stamp string that is not `<15 digits>-<6 digits>`, or fields out of range."""


class ClockDriftError(ValueError):
    """A remote stamp ahead of the local wall clock by more than the allowed drift."""

    def __init__(self, remote: HlcStamp, local_wall_ms: int, max_drift_ms: int) -> None:
        self.remote = remote
        self.local_wall_ms = local_wall_ms
        self.drift_ms = remote.wall_ms - local_wall_ms
        self.max_drift_ms = max_drift_ms
        super().__init__(
            f"remote HLC {remote} is {self.drift_ms} ms ahead of the local wall clock "
            f"(limit {max_drift_ms} ms); refusing to move the clock"
        )


@dataclass(order=True, frozen=True, slots=True)
class HlcStamp:
    """One HLC reading; ordered by (wall_ms, logical), and `str()` sorts the same way."""

    wall_ms: int
    logical: int

    def __post_init__(self) -> None:
        if not 0 <= self.wall_ms <= WALL_MS_MAX:
            raise InvalidHlcError(f"HLC wall_ms {self.wall_ms} outside 0..{WALL_MS_MAX}")
        if not 0 <= self.logical <= LOGICAL_MAX:
            raise InvalidHlcError(f"HLC logical {self.logical} outside 0..{LOGICAL_MAX}")

    def __str__(self) -> str:
        return f"{self.wall_ms:015d}-{self.logical:06d}"

    @classmethod
    def parse(cls, s: str) -> HlcStamp:
        """Parse the exact 22-character form produced by `str()`."""
        match = _STAMP_RE.fullmatch(s)
        if match is None:
            raise InvalidHlcError(
                f"malformed HLC stamp {s[:40]!r}: expected 15 digits, '-', 6 digits"
            )
        return cls(int(match[1]), int(match[2]))

    @property
    def wall_time_s(self) -> float:
        """The wall part as Unix seconds (for lag metrics)."""
        return self.wall_ms / 1000


def _system_wall_ms() -> int:
    return time.time_ns() // 1_000_000


class Hlc:
    """A hybrid logical clock: `now()` for local and send events, `update()` on receive.

    Not locked: meant for one event loop (no method awaits). `wall_ms` is injectable so tests
    can move the wall clock at will.
    """

    def __init__(
        self,
        wall_ms: Callable[[], int] = _system_wall_ms,
        max_drift_ms: int = 60_000,
    ) -> None:
        if max_drift_ms < 0:
            raise ValueError(f"max_drift_ms must be >= 0, got {max_drift_ms}")
        self._wall_ms = wall_ms
        self._max_drift_ms = max_drift_ms
        self._last = HlcStamp(0, 0)

    @property
    def last(self) -> HlcStamp:
        """The most recent stamp handed out (HlcStamp(0, 0) before the first)."""
        return self._last

    def peek(self) -> HlcStamp:
        """Same as `last`: read the clock without advancing it."""
        return self._last

    def now(self) -> HlcStamp:
        """A stamp for a local or send event, greater than every earlier one."""
        last = self._last
        wall = max(last.wall_ms, self._wall_ms())
        logical = last.logical + 1 if wall == last.wall_ms else 0
        return self._commit(wall, logical)

    def update(self, remote: HlcStamp) -> HlcStamp:
        """A stamp for receiving `remote`: greater than it and than every earlier stamp.

        Raises ClockDriftError, leaving the clock untouched, when `remote` is more than
        `max_drift_ms` ahead of the local wall clock.
        """
        physical = self._wall_ms()
        if remote.wall_ms - physical > self._max_drift_ms:
            raise ClockDriftError(remote, physical, self._max_drift_ms)
        last = self._last
        wall = max(last.wall_ms, remote.wall_ms, physical)
        return self._commit(wall, _merged_logical(wall, last, remote))

    def _commit(self, wall: int, logical: int) -> HlcStamp:
        if logical > LOGICAL_MAX:
            wall, logical = wall + 1, 0
        self._last = HlcStamp(wall, logical)
        return self._last


def _merged_logical(wall: int, last: HlcStamp, remote: HlcStamp) -> int:
    """The receive rule of the HLC paper for the logical part, given the merged wall time."""
    if wall == last.wall_ms and wall == remote.wall_ms:
        return max(last.logical, remote.logical) + 1
    if wall == last.wall_ms:
        return last.logical + 1
    if wall == remote.wall_ms:
        return remote.logical + 1
    return 0
