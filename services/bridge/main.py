"""`xregion bridge`: run one bridge process until SIGTERM or SIGINT."""

from __future__ import annotations

import resource

from services.bridge.service import serve
from shared.lifecycle import until_signalled
from shared.settings import Settings

__all__ = ["run_bridge"]


async def run_bridge(settings: Settings) -> int:
    """Serve until a signal asks for a graceful shutdown; returns the exit code.

    Start failures raise `services.bridge.service.BridgeError` (one line, an exit code).
    """
    _raise_open_files_limit()
    return await until_signalled(lambda stop: serve(settings, shutdown_trigger=stop))


def _raise_open_files_limit() -> None:
    """Thousands of client connections, each with an upstream one, need thousands of file
    descriptors: lift the soft limit to the hard one (what the operator allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
