"""The HTTP client side of the proxy: one pooled aiohttp session for every upstream.

It forwards bytes, not meaning: the path and query go out exactly as they came in (an encoded
`yarl.URL` built from parts by `routing.upstream_url`; a bare trailing `?` is dropped),
redirects are not followed, compressed bodies are not decoded, no cookie jar
(cookies belong to the clients, not to the proxy), no headers added beyond `Host` and the
framing ones (`Content-Length`/`Transfer-Encoding` for the body being sent). Connections are
pooled and kept alive.

Errors (aiohttp's are translated where they enter)::

    Exception
     └── UpstreamError
          ├── UpstreamUnavailableError   no response: refused, reset, closed early (→ 502)
          ├── UpstreamTimeoutError       no response in time (→ 504)
          └── UpstreamBrokeOffError      the response body stopped short (status already sent)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Self

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from shared.lifecycle import Closeable
from shared.settings import BridgeSettings, redact_userinfo

__all__ = [
    "RequestBody",
    "Upstream",
    "UpstreamBrokeOffError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "UpstreamUnavailableError",
]

RequestBody = bytes | aiohttp.StreamReader | None
# aiohttp adds these unless told not to; a transparent proxy must not invent them.
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_CHUNK_BYTES = 64 * 1024


class UpstreamError(Exception):
    """Base of the upstream client's errors."""


class UpstreamUnavailableError(UpstreamError):
    """The upstream could not be reached or closed the connection before answering."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer (or connect) in time."""


class UpstreamBrokeOffError(UpstreamError):
    """The upstream's response body ended early (connection lost, timeout, bad framing)."""


class Upstream(Closeable):
    """A pooled HTTP client for the upstream services; an async context manager."""

    def __init__(self, settings: BridgeSettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        s = self._settings
        connector = aiohttp.TCPConnector(
            limit=s.upstream_max_connections,
            keepalive_timeout=s.upstream_keepalive_s,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                total=None,
                # The TCP connect itself is bounded by the connect timeout; waiting for a free
                # pooled connection (a burst, not the upstream failing) may also take as long
                # as one upstream read, then the request fails as a timeout (504).
                sock_connect=s.upstream_connect_timeout_s,
                connect=s.upstream_connect_timeout_s + s.upstream_read_timeout_s,
                sock_read=s.upstream_read_timeout_s,
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_SKIP_AUTO_HEADERS,
            trust_env=False,
            read_bufsize=_CHUNK_BYTES,
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def send(
        self, method: str, url: URL, headers: CIMultiDict[str], body: RequestBody
    ) -> aiohttp.ClientResponse:
        """Send a request; returns once the status line and headers are in.

        `url` is the upstream base URL plus the raw path and query (`routing.upstream_url`),
        used as is. The caller must `release()` (body read to the end) or `close()`
        (abandoned) the response.
        """
        if self._session is None:
            raise RuntimeError("Upstream is not open; use `async with`")
        try:
            return await self._session.request(
                method,
                url,
                headers=headers,
                data=body,
                allow_redirects=False,
                compress=None,
                chunked=None,
            )
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            raise UpstreamTimeoutError(f"no answer from {_origin(url)} in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailableError(f"{_origin(url)}: {_describe(exc)}") from exc

    @staticmethod
    def available(response: aiohttp.ClientResponse) -> bytes:
        """The response body bytes that have arrived already (at most 64 KiB), without
        waiting; b"" when none have, or when the body broke off (`body` then says so)."""
        try:
            return response.content.read_nowait(_CHUNK_BYTES)
        except (RuntimeError, aiohttp.ClientError, OSError):
            return b""

    @staticmethod
    async def body(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The response body as it arrives, in chunks of at most 64 KiB."""
        try:
            async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamBrokeOffError(_describe(exc)) from exc


def _origin(url: URL) -> str:
    """Scheme, host and port: never the userinfo, since clients read this in 502/504 bodies."""
    return str(url.origin())


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = redact_userinfo(str(exc) or type(exc).__name__)
    return text if len(text) <= 200 else text[:200] + "..."
