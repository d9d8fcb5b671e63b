"""`xregion bridge`: run one bridge process until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import resource
import signal

from services.bridge.service import serve
from shared.settings import Settings

__all__ = ["run_bridge"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_bridge(settings: Settings) -> int:
    """Serve until a signal asks for a graceful shutdown; returns the exit code.

    Start failures raise `services.bridge.service.BridgeError` (one line, an exit code).
    """
    _raise_open_files_limit()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        return await serve(settings, shutdown_trigger=stop.wait)
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


def _raise_open_files_limit() -> None:
    """Thousands of client connections, each with an upstream one, need thousands of file
    descriptors: lift the soft limit to the hard one (what the operator allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
