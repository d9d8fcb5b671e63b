"""`xregion replayer`: run one replayer process until SIGTERM or SIGINT."""

from __future__ import annotations

from services.replayer.service import serve
from shared.lifecycle import until_signalled
from shared.settings import Settings

__all__ = ["run_replayer"]


async def run_replayer(settings: Settings) -> int:
    """Replay until a signal asks for a graceful shutdown; returns the exit code.

    Start failures raise `services.replayer.service.ReplayerError` (one line, an exit code).
    """
    return await until_signalled(lambda stop: serve(settings, shutdown_trigger=stop))
