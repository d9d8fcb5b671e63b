"""The NATS connection of an operator command (`dlq`, `trace`, `pause`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from services.xregion.errors import XregionError
from shared.natsconn import NatsConnectError, NatsConnection
from shared.settings import Settings

__all__ = ["connected"]


@contextlib.asynccontextmanager
async def connected(settings: Settings, command: str) -> AsyncIterator[NatsConnection]:
    """A NATS connection named after `command`; a failed connect is an XregionError."""
    conn = NatsConnection(settings.nats, service="xregion", name=f"xregion-{command}")
    try:
        await conn.connect()
    except NatsConnectError as exc:
        raise XregionError(str(exc)) from None
    try:
        yield conn
    finally:
        await conn.aclose()
