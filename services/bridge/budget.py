"""The bytes of request bodies the bridge may hold in memory at once, over every request
(pure). A request takes its share as its body arrives and gives it back when it is done; a
share that does not fit is refused, so the bridge answers 503 instead of running out of
memory."""

from __future__ import annotations

__all__ = ["BodyBudget"]


class BodyBudget:
    """A byte budget shared by every request; not thread-safe (one event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        """Reserve `size` more bytes; False (nothing reserved) when they do not fit."""
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give_back(self, size: int) -> None:
        self.used = max(0, self.used - size)
