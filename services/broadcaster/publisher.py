"""JetStream publishes whose PubAcks come back to callbacks: the forwarder's output.

`js.publish_async` costs a future, a semaphore wait wrapped in `wait_for` and, since its
futures never resolve on server errors (a known nats-py bug), one more `wait_for` per message.
This adapter publishes with a reply subject `<inbox>.<n>` of its own and reads every PubAck
on one callback subscription of `<inbox>.*`: `on_acked(item, seq, duplicate)` or
`on_failed(item, failure)` is called exactly once per `publish()` (none for one the caller
`abandon()`ed), in the order the answers arrive. A publish with no answer within `timeout_s`
fails (one sweeper task, no timer per message); an answer that comes later is ignored, so the
caller's retry (same `Nats-Msg-Id`) is the only outcome it sees.

The caller bounds what is in flight (the forwarder's window). A message whose frame (payload
plus headers, `frame_size()`) exceeds the server's `max_payload` is never sent: the server
would close the connection for good, for every target at once.

Every `Failure` says whether sending the same message again can ever succeed. `permanent`,
decided here where the answer arrives, so the caller need not parse reasons:

* the frame exceeds `max_payload` (refused before sending);
* the stream answered with an error that describes the message, not the moment
  (`PERMANENT_ERR_CODES` of `shared/pubacks.py`: message or header too large for the stream,
  a per-message TTL the stream cannot take);
* the user's permissions refuse the subject: the server drops the message and only reports
  it on the connection (`NatsConnection.on_permission_error`), so every publish in flight on
  that subject fails at once, `permission denied: publish to <subject>` (not `answered`: the
  target was never asked). The error names the subject lowercased (nats-py), so it is matched
  without case.

Everything else is transient: no answer in time, 503 no responders, an unreadable PubAck, a
failed send, and every other JetStream error (storage or resource limits, leadership changes,
unknown codes). Unknown codes stay transient on purpose: a wrong "permanent" would dead-letter
an event that a retry would have delivered, a wrong "transient" only delays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared.frames import send_hpub, wire_size
from shared.natsconn import PermissionCallback
from shared.pubacks import PERMANENT_ERR_CODES, describe, is_permanent

__all__ = [
    "PERMANENT_ERR_CODES",
    "Failure",
    "PermissionErrors",
    "Publisher",
    "frame_size",
    "is_permanent",
    "read_puback",
]

T = TypeVar("T")

_NO_RESPONDERS = "503"
_SEQ_RE = re.compile(rb'^\{"stream":"[^"]*",(?:"domain":"[^"]*",)?"seq":(\d+)[,}]')
_DUPLICATE_RE = re.compile(rb'"duplicate":\s*true')


class PermissionErrors(Protocol):
    """Where the publisher hears of publishes the permissions refuse (a `NatsConnection`)."""

    def on_permission_error(self, callback: PermissionCallback) -> Callable[[], None]: ...


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a publish got no PubAck; `permanent`: sending it again can never succeed;
    `answered`: the target's stream said so (False: found out here, the target was not asked)."""

    reason: str
    permanent: bool = False
    answered: bool = False


def _refusal(error: object) -> str:
    """One line for the `error` object of a PubAck."""
    return f"target stream refused: {describe(error)}"


def frame_size(payload: bytes, headers: dict[str, str] | None) -> int:
    """The bytes the server counts against `max_payload`: the payload, plus the header block
    as nats-py writes it when there are headers (`shared.frames.wire_size`)."""
    return len(payload) if headers is None else wire_size(headers, payload)


def read_puback(data: bytes) -> tuple[int, bool] | None:
    """(seq, duplicate) of a PubAck that reports a stored message, read without a JSON parse
    (one per event: it adds up); None when it needs the full parse (an error, an odd form)."""
    if b'"error"' in data:
        return None
    found = _SEQ_RE.search(data)
    if found is None:
        return None
    return int(found[1]), _DUPLICATE_RE.search(data) is not None


@dataclass(slots=True)
class _InFlight(Generic[T]):
    item: T
    subject: str
    deadline: float  # time.monotonic()


class Publisher(Generic[T]):
    """See the module docstring. Not thread-safe: one event loop."""

    def __init__(
        self,
        nc: Client,
        *,
        timeout_s: float,
        on_acked: Callable[[T, int, bool], Awaitable[None]],
        on_failed: Callable[[T, Failure], None],
        permission_errors: PermissionErrors | None = None,
    ) -> None:
        self._nc = nc
        self._permission_errors = permission_errors
        self._stop_hearing: Callable[[], None] | None = None
        self._timeout_s = timeout_s
        self._on_acked = on_acked
        self._on_failed = on_failed
        self._in_flight: dict[str, _InFlight[T]] = {}  # insertion order = deadline order
        self._counter = 0
        self._prefix = ""
        self._sub: Subscription | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return len(self._in_flight)

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._answer)
        if self._permission_errors is not None:
            self._stop_hearing = self._permission_errors.on_permission_error(self.deny)

    async def aclose(self) -> None:
        stop_hearing, self._stop_hearing = self._stop_hearing, None
        if stop_hearing is not None:
            stop_hearing()
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def publish(
        self,
        item: T,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None,
        size: int | None = None,
        *,
        block: bytes | None = None,
    ) -> None:
        """Send one message; its outcome comes to `on_acked` or `on_failed`. `size`: its
        `frame_size()`, when the caller knows it already; `block`: `headers` as
        `shared.frames.header_block` encodes them, sent as they are (nats-py would encode the
        headers once more)."""
        if size is None:
            size = frame_size(payload, headers)
        if size > self._nc.max_payload:
            reason = f"{size} bytes exceed the connection's max_payload {self._nc.max_payload}"
            self._on_failed(item, Failure(reason, permanent=True))
            return
        self._counter += 1
        token = str(self._counter)
        self._in_flight[token] = _InFlight(item, subject, time.monotonic() + self._timeout_s)
        self._idle.clear()
        try:
            if block is None:
                await self._nc.publish(
                    subject, payload, reply=self._prefix + token, headers=headers
                )
            else:
                await send_hpub(self._nc, subject, self._prefix + token, block, payload)
        except (nats.errors.Error, OSError) as exc:
            if self._in_flight.pop(token, None) is not None:
                self._settled()
                self._on_failed(item, Failure(repr(exc)))

    def expire(self) -> int:
        """Fail every publish older than `timeout_s`; how many there were."""
        now = time.monotonic()
        expired = []
        for token, entry in self._in_flight.items():
            if entry.deadline > now:
                break
            expired.append(token)
        for token in expired:
            # on_failed may have abandoned the rest already.
            overdue = self._in_flight.pop(token, None)
            if overdue is not None:
                reason = f"no ack from the target within {self._timeout_s:g} s"
                self._on_failed(overdue.item, Failure(reason))
        if expired:
            self._settled()
        return len(expired)

    def deny(self, subject: str) -> None:
        """Fail for good every publish in flight on `subject` (matched without case): the
        permissions refused it."""
        wanted = subject.lower()
        denied = [t for t, entry in self._in_flight.items() if entry.subject.lower() == wanted]
        for token in denied:
            # on_failed may have abandoned the rest already.
            entry = self._in_flight.pop(token, None)
            if entry is not None:
                reason = f"permission denied: publish to {entry.subject}"
                self._on_failed(entry.item, Failure(reason, permanent=True))
        if denied:
            self._settled()

    def abandon(self) -> list[T]:
        """Forget every publish in flight, oldest first: answers that still come are ignored,
        so the caller's re-send (same `Nats-Msg-Id`) is the only outcome it sees."""
        items = [entry.item for entry in self._in_flight.values()]
        self._in_flight.clear()
        self._settled()
        return items

    async def run_expiry(self, interval_s: float) -> None:
        """`expire()` every `interval_s`, forever (the caller owns and cancels the task)."""
        while True:
            await asyncio.sleep(interval_s)
            self.expire()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is in flight; True if that happened within `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        return self._idle.is_set()

    async def _answer(self, msg: Msg) -> None:
        entry = self._in_flight.pop(msg.subject[len(self._prefix) :], None)
        if entry is None:
            return  # timed out already (or not ours): the retry decides
        self._settled()
        headers = msg.headers
        if headers is not None and headers.get("Status") == _NO_RESPONDERS:
            self._on_failed(entry.item, Failure("no stream answered (503 no responders)"))
            return
        quick = read_puback(msg.data)
        if quick is not None:
            await self._on_acked(entry.item, *quick)
            return
        try:
            reply = json.loads(msg.data)
            error = reply.get("error")
            seq = int(reply["seq"]) if error is None else 0
        except (ValueError, TypeError, KeyError, AttributeError):
            self._on_failed(entry.item, Failure(f"unreadable PubAck {msg.data[:200]!r}"))
            return
        if error is not None:
            refused = Failure(_refusal(error), permanent=is_permanent(error), answered=True)
            self._on_failed(entry.item, refused)
            return
        await self._on_acked(entry.item, seq, bool(reply.get("duplicate", False)))

    def _settled(self) -> None:
        if not self._in_flight:
            self._idle.set()
