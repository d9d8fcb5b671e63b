"""`xregion broadcaster`: run one broadcaster process until SIGTERM or SIGINT."""

from __future__ import annotations

from services.broadcaster.service import serve
from shared.lifecycle import until_signalled
from shared.settings import Settings

__all__ = ["run_broadcaster"]


async def run_broadcaster(settings: Settings) -> int:
    """Serve until a signal asks for a graceful shutdown; returns the exit code.

    Start failures raise `services.broadcaster.service.BroadcasterError` (one line, an exit
    code).
    """
    return await until_signalled(lambda stop: serve(settings, shutdown_trigger=stop))
