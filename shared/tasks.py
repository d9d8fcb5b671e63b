"""An owner for background tasks (uvicorn's `tasks.add(t); t.add_done_callback(discard)`).

Every task a service starts belongs to a `TaskSet`, which keeps a strong reference until
the task is done, reports a task that failed (to its `on_failure` callback, so the service
can stop instead of running without it; a log line when there is none), waits for all with a
deadline and cancels the rest with a reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from shared.logs import get_logger

__all__ = ["TaskSet"]

T = TypeVar("T")

log = get_logger("xr.tasks")


class TaskSet:
    """Owns tasks; see the module docstring."""

    def __init__(
        self, name: str, *, on_failure: Callable[[asyncio.Task[Any]], None] | None = None
    ) -> None:
        self._name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_failure = on_failure

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        if self._on_failure is not None:
            self._on_failure(task)
            return
        log.error(
            "task.failed",
            owner=self._name,
            task=task.get_name(),
            error=repr(task.exception()),
        )

    async def wait(self, timeout_s: float) -> bool:
        """Wait for every task to finish; True if they all did within `timeout_s`."""
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return not pending

    async def cancel(self, reason: str) -> None:
        """Cancel whatever is still running and wait for it to unwind."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel(reason)
        if tasks:
            await asyncio.wait(tasks)
