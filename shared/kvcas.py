"""Compare-and-set writes to a KV bucket, for hot paths (the replayer's version records, two
per replayed event; the bridge's record of each local write).

`KvCas.update(key, value, last=rev)` does what nats-py's `KeyValue.update` does — publish to
`$KV.<bucket>.<key>` with `Nats-Expected-Last-Subject-Sequence: <rev>` and wait for the
stream's answer — and returns the new revision, or None when the key moved on (JetStream
error 10071/10164, nats-py's `KeyWrongLastSequenceError`).

Why not `KeyValue.update`: each call goes through `Client.request`, which reads `os.urandom` (a
system call) for its reply token, arms an `asyncio.wait_for`, validates the key and builds a
`PubAck` dataclass; here one long-lived reply subscription, a counter for tokens and one timer
per request take about half the client CPU (docs/PERFORMANCE.md, "Measurements behind the
code"). Creating a key (`last` unknown) and deletes stay with `KeyValue`.

Errors are nats-py's own, so callers handle one family: `nats.errors.TimeoutError` when no
answer came in time, `NoStreamResponseError` when no stream listens (503), other JetStream
errors as `APIError.from_error` raises them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any, Protocol, Self

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import APIError, NoStreamResponseError

from shared.lifecycle import Closeable

__all__ = ["FramePublisher", "KvCas"]

_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"


class FramePublisher(Protocol):
    """Sends a frame later, with others (the replayer's `Coalescer`)."""

    def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
    ) -> None: ...


class KvCas(Closeable):
    """Compare-and-set updates in one bucket; an async context manager (the subscription)."""

    def __init__(
        self, nc: Client, bucket: str, *, timeout_s: float, coalescer: FramePublisher | None = None
    ) -> None:
        self._nc = nc
        self._coalescer = coalescer
        self._prefix = f"$KV.{bucket}."
        self._timeout_s = timeout_s
        self._inbox = ""
        self._sub: Any = None
        self._tokens = itertools.count()
        self._waiting: dict[str, asyncio.Future[Msg]] = {}

    async def __aenter__(self) -> Self:
        self._inbox = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._inbox + "*", cb=self._on_reply)
        return self

    async def aclose(self) -> None:
        sub, self._sub = self._sub, None
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()
        if sub is not None and not self._nc.is_closed:
            await sub.unsubscribe()

    async def update(self, key: str, value: bytes, *, last: int) -> int | None:
        """The new revision; None if `key`'s revision is no longer `last`."""
        reply = await self._request(
            self._prefix + key, value, {_EXPECTED_LAST_SUBJECT_SEQ: str(last)}
        )
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error is None:
            return int(answer["seq"])
        if error.get("err_code") in _WRONG_LAST_SEQUENCE:
            return None
        raise APIError.from_error(error)

    async def _request(self, subject: str, payload: bytes, headers: dict[str, str]) -> Msg:
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(self._timeout_s, _expire, future)
        try:
            if self._coalescer is not None:
                self._coalescer.publish(subject, payload, self._inbox + token, headers)
            else:
                await self._nc.publish(subject, payload, reply=self._inbox + token, headers=headers)
            return await future
        finally:
            timer.cancel()
            self._waiting.pop(token, None)

    async def _on_reply(self, msg: Msg) -> None:
        future = self._waiting.pop(msg.subject[len(self._inbox) :], None)
        if future is None or future.done():
            return  # late: its request timed out
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            future.set_exception(NoStreamResponseError())
        else:
            future.set_result(msg)


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())
