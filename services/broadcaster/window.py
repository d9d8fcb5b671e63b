"""The events one forwarder holds (fetched, not yet acked) for its target. Pure: no IO.

The window bounds what a forwarder holds: `max_events` and (about) `max_bytes`. It has no
per-key lanes: every held event may be in flight at once, so one hot key moves as fast as
many keys (the target's replayer enforces per-key order at apply time, docs/DESIGN.md
"Broadcaster data path"). Events that must be published (again) wait in the *unsent* queue,
which hands them out lowest stream sequence first, so a retry re-sends from the first
unacked event, in stream order.

An event is in exactly one of three states: in flight (the caller published it), unsent
(`queue()`d, waiting for `pop_unsent()`), or gone (`done()`).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Held", "Window"]

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class Held(Generic[T]):
    """One held event: its stream sequence, its size, and whatever the caller needs."""

    seq: int
    size: int
    item: T
    touched_s: float = 0.0  # monotonic time of the last delivery or in_progress()
    queued: bool = False  # waiting in the unsent queue


@dataclass(slots=True)
class Window(Generic[T]):
    max_events: int
    max_bytes: int
    _held: dict[int, Held[T]] = field(default_factory=dict)
    _unsent: list[tuple[int, int, Held[T]]] = field(default_factory=list)
    _queued: int = 0
    _pushes: int = 0  # tie-breaker: a sequence held again after done() never compares Held
    _bytes: int = 0

    def __len__(self) -> int:
        return len(self._held)

    def __iter__(self) -> Iterator[Held[T]]:
        return iter(list(self._held.values()))

    @property
    def held_bytes(self) -> int:
        return self._bytes

    @property
    def unsent(self) -> int:
        """How many held events wait to be published (again)."""
        return self._queued

    def room(self) -> int:
        """How many more events may be fetched now (0 when full by count or by bytes)."""
        if self._bytes >= self.max_bytes:
            return 0
        return max(0, self.max_events - len(self._held))

    def add(self, held: Held[T]) -> bool:
        """Hold `held`; False if its sequence is held already (a redelivery of it)."""
        if held.seq in self._held:
            return False
        self._held[held.seq] = held
        self._bytes += held.size
        return True

    def queue(self, held: Held[T]) -> None:
        """`held` must be published (again): it waits for `pop_unsent()`."""
        if not held.queued and self._held.get(held.seq) is held:
            held.queued = True
            self._queued += 1
            self._pushes += 1
            heapq.heappush(self._unsent, (held.seq, self._pushes, held))

    def pop_unsent(self) -> Held[T] | None:
        """The queued event with the lowest stream sequence (now in flight), or None."""
        while self._unsent:
            _, _, held = heapq.heappop(self._unsent)
            if held.queued:
                held.queued = False
                self._queued -= 1
                return held
        return None

    def done(self, held: Held[T]) -> None:
        """Release `held` (acked, dead-lettered or given up); a queued one leaves the queue."""
        if self._held.get(held.seq) is not held:
            return
        del self._held[held.seq]
        self._bytes -= held.size
        if held.queued:
            held.queued = False  # its heap entry is skipped by pop_unsent()
            self._queued -= 1
        if not self._held:
            self._unsent.clear()

    def take_all(self) -> list[Held[T]]:
        """Remove every held event, in stream order (to give them back on shutdown)."""
        everything = sorted(self._held.values(), key=lambda h: h.seq)
        self._held.clear()
        self._unsent.clear()
        self._queued = 0
        self._bytes = 0
        return everything
