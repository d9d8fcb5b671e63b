"""The logger aiohttp's HTTP server reports request errors to.

aiohttp logs a request it cannot parse (a malformed request line, a bad header, a body that
breaks the framing) at ERROR with a traceback, through stdlib logging, which xregion does not
configure: plain text on stderr beside the JSON lines, an error page for a client's mistake.
Here such a request is the client's error: one warning line and a count
(`xr_bridge_refused_total{service="none", error="bad_http"}`); aiohttp still answers it 400.
Anything else aiohttp reports (a bug that escaped the proxy's own 500) stays an error.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from services.bridge.metrics import REFUSED
from shared.logs import get_logger

__all__ = ["ServerLog"]

log = get_logger("xr.bridge")


class ServerLog(logging.Logger):
    def __init__(self) -> None:
        super().__init__("xr.bridge.http")

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            REFUSED.labels("none", "bad_http").inc()
            log.warning("bridge.bad_http", status=exc_info.code, error=exc_info.message)
            return
        log.error("bridge.http_error", message=str(msg) % args, error=repr(exc_info))
