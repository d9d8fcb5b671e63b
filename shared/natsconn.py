"""The NATS connection every service holds (docs/NATS.md §2.1, §3.1).

`NatsConnection` is an async context manager around one nats-py client:

* the first connect is bounded (`first_connect_timeout_s`): a service that cannot reach NATS
  at start says so and exits instead of hanging (nats-py alone would retry for minutes);
* once connected, it reconnects forever, with jittered exponential backoff capped at
  `reconnect_wait_max_s` (`shared/retry.py`, component `nats.reconnect`), logging and counting
  every disconnect and reconnect;
* if the client closes for good anyway (nats-py closes on any protocol `-ERR`), `closed` is
  set so the owner can shut down instead of running without a connection;
* a publish the user's permissions refuse gets no answer at all: the server only writes
  `-ERR 'Permissions Violation for Publish to "<subject>"'`, which nats-py hands to the error
  callback alone; `on_permission_error(callback)` passes the subject on to whoever waits for
  an answer on it (`denied_publish_subject`);
* `aclose()` drains (bounded by `drain_timeout_s`), then closes; it is idempotent;
* replies come back on the user's own inboxes, `inbox_prefix(user)` (`_INBOX.<user>`, or
  nats-py's `_INBOX` without a user): the rendered permissions let each user subscribe to its
  own prefix only, so no credential can read the replies (fetched events, acks) of another;
* no error or log line carries the credentials of a server URL (`redact_url`).

Errors raised here:

    NatsConnectError   the first connect did not succeed in time
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import ssl
from collections.abc import Callable
from typing import Any, Self

import nats
from nats.aio.client import Client, Server
from nats.js import JetStreamContext

from shared.frames import HeaderParsingClient
from shared.lifecycle import Closeable
from shared.logs import get_logger
from shared.metrics import NATS_CONNECTED, NATS_DISCONNECTS, NATS_ERRORS, NATS_RECONNECTS
from shared.retry import RetryPolicy
from shared.settings import NatsSettings

__all__ = [
    "NatsConnectError",
    "NatsConnection",
    "PermissionCallback",
    "denied_publish_subject",
    "inbox_prefix",
    "login_user",
    "redact_url",
]

log = get_logger("xr.nats")

DEFAULT_INBOX_PREFIX = "_INBOX"
# Characters a subject token may not hold, plus `%` itself, so the escaping is one-to-one.
_NOT_IN_TOKEN_RE = re.compile(r"[\s.*>%]")
# Up to the last `@` of the URL: a password may hold `/` or `@` unencoded.
_USERINFO_RE = re.compile(r"(?<=//)[^\s'\",]*@")
# The server writes the subject Go-quoted (`%q`); bare and single-quoted forms are taken too.
_PUBLISH_DENIED_RE = re.compile(
    r"permissions violation for publish to\s+(\"(?:[^\"\\]|\\.)*\"|'[^']*'|[^\s'\"]+)",
    re.IGNORECASE,
)

PermissionCallback = Callable[[str], None]


def inbox_prefix(user: str | None) -> str:
    """The inbox prefix of a connection logged in as `user`: `_INBOX.<user>` (one subject token:
    `.`, `*`, `>`, `%` and whitespace are %-escaped, so no user's prefix covers another's)."""
    if not user:
        return DEFAULT_INBOX_PREFIX
    token = _NOT_IN_TOKEN_RE.sub(lambda m: f"%{ord(m[0]):02X}", user)
    return f"{DEFAULT_INBOX_PREFIX}.{token}"


def redact_url(text: str) -> str:
    """`text` with the userinfo of every URL in it (`nats://user:pass@host`) replaced by `***@`."""
    return _USERINFO_RE.sub("***@", text)


def denied_publish_subject(error_text: str) -> str | None:
    """The subject of a publish permission violation named in `error_text` (the server's
    `Permissions Violation for Publish to "<subject>"`, as nats-py reports it: lowercased,
    with its outer quotes stripped), else None. A violation of a reply subject or of a
    subscription is not a publish to that subject, so it gives None."""
    found = _PUBLISH_DENIED_RE.search(error_text)
    if found is None:
        return None
    quoted = found[1]
    if quoted[0] == "'":
        return quoted[1:-1] or None
    if quoted[0] == '"':
        return _unquote(quoted) or None
    return quoted


def _unquote(quoted: str) -> str:
    """A Go `%q` string without its quotes (JSON's escapes; a `\\x..` one is kept as written)."""
    try:
        text = json.loads(quoted)
    except ValueError:
        return quoted[1:-1]
    return text if isinstance(text, str) else quoted[1:-1]


def login_user(settings: NatsSettings) -> str | None:
    """The user a connection logs in as: `user`, else the one in a server URL (`u:p@`)."""
    if settings.user:
        return settings.user
    for url in settings.servers:
        userinfo, at, _ = url.partition("//")[2].rpartition("@")
        name, colon, _ = userinfo.partition(":")
        if at and colon and name:
            return name  # as nats-py sends it: not percent-decoded
    return None


class NatsConnectError(Exception):
    """The first connection to NATS could not be made within the configured time."""


class NatsConnection(Closeable):
    """One NATS client for one service process; see the module docstring."""

    def __init__(self, settings: NatsSettings, *, service: str, name: str | None = None) -> None:
        self._settings = settings
        self._service = service
        self._name = name or service
        self._reconnects = RetryPolicy.backoff(
            "nats.reconnect", base_s=settings.reconnect_wait_s, max_s=settings.reconnect_wait_max_s
        ).retries()
        self._nc: Client | None = None
        self._permission_callbacks: list[PermissionCallback] = []
        self.closed = asyncio.Event()

    @property
    def nc(self) -> Client:
        if self._nc is None:
            raise RuntimeError("NatsConnection is not connected; use `async with`")
        return self._nc

    @property
    def is_connected(self) -> bool:
        return self._nc is not None and bool(self._nc.is_connected)

    @property
    def max_payload(self) -> int:
        return int(self.nc.max_payload)

    def on_permission_error(self, callback: PermissionCallback) -> Callable[[], None]:
        """Call `callback(subject)` for every publish the permissions refuse (the subject as
        the error names it: nats-py lowercases it); returns the function that removes it."""
        self._permission_callbacks.append(callback)

        def remove() -> None:
            if callback in self._permission_callbacks:
                self._permission_callbacks.remove(callback)

        return remove

    def jetstream(self, timeout_s: float | None = None) -> JetStreamContext:
        timeout = self._settings.request_timeout_s if timeout_s is None else timeout_s
        js: JetStreamContext = self.nc.jetstream(timeout=timeout)
        return js

    async def connect(self) -> None:
        nc = HeaderParsingClient()
        try:
            await asyncio.wait_for(
                nc.connect(**self._connect_options()), self._settings.first_connect_timeout_s
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            await nc.close()
            raise NatsConnectError(self._connect_failure(exc)) from exc
        self._nc = nc
        NATS_CONNECTED.labels(self._service).set(1)
        log.info("nats.connected", url=_safe_url(nc), server=nc.connected_server_version)

    async def aclose(self) -> None:
        nc, self._nc = self._nc, None
        if nc is None or nc.is_closed:
            return
        try:
            if nc.is_connected:
                await nc.drain()
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("nats.drain_failed", error=redact_url(repr(exc)))
        finally:
            await _close(nc)
            NATS_CONNECTED.labels(self._service).set(0)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    def _connect_options(self) -> dict[str, Any]:
        s = self._settings
        options: dict[str, Any] = {
            "servers": list(s.servers),
            "name": self._name,
            "connect_timeout": s.connect_timeout_s,
            "reconnect_time_wait": s.reconnect_wait_s,
            "max_reconnect_attempts": -1,
            "drain_timeout": s.drain_timeout_s,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
            "reconnect_to_server_handler": self._pick_server,
            "inbox_prefix": inbox_prefix(login_user(s)),
        }
        options.update(self._auth_options())
        return options

    def _auth_options(self) -> dict[str, Any]:
        s = self._settings
        options: dict[str, Any] = {}
        if s.creds is not None:
            options["user_credentials"] = str(s.creds)
        if s.user is not None:
            options["user"] = s.user
        if s.password is not None:
            options["password"] = s.password.get_secret_value()
        if s.tls_ca is not None or s.tls_cert is not None:
            context = ssl.create_default_context(
                cafile=str(s.tls_ca) if s.tls_ca is not None else None
            )
            if s.tls_cert is not None:
                key = str(s.tls_key) if s.tls_key is not None else None
                context.load_cert_chain(str(s.tls_cert), key)
            options["tls"] = context
        return options

    def _pick_server(
        self, servers: list[Server], info: dict[str, Any]
    ) -> tuple[Server | None, float]:
        # nats-py waits a constant time between attempts; this spreads them out instead, so a
        # fleet of processes does not hammer a server that is coming back.
        delay = self._reconnects.next_delay("disconnected", service=self._service)
        return random.choice(servers) if servers else None, delay

    def _connect_failure(self, exc: BaseException) -> str:
        servers = ", ".join(redact_url(url) for url in self._settings.servers)
        if isinstance(exc, TimeoutError):
            return (
                f"could not connect to NATS at {servers} within "
                f"{self._settings.first_connect_timeout_s:g} s"
            )
        return f"could not connect to NATS at {servers}: {redact_url(repr(exc))}"

    async def _on_error(self, exc: Exception) -> None:
        NATS_ERRORS.labels(self._service, type(exc).__name__).inc()
        if self._nc is None:  # still the first connect: its failure is raised once, in full
            log.debug("nats.error", error=redact_url(repr(exc)))
            return
        log.warning("nats.error", error=redact_url(repr(exc)))
        subject = denied_publish_subject(str(exc))
        if subject is not None:
            for callback in list(self._permission_callbacks):
                callback(subject)

    async def _on_disconnected(self) -> None:
        if self._nc is None:  # our own close, or the failed first connect
            return
        NATS_DISCONNECTS.labels(self._service).inc()
        NATS_CONNECTED.labels(self._service).set(0)
        log.warning("nats.disconnected")

    async def _on_reconnected(self) -> None:
        self._reconnects.reset()
        NATS_RECONNECTS.labels(self._service).inc()
        NATS_CONNECTED.labels(self._service).set(1)
        log.info("nats.reconnected", url=_safe_url(self._nc))

    async def _on_closed(self) -> None:
        NATS_CONNECTED.labels(self._service).set(0)
        if self._nc is not None:
            log.error("nats.closed", error=redact_url(repr(self._nc.last_error)))
        self.closed.set()


async def _close(nc: Client) -> None:
    """Close `nc`. nats-py, closed while its link is down with publishes still buffered,
    writes them to the dead transport and raises (RuntimeError, or ConnectionResetError when
    the peer is gone) after it has marked itself closed. Those publishes were never acked, so
    whoever sent them still holds them (an outbox, an unacked source message)."""
    if nc.is_closed:
        return
    try:
        await nc.close()
    except (RuntimeError, OSError) as exc:
        log.warning("nats.close_unclean", error=redact_url(repr(exc)))


def _safe_url(nc: Client | None) -> str | None:
    """The connected server's address without credentials."""
    url = nc.connected_url if nc is not None else None
    if url is None:
        return None
    return f"{url.scheme}://{url.hostname}:{url.port}"
