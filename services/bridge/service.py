"""The bridge process: every part wired together, started in order, stopped in reverse.

Start: routes (config errors first) → NATS → outbox → publisher (its ack inbox) → version
bucket (bound, never created; a bridge without it still starts) → drain the outbox (bounded)
→ upstream client → admin port → HTTP listener → NATS services API registration
(`xr-bridge`).

Stop (`aclose`, one ordered sequence under one deadline, `shared.lifecycle`): readiness goes
red → deregister → stop accepting and let in-flight requests finish, with their publishes
(`shutdown_timeout_s`) → admin port → upstream client → stop the drainer after one last bounded
pass → publisher → close the outbox → drain and close NATS. Whatever the outbox still holds is
on disk for the next start.

A run ends on SIGTERM/SIGINT (exit 0), when the NATS connection closes for good, or when the
outbox drainer fails (exit 1, one `bridge.failed` line naming it): a bridge whose outbox no
longer drains must not go on answering writes it would only spool.

Errors::

    ServiceError (shared/lifecycle.py)
     └── BridgeError                 .exit_code
          ├── BridgeConfigError      the configuration cannot run (exit 2)
          └── BridgeStartError       a dependency is missing at start (exit 1)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

import nats.errors
from aiohttp import web
from nats.micro import add_service

from services.bridge.deadletters import DeadLetters
from services.bridge.delivery import Delivery
from services.bridge.drainer import Drainer
from services.bridge.headers import DEFAULT_FORWARDED
from services.bridge.outbox import Outbox, OutboxError
from services.bridge.proxy import Proxy, ProxyConfig
from services.bridge.publisher import Publisher
from services.bridge.routing import RouteConflictError, RouteTable
from services.bridge.serverlog import ServerLog
from services.bridge.upstream import Upstream
from services.bridge.versions import LocalVersions
from shared.admin import AdminServer, CheckResult, Health
from shared.hlc import Hlc
from shared.lifecycle import Closeable, Lifecycle, ServiceError
from shared.lifecycle import serve as serve_service
from shared.logs import get_logger
from shared.metrics import BUILD_INFO, XREGION_VERSION
from shared.natsconn import NatsConnectError, NatsConnection
from shared.netaddr import split_listen
from shared.retry import RetryPolicy
from shared.settings import Settings
from shared.signing import KeyFileError, load_signer, load_verifier, reload_verifier
from shared.tasks import TaskSet

__all__ = [
    "SERVICE_NAME",
    "Bridge",
    "BridgeConfigError",
    "BridgeError",
    "BridgeStartError",
    "outbox_path",
    "serve",
]

SERVICE_NAME = "xr-bridge"
# Idle keep-alive connections from clients are closed after this long.
_CLIENT_KEEPALIVE_S = 75.0
# Pending connections the kernel queues for us (capped by net.core.somaxconn): a burst of
# thousands of clients should wait in the queue, not retry their SYN a second later.
_LISTEN_BACKLOG = 4096
# The last drain attempt on shutdown, when NATS is up and the outbox is not empty.
_FINAL_DRAIN_S = 5.0
# How long start waits for the server to confirm the services API subscriptions.
_REGISTER_FLUSH_S = 2

log = get_logger("xr.bridge")


class BridgeError(ServiceError):
    """The bridge cannot run; `str()` is one line for the operator."""


class BridgeConfigError(BridgeError):
    exit_code = 2


class BridgeStartError(BridgeError):
    pass


def outbox_path(data_dir: Path, listen: str) -> Path:
    """One outbox per bridge instance, named by its listen address (instances on one host
    differ by it), so a restarted instance finds its own spooled events."""
    return data_dir / "bridge" / f"outbox-{re.sub(r'[^A-Za-z0-9.-]+', '_', listen)}.sqlite3"


class Bridge(Closeable):
    """A running bridge; an async context manager. See the module docstring."""

    def __init__(self, settings: Settings, *, hlc: Hlc | None = None) -> None:
        try:
            self._signer = load_signer(settings.signing)
            self._verifier = load_verifier(settings.signing, regions=settings.regions)
        except KeyFileError as exc:
            raise BridgeConfigError(f"signing: {exc}") from None
        try:
            self._routes = RouteTable.from_services(settings.services)
        except RouteConflictError as exc:
            raise BridgeConfigError(str(exc)) from None
        self._settings = settings
        self._hlc = hlc or Hlc()
        s = settings.bridge
        self.lifecycle = Lifecycle(
            "bridge",
            stop_timeout_s=s.shutdown_timeout_s + _FINAL_DRAIN_S + settings.nats.drain_timeout_s,
        )
        self._conn = NatsConnection(settings.nats, service="bridge", name=SERVICE_NAME)
        self.lifecycle.stop_when(self._conn.closed, "the NATS connection closed for good")
        self._outbox = Outbox(
            outbox_path(settings.data_dir, settings.bridge.listen),
            max_bytes=settings.bridge.outbox_max_bytes,
        )
        self._deliveries = TaskSet("deliveries")
        self.instance_id = uuid.uuid4().hex[:12]
        self.url = ""
        self.admin_url = ""

    def reload_trusted_keys(self) -> bool:
        """Re-read the trusted-keys file (SIGHUP); a bad file keeps the keys in use."""
        if self._verifier is None:
            return False
        s = self._settings
        return reload_verifier(self._verifier, s.signing, regions=s.regions)

    @property
    def outbox(self) -> Outbox:
        return self._outbox

    @property
    def nats_closed(self) -> asyncio.Event:
        """Set if the NATS client closed for good (the process should exit and restart)."""
        return self._conn.closed

    async def __aenter__(self) -> Self:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def aclose(self) -> None:
        """The shutdown sequence (module docstring); idempotent."""
        await self.lifecycle.aclose()

    async def _start(self) -> None:
        s = self._settings.bridge
        try:
            await self.lifecycle.enter(self._conn)
        except NatsConnectError as exc:
            raise BridgeStartError(str(exc)) from None
        try:
            await self.lifecycle.enter(self._outbox)
        except OutboxError as exc:
            raise BridgeStartError(str(exc)) from None
        publisher = await self.lifecycle.enter(
            Publisher(self._conn, max_inflight=s.max_inflight_publishes)
        )
        versions = LocalVersions(
            self._conn,
            region=self._settings.region,
            owner=f"bridge-{self.instance_id}",
            timeout_s=s.version_record_timeout_s,
            max_inflight=s.max_inflight_publishes,
            cache_keys=s.version_cache_keys,
            coalesce_s=s.version_coalesce_s,
        )
        if s.record_local_versions:
            await self.lifecycle.enter(versions)
        dead_letters = self._dead_letters(publisher)
        drainer = Drainer(
            self._outbox,
            publisher,
            dead_letters=dead_letters,
            batch=s.outbox_batch,
            timeout_s=s.publish_timeout_s,
            retry=RetryPolicy.backoff(
                "bridge.outbox", base_s=s.outbox_retry_base_s, max_s=s.outbox_retry_max_s
            ),
            record=versions.record_published if s.record_local_versions else None,
        )
        await self._drain_at_start(drainer)
        drainers = self.lifecycle.tasks("outbox")
        self.lifecycle.on_stop(functools.partial(self._stop_drainer, drainer, drainers))
        _ = drainers.spawn(drainer.run(), name="outbox-drainer")
        upstream = await self.lifecycle.enter(Upstream(s))
        await self._start_admin()
        delivery = self._delivery(publisher, dead_letters, drainer)
        proxy = self._proxy(delivery, upstream, versions if s.record_local_versions else None)
        await self._start_http(proxy)
        await self._register()
        BUILD_INFO.info({"version": XREGION_VERSION, "service": SERVICE_NAME})
        log.info(
            "bridge.started",
            region=self._settings.region,
            url=self.url,
            admin_url=self.admin_url,
            services=sorted(self._settings.services),
            body_limit_bytes=proxy.body_limit(),
            signing=self._settings.signing.mode,
            key_id=self._signer.key_id if self._signer is not None else None,
            outbox=str(self._outbox.path),
            outbox_depth=self._outbox.depth,
            versions_bucket=versions.bucket if versions.bound else None,
            instance=self.instance_id,
        )
        credentials = s.credential_forward_headers()
        if credentials:
            log.warning(
                "bridge.forwards_credentials",
                headers=credentials,
                note="bridge.forward_headers copies these into every event: they are stored "
                "in JetStream and sent to every target region's service",
            )

    async def _drain_at_start(self, drainer: Drainer) -> None:
        if not self._outbox.depth:
            return
        log.info("bridge.outbox.start_drain", outbox_depth=self._outbox.depth)
        if not await drainer.drain(self._settings.bridge.start_drain_timeout_s):
            log.warning(
                "bridge.outbox.not_drained_at_start",
                outbox_depth=self._outbox.depth,
                note="new events queue behind the spooled ones; draining continues",
            )

    async def _stop_drainer(self, drainer: Drainer, drainers: TaskSet) -> None:
        await drainers.cancel("bridge shutting down")
        if self._outbox.depth and self._conn.is_connected:
            await drainer.drain(_FINAL_DRAIN_S)
        if self._outbox.depth:
            log.warning("bridge.outbox.left_for_next_start", outbox_depth=self._outbox.depth)

    def _dead_letters(self, publisher: Publisher) -> DeadLetters:
        """Where events the events stream refuses for good go (the region's DLQ)."""
        return DeadLetters(
            publisher,
            region=self._settings.region,
            max_payload=lambda: self._conn.max_payload,
            timeout_s=self._settings.bridge.publish_timeout_s,
        )

    def _delivery(
        self, publisher: Publisher, dead_letters: DeadLetters, drainer: Drainer
    ) -> Delivery:
        return Delivery(
            publisher,
            self._outbox,
            dead_letters=dead_letters,
            timeout_s=self._settings.bridge.publish_timeout_s,
            connected=lambda: self._conn.is_connected,
            on_spooled=drainer.wake,
            tasks=self._deliveries,
        )

    def _proxy(
        self, delivery: Delivery, upstream: Upstream, versions: LocalVersions | None
    ) -> Proxy:
        s = self._settings.bridge
        config = ProxyConfig(
            region=self._settings.region,
            regions=tuple(self._settings.regions),
            max_replicated_body_bytes=s.max_replicated_body_bytes,
            forward_headers=DEFAULT_FORWARDED | frozenset(s.forward_headers),
            max_concurrent_requests=s.max_concurrent_requests,
            max_buffered_body_bytes=s.max_buffered_body_bytes,
            body_read_timeout_s=s.body_read_timeout_s,
        )
        return Proxy(
            config,
            routes=self._routes,
            upstream=upstream,
            delivery=delivery,
            max_payload=lambda: self._conn.max_payload,
            tasks=self._deliveries,
            hlc=self._hlc,
            signer=self._signer,
            verifier=self._verifier,
            versions=versions,
        )

    async def _start_admin(self) -> None:
        token = self._settings.bridge.admin_token
        admin = AdminServer(
            self._settings.bridge.admin_listen,
            service=SERVICE_NAME,
            token=token.get_secret_value() if token else None,
        )
        admin.add_check("nats", self._nats_check)
        admin.add_check("outbox", self._outbox_check)
        admin.add_check("lifecycle", self._lifecycle_check)
        try:
            await self.lifecycle.enter(admin)
        except OSError as exc:
            raise BridgeStartError(_listen_failure("admin_listen", admin.url, exc)) from None
        self.admin_url = admin.url

    async def _start_http(self, proxy: Proxy) -> None:
        s = self._settings.bridge
        server = web.Server(
            proxy.handle,
            access_log=None,
            logger=ServerLog(),
            auto_decompress=False,
            keepalive_timeout=_CLIENT_KEEPALIVE_S,
        )
        runner = web.ServerRunner(
            server, handle_signals=False, shutdown_timeout=s.shutdown_timeout_s
        )
        await runner.setup()
        self.lifecycle.on_stop(functools.partial(self._stop_http, runner))
        host, port = split_listen(s.listen)
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True, backlog=_LISTEN_BACKLOG)
            await site.start()
        except OSError as exc:
            raise BridgeStartError(_listen_failure("listen", s.listen, exc)) from None
        bound = next((a for a in runner.addresses if isinstance(a, tuple)), (host, port))
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound[1]}"

    async def _stop_http(self, runner: web.ServerRunner) -> None:
        # Stops accepting, then waits (bounded) for in-flight requests and their publishes.
        await runner.cleanup()
        if not await self._deliveries.wait(self._settings.bridge.shutdown_timeout_s):
            await self._deliveries.cancel("bridge shutdown deadline passed")

    async def _register(self) -> None:
        service = await add_service(
            self._conn.nc,
            name=SERVICE_NAME,
            version=XREGION_VERSION,
            description="xregion bridge: HTTP reverse proxy that turns writes into events",
            metadata={
                "region": self._settings.region,
                "url": self.url,
                "admin_url": self.admin_url,
            },
        )
        self.lifecycle.on_stop(service.stop, name="services-api")
        # Once started, the bridge is discoverable: its subscriptions have reached the server.
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await self._conn.nc.flush(timeout=_REGISTER_FLUSH_S)

    def _nats_check(self) -> CheckResult:
        if self._conn.is_connected:
            return CheckResult(Health.OK, "connected")
        return CheckResult(Health.DEGRADED, "disconnected: writes are spooled to the outbox")

    def _outbox_check(self) -> CheckResult:
        depth = self._outbox.depth
        if self._outbox.is_full:
            return CheckResult(Health.DOWN, f"outbox full ({depth} events): writes fail")
        if depth:
            return CheckResult(Health.DEGRADED, f"{depth} events spooled")
        return CheckResult(Health.OK, "empty")

    def _lifecycle_check(self) -> CheckResult:
        if self.lifecycle.stopping:
            return CheckResult(Health.DOWN, "shutting down")
        if self.lifecycle.failed.is_set():
            return CheckResult(Health.DOWN, "a component failed; exiting")
        return CheckResult(Health.OK, "running")


def _listen_failure(key: str, address: str, exc: OSError) -> str:
    return f"cannot listen on bridge.{key} {address}: {exc.strerror or exc}"


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    on_started: Callable[[Bridge], None] | None = None,
) -> int:
    """Run a bridge until `shutdown_trigger()` completes, NATS closes for good or the outbox
    drainer fails (`shared.lifecycle.serve`). Returns the exit code: 0 after a requested
    shutdown, else 1. Start failures raise BridgeError."""
    bridge = Bridge(settings)
    return await serve_service(
        bridge,
        shutdown_trigger=shutdown_trigger,
        on_started=on_started,
        reload=bridge.reload_trusted_keys,
    )
