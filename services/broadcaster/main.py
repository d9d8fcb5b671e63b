"""`xregion broadcaster`: run one broadcaster process until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from services.broadcaster.service import serve
from shared.settings import Settings

__all__ = ["run_broadcaster"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_broadcaster(settings: Settings) -> int:
    """Serve until a signal asks for a graceful shutdown; returns the exit code.

    Start failures raise `services.broadcaster.service.BroadcasterError` (one line, an exit
    code).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await serve(settings, shutdown_trigger=stop.wait)
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
