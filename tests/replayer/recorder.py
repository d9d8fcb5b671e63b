"""A real aiohttp service that records every call by `Idempotency-Key`, for replayer tests.

Each key path keeps the value with the newest `Xr-Hlc` (as the demo service would). A repeated
`Idempotency-Key` that already succeeded is answered 200 and counted in `repeats`, never
applied twice. `script[path]` is a list of statuses to answer first (then 2xx); `delay_s`
(or `delays[path]`) slows answers down. `streams[path]` answers with a streamed body of that
many bytes (`None`: endless); `streamed[path]` then holds how many bytes the service managed
to write before the body ended or the client hung up (set once the handler has finished).
A path in `stalls` gets its status and one chunk of body, then nothing until the recorder
closes. `bodies[path]` lists the (body, headers) of the next answers to that path, one per
call, in order (then none).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["Call", "Recorder"]

_CHUNK = b"x" * (64 * 1024)


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    raw_path: str = ""  # as sent on the request line

    @property
    def event_id(self) -> str:
        return self.headers.get("Idempotency-Key", "")

    @property
    def hlc(self) -> str:
        return self.headers.get("Xr-Hlc", "")


@dataclass
class Recorder:
    script: dict[str, list[int]] = field(default_factory=dict)
    max_delay_s: float = 0.0
    delays: dict[str, float] = field(default_factory=dict)
    down: bool = False  # answer 503 to everything
    streams: dict[str, int | None] = field(default_factory=dict)
    streamed: dict[str, int] = field(default_factory=dict)
    peers: list[int] = field(default_factory=list)  # client port of every call
    stalls: set[str] = field(default_factory=set)
    bodies: dict[str, list[tuple[bytes, dict[str, str]]]] = field(default_factory=dict)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[Call] = field(default_factory=list)
    succeeded: dict[str, Call] = field(default_factory=dict)
    repeats: list[Call] = field(default_factory=list)
    values: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    in_flight_keys: set[str] = field(default_factory=set)
    overlaps: int = 0
    url: str = ""
    _runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()  # stalled answers end
        if self._runner is not None:
            await self._runner.cleanup()

    def calls_for(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path_qs
        key_path = request.path
        if key_path in self.in_flight_keys:
            self.overlaps += 1
        self.in_flight_keys.add(key_path)
        try:
            body = await request.read()
            if self.max_delay_s:
                await asyncio.sleep(random.uniform(0, self.max_delay_s))
            if key_path in self.delays:
                await asyncio.sleep(self.delays[key_path])
            status = self._status(key_path)
            call = Call(request.method, path, dict(request.headers), body, status, request.raw_path)
            self.calls.append(call)
            self.peers.append(_peer_port(request))
            if 200 <= status < 300:
                self._apply(call, key_path)
            if key_path in self.stalls:
                return await self._stall(request, status)
            if key_path in self.streams:
                return await self._stream(request, status, self.streams[key_path])
            return self._answer(key_path, status)
        finally:
            self.in_flight_keys.discard(key_path)

    async def _stream(
        self, request: web.Request, status: int, size: int | None
    ) -> web.StreamResponse:
        """A body of `size` bytes (None: endless) in 64 KiB chunks, counting what got out."""
        response = web.StreamResponse(status=status)
        if size is not None:
            response.content_length = size
        await response.prepare(request)
        sent = 0
        try:
            while size is None or sent < size:
                chunk = _CHUNK if size is None else _CHUNK[: size - sent]
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
        except ConnectionError:  # the client hung up: what was sent is the measurement
            pass
        finally:
            self.streamed[request.path] = sent
        return response

    async def _stall(self, request: web.Request, status: int) -> web.StreamResponse:
        response = web.StreamResponse(status=status)
        await response.prepare(request)
        # Less than the replayer drains (64 KiB), so it waits for more: the stall is felt.
        await response.write(_CHUNK[:1024])
        await self._closing.wait()
        return response

    def _answer(self, path: str, status: int) -> web.Response:
        queue = self.bodies.get(path)
        if not queue:
            return web.Response(status=status)
        body, headers = queue.pop(0)
        return web.Response(status=status, body=body, headers=headers)

    def _status(self, path: str) -> int:
        if self.down:
            return 503
        queue = self.script.get(path)
        return queue.pop(0) if queue else 200

    def _apply(self, call: Call, key_path: str) -> None:
        if call.event_id in self.succeeded:
            self.repeats.append(call)
            return
        self.succeeded[call.event_id] = call
        current = self.values.get(key_path)
        if current is None or call.hlc > current[0]:
            self.values[key_path] = (call.hlc, call.body)


def _peer_port(request: web.Request) -> int:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return int(peer[1]) if peer else 0
