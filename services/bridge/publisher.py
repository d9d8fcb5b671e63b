"""Publishing events to JetStream and waiting for the ack (NATS_NOTES §1.5, §3.1).

One `publish` call sends one message with its `Nats-Msg-Id` (the event id) and waits, within
one deadline, for a slot among the bounded in-flight publishes and then for the stream's ack.
"No responders" (a stream being re-assigned after a restart) is retried within that deadline,
as nats.go does (ADR-22). Anything else means the outcome is unknown: the caller keeps the
event and retries later with the same id, and JetStream's duplicate window drops the copy if
the first attempt did land.

Errors::

    Exception
     └── PublishError
          └── PublishUnknownError   not acked in time (timeout, no stream, NATS down, error)
    EventTooLargeError (shared.envelope)   the frame can never be published: do not retry
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

import nats.errors
import nats.js.errors
from nats.js.api import PubAck

from shared.envelope import EventTooLargeError, wire_size
from shared.natsconn import NatsConnection

__all__ = ["EventPublisher", "PublishError", "PublishUnknownError", "Publisher"]

# Pause between attempts when no stream answered (the stream is moving); nats.go uses 250 ms.
_NO_STREAM_RETRY_S = 0.25


class PublishError(Exception):
    """Base of the publisher's errors."""


class PublishUnknownError(PublishError):
    """No ack within the deadline: the event may or may not be stored. Retry with its id."""


class EventPublisher(Protocol):
    """What the outbox drainer and the delivery need from a publisher."""

    async def publish(
        self,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        *,
        timeout_s: float,
        wire_bytes: int | None = None,
    ) -> object: ...


class Publisher:
    """JetStream publishes with a bounded number in flight; see the module docstring."""

    def __init__(self, conn: NatsConnection, *, max_inflight: int) -> None:
        self._conn = conn
        self._slots = asyncio.Semaphore(max_inflight)

    @property
    def max_payload(self) -> int:
        """The connected server's max_payload (headers plus payload)."""
        return self._conn.max_payload

    async def publish(
        self,
        subject: str,
        headers: Mapping[str, str],
        payload: bytes,
        *,
        timeout_s: float,
        wire_bytes: int | None = None,
    ) -> PubAck:
        """Publish and await the ack; see the module docstring for the errors.

        `wire_bytes` is the frame's size if the caller already measured it (`wire_size`).
        """
        size = wire_size(headers, payload) if wire_bytes is None else wire_bytes
        if size > self._conn.max_payload:  # it would close the connection for good
            raise EventTooLargeError(size, self._conn.max_payload)
        if not self._conn.is_connected:
            raise PublishUnknownError("NATS is not connected")
        try:
            async with asyncio.timeout(timeout_s):
                async with self._slots:
                    return await self._attempts(subject, dict(headers), payload, timeout_s)
        except TimeoutError as exc:
            raise PublishUnknownError(f"no JetStream ack within {timeout_s:g} s") from exc
        except (nats.errors.Error, OSError) as exc:
            raise PublishUnknownError(f"JetStream publish failed: {exc!r}") from exc

    async def _attempts(
        self, subject: str, headers: dict[str, str], payload: bytes, timeout_s: float
    ) -> PubAck:
        # Runs under the caller's deadline, which also bounds these retries.
        js = self._conn.jetstream()
        while True:
            try:
                # js.publish adds headers to the dict it gets, so each attempt gets a copy.
                return await js.publish(subject, payload, timeout=timeout_s, headers=dict(headers))
            except nats.js.errors.NoStreamResponseError:
                await asyncio.sleep(_NO_STREAM_RETRY_S)
