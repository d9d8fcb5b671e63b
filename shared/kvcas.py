"""Compare-and-set writes to a KV bucket, for hot paths (the replayer's version records, two
per replayed event; the bridge's record of each local write).

`KvCas.update(key, value, last=rev)` does what nats-py's `KeyValue.update` does — publish to
`$KV.<bucket>.<key>` with `Nats-Expected-Last-Subject-Sequence: <rev>` and wait for the
stream's answer — and returns the new revision, or None when the key moved on (JetStream
error 10071/10164, nats-py's `KeyWrongLastSequenceError`); `last=0` creates a key that has
no message at all (a deleted key's tombstone is one). `read(key)` is nats-py's `KeyValue.get`
as a direct get (`$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`, the buckets allow it).
`create_and_read` sends a create and a read of one key together: a key nobody wrote is
claimed in one round trip, and when it exists the read is there for the next decision.
`queue_update` is `update` for callers that take the answer in a done callback, with no task
or coroutine per write (the bridge's record of a key it remembers).

Why not `KeyValue.update`: each call goes through `Client.request`, which reads `os.urandom` (a
system call) for its reply token, arms an `asyncio.wait_for`, validates the key and builds a
`PubAck` dataclass; here one long-lived reply subscription, a counter for tokens and one timer
per request take about half the client CPU (docs/PERFORMANCE.md, "Measurements behind the
code"). Deletes, and creating a key over a tombstone, stay with `KeyValue`.

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

__all__ = ["Entry", "FramePublisher", "KvCas", "revision_of"]

_WRONG_LAST_SEQUENCE = frozenset({10071, 10164})
_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
_REMOVED = frozenset({"DEL", "PURGE"})  # KV-Operation of a tombstone

# A key's value and revision as read; (None, None): the key has none (never written, deleted).
Entry = tuple[bytes | None, int | None]


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
        self._direct_get = f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}."
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
        return revision_of(await (await self._send_update(key, value, last)))

    async def read(self, key: str) -> Entry:
        """`key`'s value and revision, (None, None) if it has none."""
        return _entry(await (await self._send(self._direct_get + key, b"", None)))

    async def create_and_read(self, key: str, value: bytes) -> tuple[int | None, Entry]:
        """Create `key` (refused, None, if it has any message) and read it, in one round trip.
        The read may have seen the created value; it counts only when the create was refused,
        and so do its errors."""
        create = await self._send_update(key, value, 0)
        try:
            read = await self._send(self._direct_get + key, b"", None)
        except BaseException:
            create.cancel()
            raise
        try:
            await asyncio.wait((create, read))
        except asyncio.CancelledError:
            create.cancel()
            read.cancel()
            raise
        read_error = read.exception()  # retrieved either way: it may not count
        created = revision_of(create.result())
        if created is not None:
            return created, (None, None)
        if read_error is not None:
            raise read_error
        return None, _entry(read.result())

    def queue_update(self, key: str, value: bytes, *, last: int) -> asyncio.Future[Msg]:
        """`update` without a coroutine, for a caller that reacts in a done callback: the
        future of the answer, to read with `revision_of`. Needs the coalescer (which queues
        without waiting)."""
        if self._coalescer is None:
            raise RuntimeError("queue_update needs a coalescer")
        return self._queue(self._coalescer, self._prefix + key, value, _expected_last(last))

    async def _send_update(self, key: str, value: bytes, last: int) -> asyncio.Future[Msg]:
        return await self._send(self._prefix + key, value, _expected_last(last))

    async def _send(
        self, subject: str, payload: bytes, headers: dict[str, str] | None
    ) -> asyncio.Future[Msg]:
        """Send one request; the future of its answer (nats.errors.TimeoutError after
        `timeout_s`)."""
        if self._coalescer is not None:
            return self._queue(self._coalescer, subject, payload, headers)
        future, reply = self._expect()
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
        except BaseException:
            future.cancel()
            raise
        return future

    def _queue(
        self,
        coalescer: FramePublisher,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
    ) -> asyncio.Future[Msg]:
        """`_send` through the coalescer: queued now, no await."""
        future, reply = self._expect()
        try:
            coalescer.publish(subject, payload, reply, headers)
        except BaseException:
            future.cancel()
            raise
        return future

    def _expect(self) -> tuple[asyncio.Future[Msg], str]:
        """The future of one answer (nats.errors.TimeoutError after `timeout_s`) and the
        reply subject it comes to."""
        token = str(next(self._tokens))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(self._timeout_s, _expire, future)
        future.add_done_callback(lambda _: self._forget(token, timer))
        return future, self._inbox + token

    def _forget(self, token: str, timer: asyncio.TimerHandle) -> None:
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


def _expected_last(revision: int) -> dict[str, str]:
    return {_EXPECTED_LAST_SUBJECT_SEQ: str(revision)}


def revision_of(reply: Msg) -> int | None:
    """The new revision a write's answer gives; None for a refused compare-and-set."""
    answer = json.loads(reply.data)
    error = answer.get("error")
    if error is None:
        return int(answer["seq"])
    if error.get("err_code") in _WRONG_LAST_SEQUENCE:
        return None
    raise APIError.from_error(error)


def _entry(reply: Msg) -> Entry:
    """What a direct get's answer says: the value and revision, or (None, None)."""
    headers = reply.headers or {}
    status = headers.get("Status")
    if status == "404" or headers.get("KV-Operation") in _REMOVED:
        return None, None
    if status is not None:
        raise APIError(code=int(status), description=headers.get("Description", ""))
    return reply.data, int(headers["Nats-Sequence"])


def _expire(future: asyncio.Future[Msg]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())
