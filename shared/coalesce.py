"""Coalesced publishes: small NATS frames of a hot path (the replayer's acks and version-record
writes, the bridge's version records) leave in bursts, one socket write for many, instead of
one write per event stage.

nats-py writes its pending frames at the next turn of the event loop after a publish; with
events finishing one stage at a time, that was about one `write()` system call per event on the
NATS connection, a large share of the replayer's CPU (a loopback write wakes the server and
runs the TCP stack in the writer's time slice; docs/PERFORMANCE.md, "Measurements behind the
code"). `Coalescer.publish` queues the frame; the queue is sent at most once per `delay_s`
(default 1 ms), all frames in one loop turn, so nats-py writes them together, and the server
reads them together. A frame queued when no burst went out for `delay_s` leaves at the end of
the current loop turn: an idle process pays no delay (the replayer's lag), a busy one sends a
burst per `delay_s` at most, with up to that much latency per NATS round trip.

The queue is sent in order by one owned task; `aclose()` sends what is queued and waits for
it (shutdown: before the connection is drained). A frame that cannot be sent is logged and
dropped: an ack then times out and the message is redelivered (its version record makes it
`duplicate`), a record write times out at its caller (`shared.kvcas`).
"""

from __future__ import annotations

import asyncio
from typing import Self

import nats.errors
from nats.aio.client import Client

from shared.lifecycle import Closeable
from shared.logs import get_logger

__all__ = ["Coalescer"]

log = get_logger("xr.nats")

_Frame = tuple[str, bytes, str, dict[str, str] | None]
_SEND_ERRORS = (nats.errors.Error, OSError)


class Coalescer(Closeable):
    """Queues publishes and sends them together, a burst per `delay_s` at most; an async
    context manager."""

    def __init__(self, nc: Client, *, delay_s: float = 0.001) -> None:
        self._nc = nc
        self._delay_s = delay_s
        self._queue: list[_Frame] = []
        self._timer: asyncio.Handle | None = None
        self._sent_at = -1e9  # loop time the last burst started
        self._sender: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Queue one frame (sent within `delay_s`)."""
        self._queue.append((subject, payload, reply, headers))
        if self._timer is not None or self._sender is not None:
            return  # a burst is due, or being sent: this frame goes with it
        if self._closed:
            self._kick()
            return
        loop = asyncio.get_running_loop()
        wait_s = self._sent_at + self._delay_s - loop.time()
        if wait_s > 0:
            self._timer = loop.call_later(wait_s, self._kick)
        else:  # idle: with what else this loop turn queues
            self._timer = loop.call_soon(self._kick)

    async def aclose(self) -> None:
        """Send what is queued and wait for it (idempotent); frames queued later are sent
        without delay."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._sender is not None or self._queue:
            if self._sender is None:
                self._kick()
            assert self._sender is not None
            await asyncio.wait([self._sender])

    def _kick(self) -> None:
        self._timer = None
        if self._sender is None and self._queue:
            self._sender = asyncio.get_running_loop().create_task(self._send(), name="coalesce")
            self._sender.add_done_callback(_failed)

    async def _send(self) -> None:
        self._sent_at = asyncio.get_running_loop().time()
        try:
            while self._queue:
                frames, self._queue = self._queue, []
                for subject, payload, reply, headers in frames:
                    try:
                        await self._nc.publish(subject, payload, reply=reply, headers=headers)
                    except _SEND_ERRORS as exc:
                        log.warning(
                            "nats.coalesced_publish_failed", subject=subject, error=repr(exc)
                        )
        finally:
            self._sender = None
            if self._queue and not self._closed:  # queued while sending: next burst
                self._timer = asyncio.get_running_loop().call_later(self._delay_s, self._kick)


def _failed(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("nats.coalesce_failed", error=repr(task.exception()))
