"""UUIDv7 event ids (RFC 9562 §5.7), strictly increasing within one process.

Bit layout of the 128-bit value::

    unix_ts_ms:48 | ver=0b0111:4 | counter_hi:12 | var=0b10:2 | counter_lo:30 | random:32

The 42-bit counter is RFC 9562 §6.2 "Method 1" (fixed-length dedicated counter bits). Each new
millisecond seeds it at random with its top bit clear, so at least 2**41 ids fit in one
millisecond, and every further id minted in the same millisecond adds one. If the wall clock
steps backwards the generator keeps the last timestamp and keeps counting, and a counter that
would overflow borrows the next millisecond (§6.2 "Counter Rollover Handling"): an id is never
smaller than the one before it, in UUID order and in string order alike.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable

__all__ = [
    "Uuid7Generator",
    "is_uuid7",
    "uuid7",
    "uuid7_str",
    "uuid7_time_ms",
]

_MAX_MS = (1 << 48) - 1
_COUNTER_BITS = 42
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_COUNTER_LO_BITS = 30
_RANDOM_BITS = 32
_UUID7_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _system_ms() -> int:
    return time.time_ns() // 1_000_000


def _assemble(unix_ms: int, counter: int, rand: int) -> int:
    counter_hi = counter >> _COUNTER_LO_BITS
    counter_lo = counter & ((1 << _COUNTER_LO_BITS) - 1)
    return (
        (unix_ms << 80)
        | (0x7 << 76)
        | (counter_hi << 64)
        | (0b10 << 62)
        | (counter_lo << _RANDOM_BITS)
        | rand
    )


def _canonical(value: int) -> str:
    """What `str(uuid.UUID(int=value))` gives, without building the UUID (once per event)."""
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Uuid7Generator:
    """Mints UUIDv7 values that sort strictly increasing, whatever the clock does.

    `clock_ms` returns Unix time in milliseconds; `randbits(k)` returns k random bits. Both are
    injectable so tests can drive the clock. Safe to share between threads and tasks.
    """

    def __init__(
        self,
        clock_ms: Callable[[], int] = _system_ms,
        randbits: Callable[[int], int] = secrets.randbits,
    ) -> None:
        self._clock_ms = clock_ms
        self._randbits = randbits
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def __call__(self, now_ms: int | None = None) -> uuid.UUID:
        """A new id. `now_ms` overrides one clock reading; order is still never broken."""
        return uuid.UUID(int=self.next_int(now_ms))

    def next_str(self) -> str:
        """A new id in canonical form (what `str(self())` gives, for less work)."""
        return _canonical(self.next_int())

    def next_int(self, now_ms: int | None = None) -> int:
        """A new id as its 128-bit integer (see `__call__`)."""
        unix_ms = self._clock_ms() if now_ms is None else now_ms
        if not 0 <= unix_ms <= _MAX_MS:
            raise ValueError(f"timestamp {unix_ms} ms does not fit the 48 bits of a UUIDv7")
        with self._lock:
            unix_ms, counter = self._advance(unix_ms)
        return _assemble(unix_ms, counter, self._randbits(_RANDOM_BITS))

    def _advance(self, unix_ms: int) -> tuple[int, int]:
        if unix_ms > self._last_ms:
            self._last_ms, self._counter = unix_ms, self._randbits(_COUNTER_BITS - 1)
        elif self._counter < _COUNTER_MAX:
            self._counter += 1
        else:
            self._last_ms, self._counter = self._last_ms + 1, self._randbits(_COUNTER_BITS - 1)
        return self._last_ms, self._counter


_default = Uuid7Generator()


def uuid7(now_ms: int | None = None) -> uuid.UUID:
    """A new UUIDv7 from the process-wide generator (strictly increasing in this process).

    `now_ms` replaces the clock reading for this one id; because order is kept, the embedded
    time is never earlier than that of the previous id.
    """
    return _default(now_ms)


def uuid7_str() -> str:
    """A new UUIDv7 in canonical lower-case 8-4-4-4-12 form."""
    return _default.next_str()


def is_uuid7(s: str) -> bool:
    """True for a canonical (lower-case, hyphenated) UUID of version 7 and the RFC variant."""
    return _UUID7_RE.fullmatch(s) is not None


def uuid7_time_ms(u: uuid.UUID | str) -> int:
    """The Unix time in milliseconds embedded in a UUIDv7; ValueError for other versions."""
    value = uuid.UUID(u) if isinstance(u, str) else u
    if value.version != 7:
        raise ValueError(f"not a UUIDv7: {str(value)!r}")
    return value.int >> 80
