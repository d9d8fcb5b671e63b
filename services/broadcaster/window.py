"""The events one forwarder holds (fetched, not yet acked), in per-key lanes. Pure: no IO.

The window bounds what a forwarder holds for its target: `max_events` and (about)
`max_bytes`. Inside it, events are grouped in lanes by (service, Xr-Key); only the head of a
lane is ever being published, so a later event of one key never reaches the target stream
before an earlier one, also when the earlier one needs retries. Different keys are published
concurrently, which is what keeps cross-region round-trip time from capping throughput.

`add()` says whether the event starts a new lane (the caller then runs that lane); `done()`
removes a lane's head and returns the next one, or None when the lane is empty.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Held", "Window"]

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Held(Generic[T]):
    """One held event: its stream sequence, its lane, its size, and whatever the caller needs."""

    seq: int
    lane: Hashable
    size: int
    item: T
    touched_s: float = 0.0  # monotonic time of the last delivery or in_progress()


@dataclass(slots=True)
class Window(Generic[T]):
    max_events: int
    max_bytes: int
    _lanes: dict[Hashable, deque[Held[T]]] = field(default_factory=dict)
    _count: int = 0
    _bytes: int = 0

    def __len__(self) -> int:
        return self._count

    @property
    def held_bytes(self) -> int:
        return self._bytes

    @property
    def lanes(self) -> int:
        return len(self._lanes)

    def room(self) -> int:
        """How many more events may be fetched now (0 when full by count or by bytes)."""
        if self._bytes >= self.max_bytes:
            return 0
        return max(0, self.max_events - self._count)

    def add(self, held: Held[T]) -> bool:
        """Hold `held` at the end of its lane; True if it is the head of a new lane."""
        self._count += 1
        self._bytes += held.size
        lane = self._lanes.get(held.lane)
        if lane is None:
            self._lanes[held.lane] = deque((held,))
            return True
        lane.append(held)
        return False

    def done(self, held: Held[T]) -> Held[T] | None:
        """Release the head of its lane (acked); the lane's next event, or None."""
        lane = self._lanes[held.lane]
        if lane[0] is not held:
            raise ValueError("only the head of a lane can be done")
        lane.popleft()
        self._count -= 1
        self._bytes -= held.size
        if lane:
            return lane[0]
        del self._lanes[held.lane]
        return None

    def __iter__(self) -> Iterator[Held[T]]:
        for lane in self._lanes.values():
            yield from lane

    def take_all(self) -> list[Held[T]]:
        """Remove every held event, in stream order (to give them back on shutdown)."""
        everything = sorted(self, key=lambda h: h.seq)
        self._lanes.clear()
        self._count = 0
        self._bytes = 0
        return everything
