"""The broadcaster process: every part wired together, started in order, stopped in reverse.

Start: NATS → admin port → one forwarder per peer region (each checks that its consumer
exists) → first read of the pause switches (forwarders start paused and leave that state only
once the switches are read) → forwarders start → pause watcher, canary sender, backlog
monitor → NATS services API registration (`xr-broadcaster`, region in the metadata).

Stop (`aclose`, one ordered sequence under one deadline, `shared.lifecycle`): readiness goes
red → deregister → stop the canary sender, backlog monitor and pause watcher → every
forwarder stops fetching, lets its publishes under way finish and be acked
(`shutdown_timeout_s`), and nak's what it still holds so it is redelivered at once, in order →
admin port → drain and close NATS.

A run ends on SIGTERM/SIGINT (exit 0), when the NATS connection closes for good, or when a
background task or a forwarder's part fails (exit 1, one `broadcaster.failed` line naming it).

Readiness (`/readyz`): `nats` (connected), `consumers` (down while a forwarder is not bound or
its consumer went missing at run time: the detail names the consumer and `xregion
provision`), `targets` (degraded while a target is paused or unreachable), `lifecycle`.

Errors::

    ServiceError (shared/lifecycle.py)
     └── BroadcasterError                 .exit_code
          ├── BroadcasterConfigError      the configuration cannot run (exit 2)
          └── BroadcasterStartError       a dependency is missing at start (exit 1)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Self

from nats.micro import add_service

from services.broadcaster.backlog import BacklogMonitor
from services.broadcaster.canary import CanarySender
from services.broadcaster.forwarder import ConsumerMissingError, Forwarder
from services.broadcaster.gate import State
from services.broadcaster.pause import PauseWatcher
from services.broadcaster.policy import Policy, RouteCache
from shared.admin import AdminServer, CheckResult, Health
from shared.hlc import Hlc
from shared.lifecycle import Closeable, Lifecycle, ServiceError
from shared.lifecycle import serve as serve_service
from shared.logs import get_logger
from shared.metrics import BUILD_INFO, XREGION_VERSION
from shared.natsconn import NatsConnectError, NatsConnection
from shared.settings import Settings
from shared.signing import KeyFileError, load_signer

__all__ = [
    "SERVICE_NAME",
    "Broadcaster",
    "BroadcasterConfigError",
    "BroadcasterError",
    "BroadcasterStartError",
    "serve",
]

SERVICE_NAME = "xr-broadcaster"
log = get_logger("xr.broadcaster")


class BroadcasterError(ServiceError):
    """The broadcaster cannot run; `str()` is one line for the operator."""


class BroadcasterConfigError(BroadcasterError):
    exit_code = 2


class BroadcasterStartError(BroadcasterError):
    pass


class Broadcaster(Closeable):
    """A running broadcaster; an async context manager. See the module docstring."""

    def __init__(self, settings: Settings, *, hlc: Hlc | None = None) -> None:
        if not settings.peer_regions():
            raise BroadcasterConfigError(
                f"regions lists no region but {settings.region}: nothing to broadcast to"
            )
        self._settings = settings
        try:
            # Canaries are events of this region: signed like its writes, or refused on arrival.
            self._signer = load_signer(settings.signing)
        except KeyFileError as exc:
            raise BroadcasterConfigError(str(exc)) from None
        self._policy = Policy.from_settings(settings)
        self._hlc = hlc or Hlc()
        self.lifecycle = Lifecycle(
            "broadcaster",
            stop_timeout_s=settings.broadcaster.shutdown_timeout_s + settings.nats.drain_timeout_s,
        )
        self._conn = NatsConnection(settings.nats, service="broadcaster", name=SERVICE_NAME)
        self.lifecycle.stop_when(self._conn.closed, "the NATS connection closed for good")
        self._forwarders: dict[str, Forwarder] = {}
        self._watcher: PauseWatcher | None = None
        self._routes: RouteCache | None = None
        self._monitor: BacklogMonitor | None = None
        self.admin_url = ""

    @property
    def forwarders(self) -> dict[str, Forwarder]:
        return dict(self._forwarders)

    @property
    def failed(self) -> asyncio.Event:
        """Set once a part failed (the process exits 1)."""
        return self.lifecycle.failed

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

    def reload_trusted_keys(self) -> bool:
        """Re-read the trusted-keys file (SIGHUP); a bad file keeps the keys in use."""
        check = self._routes.check if self._routes is not None else None
        return check.reload() if check is not None else False

    async def aclose(self) -> None:
        """The shutdown sequence (module docstring); idempotent."""
        await self.lifecycle.aclose()

    # ------------------------------------------------------------------ start

    async def _start(self) -> None:
        s = self._settings
        try:
            await self.lifecycle.enter(self._conn)
        except NatsConnectError as exc:
            raise BroadcasterStartError(str(exc)) from None
        await self._start_admin()
        await self._make_forwarders()
        await self._start_watcher()
        for forwarder in self._forwarders.values():
            forwarder.start()
        self._start_background()
        await self._register()
        BUILD_INFO.info({"version": XREGION_VERSION, "service": SERVICE_NAME})
        log.info(
            "broadcaster.started",
            region=s.region,
            targets=sorted(self._forwarders),
            admin_url=self.admin_url,
            window_events=s.broadcaster.window_events,
            paused=sorted(t for t, f in self._forwarders.items() if f.gate.paused),
        )

    async def _make_forwarders(self) -> None:
        s = self._settings
        targets = s.peer_regions()
        routes = RouteCache(
            self._policy, readers=len(targets), max_entries=4 * s.broadcaster.window_events
        )
        self._routes = routes
        for target in targets:
            forwarder = Forwarder(
                self._conn,
                region=s.region,
                target=target,
                routes=routes,
                settings=s.broadcaster,
                on_failure=self.lifecycle.fail,
            )
            try:
                await forwarder.check_consumer(s.nats.request_timeout_s)
            except ConsumerMissingError as exc:
                raise BroadcasterStartError(str(exc)) from None
            self._forwarders[target] = forwarder
        self.lifecycle.on_stop(self._stop_forwarders)

    async def _start_watcher(self) -> None:
        s = self._settings
        watcher = PauseWatcher(
            self._conn.jetstream(),
            origin=s.region,
            targets=list(self._forwarders),
            interval_s=s.broadcaster.control_poll_s,
            on_change=self._set_paused,
        )
        self._watcher = watcher
        await watcher.poll()
        if not watcher.first_read.is_set():
            log.warning(
                "broadcaster.control_unknown",
                note="pause switches unreadable: forwarding waits until they can be read",
            )

    def _start_background(self) -> None:
        s = self._settings
        assert self._watcher is not None
        background = self.lifecycle.tasks("background")
        _ = background.spawn(self._watcher.run(), name="pause-watcher")
        canaries = CanarySender(
            self._conn,
            origin=s.region,
            targets=list(self._forwarders),
            interval_s=s.broadcaster.canary_interval_s,
            hlc=self._hlc,
            signer=self._signer,
        )
        _ = background.spawn(canaries.run(), name="canaries")
        self._monitor = BacklogMonitor(
            self._conn.jetstream(),
            region=s.region,
            targets=list(self._forwarders),
            interval_s=s.broadcaster.metrics_poll_s,
        )
        _ = background.spawn(self._monitor.run(), name="backlog")

    async def _start_admin(self) -> None:
        token = self._settings.broadcaster.admin_token
        admin = AdminServer(
            self._settings.broadcaster.admin_listen,
            service=SERVICE_NAME,
            token=token.get_secret_value() if token else None,
        )
        admin.add_check("nats", self._nats_check)
        admin.add_check("consumers", self._consumers_check)
        admin.add_check("targets", self._targets_check)
        admin.add_check("lifecycle", self._lifecycle_check)
        try:
            await self.lifecycle.enter(admin)
        except OSError as exc:
            raise BroadcasterStartError(
                f"cannot listen on broadcaster.admin_listen {admin.url}: {exc.strerror or exc}"
            ) from None
        self.admin_url = admin.url

    async def _register(self) -> None:
        service = await add_service(
            self._conn.nc,
            name=SERVICE_NAME,
            version=XREGION_VERSION,
            description="xregion broadcaster: fans this region's events out to the others",
            metadata={
                "region": self._settings.region,
                "targets": ",".join(self._forwarders),
                "admin_url": self.admin_url,
            },
        )
        self.lifecycle.on_stop(service.stop, name="services-api")

    # ------------------------------------------------------------------ stop

    async def _stop_forwarders(self) -> None:
        timeout_s = self._settings.broadcaster.shutdown_timeout_s
        await asyncio.gather(*(f.stop(timeout_s) for f in self._forwarders.values()))

    # ------------------------------------------------------------------ state

    def _set_paused(self, target: str, paused: bool) -> None:
        forwarder = self._forwarders.get(target)
        if forwarder is not None:
            forwarder.gate.set_paused(paused)

    def _nats_check(self) -> CheckResult:
        if self._conn.is_connected:
            return CheckResult(Health.OK, "connected")
        return CheckResult(Health.DOWN, "disconnected: nothing is forwarded")

    def _consumers_check(self) -> CheckResult:
        """Down while a forwarder is not bound, or its consumer went missing (deleted while
        running): that target gets nothing until the consumer is provisioned again."""
        unbound = sorted(t for t, f in self._forwarders.items() if not f.bound)
        problems = [f"not bound: {', '.join(unbound)}"] if unbound else []
        problems += [
            problem
            for _, forwarder in sorted(self._forwarders.items())
            if (problem := forwarder.consumer_problem) is not None
        ]
        if problems:
            return CheckResult(Health.DOWN, "; ".join(problems))
        return CheckResult(Health.OK, f"bound: {', '.join(self._forwarders)}")

    def _targets_check(self) -> CheckResult:
        if self._watcher is None or not self._watcher.first_read.is_set():
            return CheckResult(Health.DEGRADED, "pause switches not read yet: holding")
        paused = sorted(t for t, f in self._forwarders.items() if f.gate.paused)
        failing = sorted(t for t, f in self._forwarders.items() if f.gate.state is not State.CLOSED)
        problems = [f"paused: {', '.join(paused)}"] if paused else []
        problems += [f"unreachable (retrying): {', '.join(failing)}"] if failing else []
        if problems:
            return CheckResult(Health.DEGRADED, "; ".join(problems))
        return CheckResult(Health.OK, "forwarding to " + ", ".join(self._forwarders))

    def _lifecycle_check(self) -> CheckResult:
        if self.lifecycle.stopping:
            return CheckResult(Health.DOWN, "shutting down")
        if self.failed.is_set():
            return CheckResult(Health.DOWN, "a component failed; exiting")
        return CheckResult(Health.OK, "running")


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    on_started: Callable[[Broadcaster], None] | None = None,
) -> int:
    """Run a broadcaster until `shutdown_trigger()` completes (or NATS closes for good, or a
    part fails; `shared.lifecycle.serve`). Returns the exit code: 0 after a requested
    shutdown, else 1. Start failures raise BroadcasterError."""
    broadcaster = Broadcaster(settings)
    return await serve_service(
        broadcaster,
        shutdown_trigger=shutdown_trigger,
        on_started=on_started,
        reload=broadcaster.reload_trusted_keys,
    )
