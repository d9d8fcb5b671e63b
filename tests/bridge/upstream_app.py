"""A real aiohttp service for the bridge tests to proxy to, on a free loopback port.

Every request it receives is recorded (`calls`), so a test can prove the upstream was never
called. Endpoints (under any prefix; the last path segment picks the behaviour):

* `.../echo` (any method): JSON of what arrived (method, raw path, headers, body); `?status=N`
  answers with status N, `?cookies=1` adds two `Set-Cookie` headers.
* `.../status/<N>`: status N with no body for 1xx/204/304, a `Location` for 3xx.
* `.../gzip`: a gzip-compressed body with `Content-Encoding: gzip`.
* `.../big?bytes=N&cl=1`: N deterministic bytes in 64 KiB chunks (chunked, or with
  Content-Length when cl=1).
* `.../held`: the first chunk at once, the rest only after `release_held()`.
* `.../gated` (any method): waits for `open_gate()` before it answers at all (an echo).
* `.../die`: announces 1000 bytes, sends 100, then drops the connection.
* `.../hang`: never answers (until the server stops).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["Call", "TestUpstream", "pattern"]

CHUNK = 64 * 1024
GZIP_TEXT = b"hello compressed world\n" * 200


def pattern(size: int) -> bytes:
    """Deterministic bytes (so direct and proxied downloads can be compared by digest)."""
    block = bytes(range(256)) * (CHUNK // 256)
    whole, rest = divmod(size, len(block))
    return block * whole + block[:rest]


@dataclass(frozen=True)
class Call:
    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    peer: str  # the client's address: tells connections apart

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


class TestUpstream:
    """The service behind the bridge; an async context manager."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._held = asyncio.Event()
        self._gate = asyncio.Event()
        self._never = asyncio.Event()
        self.big_sent = 0  # bytes of the last `big` body written so far
        self._runner: web.ServerRunner | None = None
        self.url = ""

    def release_held(self) -> None:
        self._held.set()

    def open_gate(self) -> None:
        self._gate.set()

    async def __aenter__(self) -> Self:
        server = web.Server(self._handle, access_log=None, auto_decompress=False)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._never.set()
        self._held.set()
        self._gate.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.calls.append(
            Call(request.method, request.raw_path, tuple(request.headers.items()), body, str(peer))
        )
        segments = request.path.rstrip("/").split("/")
        name = segments[-1]
        if len(segments) >= 2 and segments[-2] == "status":
            return _status(int(name))
        handler = {
            "gzip": self._gzip,
            "big": self._big,
            "held": self._held_stream,
            "die": self._die,
            "hang": self._hang,
            "gated": self._gated,
        }.get(name)
        if handler is not None:
            return await handler(request)
        return _echo(request, body)

    async def _gzip(self, request: web.BaseRequest) -> web.StreamResponse:
        response = web.Response(body=gzip.compress(GZIP_TEXT, mtime=0))
        response.headers["Content-Encoding"] = "gzip"
        response.headers["Content-Type"] = "text/plain"
        return response

    async def _big(self, request: web.BaseRequest) -> web.StreamResponse:
        size = int(request.query.get("bytes", "0"))
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        if request.query.get("cl"):
            response.content_length = size
        await response.prepare(request)
        self.big_sent = 0
        block = pattern(CHUNK)  # pattern(size) is this block repeated: no need to hold it all
        remaining = size if request.method != "HEAD" else 0
        while remaining:
            chunk = block[: min(CHUNK, remaining)]
            await response.write(chunk)
            remaining -= len(chunk)
            self.big_sent += len(chunk)
        await response.write_eof()
        return response

    async def _held_stream(self, request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first chunk\n")
        await self._held.wait()
        await response.write(b"the rest\n")
        await response.write_eof()
        return response

    async def _die(self, request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1000
        await response.prepare(request)
        await response.write(b"x" * 100)
        assert request.transport is not None
        request.transport.abort()
        return response

    async def _gated(self, request: web.BaseRequest) -> web.StreamResponse:
        await self._gate.wait()
        return _echo(request, b"")

    async def _hang(self, request: web.BaseRequest) -> web.StreamResponse:
        await self._never.wait()
        return web.Response(status=200)


def _status(code: int) -> web.StreamResponse:
    if code in (204, 304) or code < 200:
        return web.Response(status=code)
    response = web.Response(status=code, text=f"status {code}\n")
    if 300 <= code < 400:
        response.headers["Location"] = "/elsewhere?x=1"
    return response


def _echo(request: web.BaseRequest, body: bytes) -> web.Response:
    status = int(request.query.get("status", "200"))
    payload = {
        "method": request.method,
        "raw_path": request.raw_path,
        "headers": [[k, v] for k, v in request.headers.items()],
        "body_sha256": hashlib.sha256(body).hexdigest(),
        "body_len": len(body),
    }
    response = web.Response(status=status, body=json.dumps(payload).encode())
    response.headers["Content-Type"] = "application/json"
    response.headers["X-Upstream"] = "yes"
    if request.query.get("cookies"):
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/; HttpOnly")
    return response
