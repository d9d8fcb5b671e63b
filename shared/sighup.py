"""SIGHUP asks a running service process to re-read what it can without a restart (today: the
trusted signing keys). Wired in each service's `serve()`, the real process's entry point."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

__all__ = ["on_sighup"]


@contextlib.contextmanager
def on_sighup(callback: Callable[[], object]) -> Iterator[None]:
    """Call `callback()` on every SIGHUP while inside; the handler is removed on leaving."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, callback)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)
