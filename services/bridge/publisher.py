"""Publishing events to JetStream and waiting for the ack (docs/NATS.md §1.5, §3.1).

One `publish` call sends one message with its `Nats-Msg-Id` (the event id) and waits, within
one deadline, for a slot among the bounded in-flight publishes and then for the stream's ack.
"No responders" (a stream being re-assigned after a restart) is retried within that deadline,
as nats.go does. An error reply that describes the message itself (over the
stream's `max_msg_size`, headers over 64 KiB: `shared/pubacks.py`) is a refusal for good:
no retry can change it, so the caller must not keep the event for another attempt. Anything
else means the outcome is unknown: the caller keeps the event and retries later with the same
id, and JetStream's duplicate window drops the copy if the first attempt did land.

Acks come back on one wildcard inbox subscription that this publisher owns (`open`), matched
to the waiting publish by reply subject. That is what `js.publish` does through the client's
request machinery, minus a second timer per message and the generic response handling: on
the bridge's hot path it costs about a third less CPU per event than `js.publish`, and, unlike
`publish_async` (docs/NATS.md §3.1.1), an error reply fails its publish at once. Every publish
still awaits its own ack; the pipelining comes from many requests publishing at once.

Errors::

    Exception
     └── PublishError
          ├── PublishUnknownError   not acked in time (timeout, no stream, NATS down, error)
          └── PublishRefusedError   the stream refused this message for good (.err_code,
                                    .description), or it cannot be sent (a header name
                                    that is not a token, err_code 0): do not retry
    EventTooLargeError (shared.envelope)   the frame can never be published: do not retry
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Mapping
from typing import Any, Protocol, Self

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import PubAck

from shared.envelope import EventTooLargeError
from shared.frames import header_block, send_hpub
from shared.lifecycle import Closeable
from shared.natsconn import NatsConnection
from shared.pubacks import describe, is_permanent

__all__ = [
    "EventPublisher",
    "PublishError",
    "PublishRefusedError",
    "PublishUnknownError",
    "Publisher",
]

# Pause between attempts when no stream answered (the stream is moving); nats.go uses 250 ms.
_NO_STREAM_RETRY_S = 0.25
_NO_RESPONDERS = "503"


class PublishError(Exception):
    """Base of the publisher's errors."""


class PublishUnknownError(PublishError):
    """No ack within the deadline: the event may or may not be stored. Retry with its id."""


class PublishRefusedError(PublishError):
    """The stream refused the message itself (`shared.pubacks.PERMANENT_ERR_CODES`), or it
    can never be sent (a header name nats-py refuses, `err_code` 0): sending it again
    unchanged can never succeed."""

    def __init__(self, err_code: int, description: str) -> None:
        super().__init__(
            f"JetStream refused the event for good: {description} (err_code {err_code})"
            if err_code
            else f"the event can never be sent: {description}"
        )
        self.err_code = err_code
        self.description = description


class _NoStream(Exception):
    """No stream answered the publish (503 no responders): worth another attempt."""


class EventPublisher(Protocol):
    """What the outbox drainer and the delivery need from a publisher."""

    async def publish(
        self,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        *,
        timeout_s: float,
        block: bytes | None = None,
    ) -> object: ...


class Publisher(Closeable):
    """JetStream publishes with a bounded number in flight; an async context manager (it
    owns the ack inbox subscription). See the module docstring."""

    def __init__(self, conn: NatsConnection, *, max_inflight: int) -> None:
        self._conn = conn
        self._slots = asyncio.Semaphore(max_inflight)
        self._queued = 0
        self._acks: dict[str, asyncio.Future[Msg]] = {}
        self._ids = itertools.count()
        self._inbox = ""
        self._sub: Subscription | None = None

    @property
    def waiting_for_slot(self) -> int:
        """Publishes waiting for one of the `max_inflight` slots to free up."""
        return self._queued

    @property
    def max_payload(self) -> int:
        """The connected server's max_payload (headers plus payload)."""
        return self._conn.max_payload

    async def open(self) -> None:
        """Subscribe to the ack inbox (nats-py re-subscribes it after a reconnect)."""
        self._inbox = self._conn.nc.new_inbox() + "."
        self._sub = await self._conn.nc.subscribe(self._inbox + "*", cb=self._on_ack)

    async def aclose(self) -> None:
        """Stop listening for acks; publishes still waiting (for their ack, for a slot, or
        between attempts) fail as unknown, and none is sent any more. Idempotent."""
        sub, self._sub = self._sub, None
        for waiting in self._acks.values():
            waiting.cancel("publisher closed")
        if sub is not None and not self._conn.nc.is_closed:
            try:
                await sub.unsubscribe()
            except nats.errors.Error:
                pass  # the connection is going away: so is the subscription

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def publish(
        self,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        *,
        timeout_s: float,
        block: bytes | None = None,
    ) -> PubAck:
        """Publish and await the ack; see the module docstring for the errors.

        `block`: the header block of `headers` (`shared.frames.header_block`), if the caller
        built it already (it is sent as it is). A header name that is not a token (as in an
        outbox entry edited by hand) is a PublishRefusedError: no retry can send it.
        """
        if block is None:
            try:
                block = header_block(headers)
            except nats.errors.BadHeaderError as exc:
                raise PublishRefusedError(0, f"{exc} (a header name must be a token)") from exc
        size = len(block) + len(payload)
        if size > self._conn.max_payload:  # it would close the connection for good
            raise EventTooLargeError(size, self._conn.max_payload)
        if self._sub is None:
            raise PublishUnknownError("the publisher is not open")
        if not self._conn.is_connected:
            raise PublishUnknownError("NATS is not connected")
        try:
            async with asyncio.timeout(timeout_s):
                await self._take_slot()
                try:
                    return await self._attempts(subject, block, payload)
                finally:
                    self._slots.release()
        except TimeoutError as exc:
            raise PublishUnknownError(f"no JetStream ack within {timeout_s:g} s") from exc
        except (nats.errors.Error, OSError) as exc:
            raise PublishUnknownError(f"JetStream publish failed: {exc!r}") from exc

    async def _take_slot(self) -> None:
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1

    async def _attempts(self, subject: str, block: bytes, payload: bytes) -> PubAck:
        # Runs under the caller's deadline, which also bounds these retries.
        while True:
            try:
                return await self._attempt(subject, block, payload)
            except _NoStream:
                await asyncio.sleep(_NO_STREAM_RETRY_S)

    async def _attempt(self, subject: str, block: bytes, payload: bytes) -> PubAck:
        if self._is_closed():  # closed while this waited for a slot or between attempts
            raise PublishUnknownError("the publisher closed before the event was sent")
        reply = f"{self._inbox}{next(self._ids)}"
        waiting: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
        self._acks[reply] = waiting
        try:
            await send_hpub(self._conn.nc, subject, reply, block, payload)
            return _pub_ack(await waiting)
        except asyncio.CancelledError:
            # aclose() cancelled the ack we waited for; a cancellation of this task itself
            # (its caller's, or the deadline's) is never swallowed.
            task = asyncio.current_task()
            if self._is_closed() and task is not None and not task.cancelling():
                raise PublishUnknownError("the publisher closed before the ack came") from None
            raise
        finally:
            del self._acks[reply]

    def _is_closed(self) -> bool:
        # A method, not `self._sub is None` inline: the answer changes across an await.
        return self._sub is None

    async def _on_ack(self, msg: Msg) -> None:
        waiting = self._acks.get(msg.subject)
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)


def _pub_ack(msg: Msg) -> PubAck:
    """The stream's answer as a PubAck; raises `_NoStream`, PublishRefusedError (an error no
    retry can change) or PublishUnknownError (any other error, an unreadable answer)."""
    if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
        raise _NoStream
    try:
        reply: dict[str, Any] = json.loads(msg.data)
        error = reply.get("error")
        if error is None:
            return PubAck(
                stream=reply["stream"],
                seq=reply["seq"],
                domain=reply.get("domain"),
                duplicate=reply.get("duplicate"),
            )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PublishUnknownError(f"unreadable JetStream ack: {msg.data[:200]!r}") from exc
    if is_permanent(error):
        raise PublishRefusedError(error["err_code"], str(error.get("description", "?")))
    raise PublishUnknownError(f"JetStream refused the event: {describe(error)}")
