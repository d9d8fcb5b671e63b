"""`xregion replayer`: run one replayer process until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal

from services.replayer.service import serve
from shared.settings import Settings

__all__ = ["run_replayer"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_replayer(settings: Settings) -> int:
    """Replay until a signal asks for a graceful shutdown; returns the exit code.

    Start failures raise `services.replayer.service.ReplayerError` (one line, an exit code).
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
