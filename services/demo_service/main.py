"""`xregion demo-service`: run the configuration store until SIGTERM or SIGINT."""

from __future__ import annotations

from pathlib import Path

import structlog
from aiohttp import web

from services.demo_service.app import make_app
from services.demo_service.store import ConfigStore
from shared.lifecycle import ServiceError, until_signalled
from shared.netaddr import split_listen

__all__ = ["ConfigStoreStartError", "run_demo_service"]

log = structlog.get_logger("configstore")
_SHUTDOWN_S = 10.0


class ConfigStoreStartError(ServiceError):
    """The store cannot start (address in use, database unusable)."""


async def run_demo_service(listen: str, db: Path) -> int:
    host, port = split_listen(listen)
    async with ConfigStore(db) as store:
        runner = web.AppRunner(
            make_app(store), access_log=None, shutdown_timeout=_SHUTDOWN_S, handle_signals=False
        )
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, host, port).start()
            except OSError as exc:
                raise ConfigStoreStartError(f"cannot listen on {listen}: {exc.strerror}") from None
            log.info("configstore.started", listen=listen, db=str(db))
            await until_signalled(lambda stop: stop())
            log.info("configstore.stopping")
        finally:
            await runner.cleanup()
    return 0
