"""What every service process shares about starting and stopping.

* The error hierarchy a service raises when it cannot run (the CLI prints `str()` as one line
  and exits with `.exit_code`)::

      Exception
       └── ServiceError            .exit_code = 1
            ├── <Service>ConfigError   the configuration cannot run (exit 2)
            └── <Service>StartError    a dependency is missing at start (exit 1)

  Each service subclasses `ServiceError` under its own name (`BridgeError`, ...).
* `Closeable`: `async with` for a long-lived component (a connection, publisher, client,
  server) whose `aclose()` releases it, idempotently (httpx's `AsyncClient`). Each component
  writes its own `__aenter__` (what opening means differs), and leaves by `aclose()`.
* `until_signalled`: the injectable shutdown trigger (hypercorn's `shutdown_trigger=`) wired
  to SIGTERM and SIGINT for a real process; tests pass their own trigger instead.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TypeVar

__all__ = ["Closeable", "ServiceError", "until_signalled"]

T = TypeVar("T")
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ServiceError(Exception):
    """A service cannot run; `str()` is one line for the operator."""

    exit_code = 1


class Closeable:
    """Leaves `async with` by `aclose()`; see the module docstring."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def until_signalled(run: Callable[[Callable[[], Awaitable[object]]], Awaitable[T]]) -> T:
    """Run `run(shutdown_trigger)`, where the trigger completes on SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await run(stop.wait)
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
