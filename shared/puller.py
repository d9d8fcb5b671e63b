"""Pull requests on one durable consumer, delivered to a callback: the intake of the
broadcaster's forwarders and of the replayer.

nats-py's `fetch()` wraps every message it returns in its own task, uuid and timer
(`Subscription.next_msg`), which cost more than the rest of the broadcaster's per-event work
(profile in bench/bench_broadcaster.py); and once the first message of its long-poll request
came, it waits for the rest of the batch until the request expires, so an event that arrives
alone on an idle consumer can wait most of the fetch timeout before anyone sees it (the
replayer's lag had outliers of 700 ms). This adapter speaks the pull protocol itself over one
callback subscription: a request is a plain publish of `{"batch", "expires"}` to
`$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with the subscription's inbox as reply, and
every message that comes back goes to `on_msg`, in order, one at a time. Like `fetch()`, it
makes no JetStream API call, so it works without the meta leader.

At most one request is open at a time. It is over when its whole batch came, or the server
ended it with a status message: 404/408 (nothing more before it expired) end it normally, any
other status (409 leadership change, consumer deleted, 503 no responders...) ends it as a
failure the caller backs off from. The failure carries the status, so the caller can tell a
consumer that is gone (409 "Consumer Deleted" ends the requests open when it is deleted; later
ones find nobody serving the consumer's subject: 503 no responders, which a leader election
also causes for a moment) from a passing problem. `wait_closed()` bounds the wait: a request
that is neither filled nor ended within its expiry plus a grace (nats-py can leave pull
requests orphaned) counts as stalled and is forgotten; messages it still brings are delivered
anyway.

Each request has a reply subject of its own (`<inbox>.<n>`, one wildcard subscription), so a
status that answers a request already given up on (its 408 came late) is ignored instead of
ending the request that replaced it. Stored messages carry their own subject, not the reply
subject, so they cannot be told apart: every one is delivered and counted against the open
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["PENDING_BYTES", "PullFailedError", "PullStalledError", "Puller"]

# Bytes of delivered messages an intake subscription may queue before nats-py drops them:
# nats-py's default for a pull subscription, what `fetch()` intakes had.
PENDING_BYTES = 256 * 1024 * 1024

# Extra time a request may take past its expiry before it counts as stalled (the server's
# 408 comes from the local cluster; after a reconnect the request is simply gone).
_GRACE_S = 1.0
# Status codes that end a request without anything being wrong.
_NORMAL_END = frozenset({"404", "408"})
_HEARTBEAT = "100"
_CONFLICT = "409"
_NO_RESPONDERS = "503"
_CONSUMER_DELETED = "consumer deleted"


class PullFailedError(Exception):
    """The server ended a pull request with an error status (or it could not be sent).

    `status` is the status code ("" when the request could not be sent), `description` the
    server's text."""

    def __init__(self, message: str, *, status: str = "", description: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.description = description

    @property
    def consumer_deleted(self) -> bool:
        """The consumer was deleted while the request was open: it is gone for sure."""
        return self.status == _CONFLICT and self.description.lower() == _CONSUMER_DELETED

    @property
    def no_responders(self) -> bool:
        """Nobody serves the consumer: deleted, or its leader is being elected."""
        return self.status == _NO_RESPONDERS


class PullStalledError(Exception):
    """A pull request was neither filled nor ended in time (an orphaned pull request)."""


class Puller:
    """See the module docstring. Not thread-safe: one event loop."""

    def __init__(
        self,
        nc: Client,
        *,
        stream: str,
        consumer: str,
        on_msg: Callable[[Msg], Awaitable[None]],
        pending_bytes_limit: int,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._on_msg = on_msg
        self._pending_bytes_limit = pending_bytes_limit
        self._sub: Subscription | None = None
        self._inbox = ""
        self._requests = 0
        self._reply = ""  # reply subject of the open (or last) request
        self._expected = 0  # messages the open request may still bring
        self._closed = asyncio.Event()
        self._closed.set()
        self._error: PullFailedError | None = None

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(
            self._inbox + ".*", cb=self._deliver, pending_bytes_limit=self._pending_bytes_limit
        )

    async def aclose(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        self._closed.set()

    async def request(self, batch: int, expires_s: float) -> None:
        """Open a request for up to `batch` messages, waiting at most `expires_s` for them."""
        body = json.dumps({"batch": batch, "expires": int(expires_s * 1e9)}).encode()
        self._requests += 1
        self._reply = f"{self._inbox}.{self._requests}"
        self._expected = batch
        self._error = None
        self._closed.clear()
        try:
            await self._nc.publish(self._next_subject, body, reply=self._reply)
        except (nats.errors.Error, OSError) as exc:
            self._end(PullFailedError(repr(exc)))

    async def wait_closed(self, expires_s: float) -> None:
        """Wait until the open request is over; PullFailedError or PullStalledError if it
        did not end well."""
        try:
            async with asyncio.timeout(expires_s + _GRACE_S):
                await self._closed.wait()
        except TimeoutError:
            self._reply = ""  # forgotten: whatever still answers it is ignored
            self._end(None)
            raise PullStalledError from None
        if self._error is not None:
            raise self._error

    async def _deliver(self, msg: Msg) -> None:
        if msg.reply:  # a stored message (its reply is the ack subject)
            self._expected -= 1
            if self._expected == 0:
                self._end(None)
            await self._on_msg(msg)
            return
        if msg.subject != self._reply:
            return  # the answer to a request given up on (stalled): the open one goes on
        status = (msg.headers or {}).get("Status", "")
        if status == _HEARTBEAT:
            return
        if status in _NORMAL_END:
            self._end(None)
        else:
            self._end(_failure(status, (msg.headers or {}).get("Description", "")))

    def _end(self, error: PullFailedError | None) -> None:
        self._expected = 0
        if not self._closed.is_set():
            self._error = error
            self._closed.set()


def _failure(status: str, description: str) -> PullFailedError:
    # A 503 from the server carries odd "Description" text (the Nats-Subject header, mangled).
    description = " ".join(description.split())
    text = f"status {status or '?'} {description}".strip()
    return PullFailedError(text, status=status, description=description)
