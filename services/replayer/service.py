"""The replayer process: every part wired together, started in order, stopped in reverse.

Start: NATS → versions bucket (bind) → burst sender for acks and record writes
(`shared.coalesce`) → reply subscription for compare-and-set record updates (`shared.kvcas`)
→ HTTP client → consumer (bind to the durable, no meta leader needed) → admin port → fetch
loop and metrics poller → NATS services API registration (`xr-replayer`, region in the
metadata).

Stop (`aclose`, one ordered sequence under one deadline, `shared.lifecycle`): readiness goes
red → deregister → stop fetching → in-flight events finish and are acked
(`shutdown_timeout_s`), the rest are cancelled and nak'ed → metrics poller → admin port → HTTP
client → record updates → queued acks sent → drain and close NATS.

A run ends on SIGTERM/SIGINT (exit 0), when the NATS connection closes for good, or when the
fetch loop or the metrics poller fails (exit 1, one `replayer.failed` line naming it).

Errors::

    ServiceError (shared/lifecycle.py)
     └── ReplayerError                 .exit_code
          ├── ReplayerConfigError      the configuration cannot run (exit 2)
          └── ReplayerStartError       a dependency is missing at start (exit 1)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Self

import nats.errors
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from nats.micro import add_service

from services.replayer import metrics
from services.replayer.apply import Applier
from services.replayer.consumer import ReplayConsumer
from services.replayer.metrics import DLQ_MESSAGES
from services.replayer.upstream import Upstream
from services.replayer.versions import VersionStore
from shared.admin import AdminServer, CheckResult, Health
from shared.coalesce import Coalescer
from shared.kvcas import KvCas
from shared.lifecycle import Closeable, Lifecycle, ServiceError
from shared.lifecycle import serve as serve_service
from shared.logs import get_logger
from shared.metrics import BUILD_INFO, XREGION_VERSION
from shared.natsconn import NatsConnectError, NatsConnection
from shared.provision import versions_bucket
from shared.regions import dlq_stream, replay_consumer, replay_stream
from shared.settings import Settings
from shared.signing import KeyFileError, Verifier, load_signer, load_verifier, reload_verifier
from shared.tasks import TaskSet

__all__ = [
    "SERVICE_NAME",
    "Replayer",
    "ReplayerConfigError",
    "ReplayerError",
    "ReplayerStartError",
    "max_event_age_s",
    "serve",
]

SERVICE_NAME = "xr-replayer"
log = get_logger("xr.replayer")
# Share of the versions bucket's TTL an event may be old by default (room for clock skew).
_EVENT_AGE_SHARE = 0.9


def max_event_age_s(settings: Settings) -> float:
    """How old (by its HLC) an event may be and still be applied: `replayer.max_event_age_s`,
    by default 90 % of how long version records are kept (`streams.max_age_s`)."""
    configured = settings.replayer.max_event_age_s
    return configured if configured is not None else _EVENT_AGE_SHARE * settings.streams.max_age_s


class ReplayerError(ServiceError):
    """The replayer cannot run; `str()` is one line for the operator."""


class ReplayerConfigError(ReplayerError):
    exit_code = 2


class ReplayerStartError(ReplayerError):
    pass


class Replayer(Closeable):
    """A running replayer; an async context manager. See the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.instance_id = uuid.uuid4().hex[:12]
        self.lifecycle = Lifecycle(
            "replayer",
            stop_timeout_s=settings.replayer.shutdown_timeout_s + settings.nats.drain_timeout_s,
        )
        self._conn = NatsConnection(settings.nats, service="replayer", name=SERVICE_NAME)
        self.lifecycle.stop_when(self._conn.closed, "the NATS connection closed for good")
        self._consumer: ReplayConsumer | None = None
        self._applier: Applier | None = None
        self._versions: VersionStore | None = None
        self._verifier: Verifier | None = None
        self._running: TaskSet | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self.admin_url = ""

    @property
    def failed(self) -> asyncio.Event:
        """Set once a part failed (the process exits 1)."""
        return self.lifecycle.failed

    @property
    def nats_closed(self) -> asyncio.Event:
        return self._conn.closed

    @property
    def versions(self) -> VersionStore:
        assert self._versions is not None
        return self._versions

    @property
    def consumer(self) -> ReplayConsumer:
        assert self._consumer is not None
        return self._consumer

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

    def reload_trusted_keys(self) -> bool:
        """Re-read the trusted-keys file (SIGHUP); a bad file keeps the keys in use."""
        if self._verifier is None:
            return False
        s = self._settings
        return reload_verifier(self._verifier, s.signing, regions=s.regions)

    async def run_until_idle(self) -> None:
        """Fetch and apply until the consumer has nothing left and nothing is held (tests)."""
        await self.consumer.run(until_idle=True)

    # ------------------------------------------------------------------ start

    async def _start(self) -> None:
        s = self._settings
        try:
            verifier = load_verifier(s.signing, regions=s.regions)
            signer = load_signer(s.signing, role="replayer")
        except KeyFileError as exc:
            raise ReplayerConfigError(str(exc)) from None
        try:
            await self.lifecycle.enter(self._conn)
        except NatsConnectError as exc:
            raise ReplayerStartError(str(exc)) from None
        self._verifier = verifier
        js = self._conn.jetstream()
        kv = await self._bucket()
        out = None
        if s.replayer.coalesce_s > 0:
            out = await self.lifecycle.enter(
                Coalescer(self._conn.nc, delay_s=s.replayer.coalesce_s)
            )
        cas = await self.lifecycle.enter(
            KvCas(
                self._conn.nc, versions_bucket(s.region), timeout_s=s.nats.request_timeout_s,
                coalescer=out,
            )
        )  # fmt: skip
        versions = self._versions = VersionStore(
            kv, owner=self.instance_id, claim_s=s.replayer.ack_wait_s,
            remember=s.replayer.version_cache_keys, cas=cas,
        )  # fmt: skip
        upstream = await self.lifecycle.enter(Upstream(s.replayer))
        self._applier = Applier(
            s.replayer, s.services, region=s.region, versions=versions, upstream=upstream,
            verifier=verifier, signer=signer, max_event_age_s=max_event_age_s(s),
        )  # fmt: skip
        self._consumer = ReplayConsumer(
            self._conn.nc, js, self._applier, s.replayer, region=s.region,
            stream=replay_stream(s.region), durable=replay_consumer(),
            max_payload=lambda: self._conn.max_payload, coalescer=out,
        )  # fmt: skip
        await self._bind()
        await self._start_admin()
        self._running = self.lifecycle.tasks("consuming")
        self.lifecycle.on_stop(self._stop_consuming)
        BUILD_INFO.info({"version": XREGION_VERSION, "service": SERVICE_NAME})
        metrics.preset(s.peer_regions(), s.services)
        await self._register()
        log.info("replayer.started", region=s.region, instance=self.instance_id,
                 admin_url=self.admin_url, concurrency=s.replayer.concurrency)  # fmt: skip

    def start_consuming(self) -> None:
        """Start the fetch loop and the metrics poller (serve() does; tests may instead drive
        `run_until_idle`)."""
        assert self._running is not None, "Replayer used outside `async with`"
        self._loop_task = self._running.spawn(self.consumer.run(), name="replayer-fetch")
        self._poller = self._running.spawn(self._poll_metrics(), name="replayer-metrics")

    async def _bucket(self) -> KeyValue:
        bucket = versions_bucket(self._settings.region)
        try:
            kv: KeyValue = await self._conn.jetstream().key_value(bucket)
        except (NotFoundError, nats.errors.Error, TimeoutError) as exc:
            raise ReplayerStartError(
                f"KV bucket {bucket} is not usable ({exc!r}): run `xregion provision`"
            ) from None
        return kv

    async def _bind(self) -> None:
        assert self._consumer is not None
        s = self._settings
        js = self._conn.jetstream()
        try:
            await js.consumer_info(replay_stream(s.region), replay_consumer())
        except NotFoundError:
            raise ReplayerStartError(
                f"consumer {replay_stream(s.region)}/{replay_consumer()} does not exist: "
                "run `xregion provision`"
            ) from None
        except (nats.errors.Error, TimeoutError) as exc:
            # No meta leader, perhaps: bind anyway, the data path does not need it.
            log.warning("replayer.consumer_unchecked", error=repr(exc))
        await self._consumer.bind()
        self.lifecycle.on_stop(self._consumer.aclose)

    async def _start_admin(self) -> None:
        token = self._settings.replayer.admin_token
        admin = AdminServer(
            self._settings.replayer.admin_listen,
            service=SERVICE_NAME,
            token=token.get_secret_value() if token else None,
        )
        admin.add_check("nats", self._nats_check)
        admin.add_check("consumer", self._consumer_check)
        admin.add_check("lifecycle", self._lifecycle_check)
        try:
            await self.lifecycle.enter(admin)
        except OSError as exc:
            raise ReplayerStartError(
                f"cannot listen on replayer.admin_listen {admin.url}: {exc.strerror or exc}"
            ) from None
        self.admin_url = admin.url

    async def _register(self) -> None:
        service = await add_service(
            self._conn.nc,
            name=SERVICE_NAME,
            version=XREGION_VERSION,
            description="xregion replayer: applies other regions' events to local services",
            metadata={
                "region": self._settings.region,
                "instance": self.instance_id,
                "admin_url": self.admin_url,
            },
        )
        self.lifecycle.on_stop(service.stop, name="services-api")

    # ------------------------------------------------------------------ run and stop

    async def _stop_consuming(self) -> None:
        consumer = self.consumer
        consumer.stop()
        if self._loop_task is not None:
            await asyncio.wait([self._loop_task])
        await consumer.drain(self._settings.replayer.shutdown_timeout_s)
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])

    async def _poll_metrics(self) -> None:
        s = self._settings
        js = self._conn.jetstream(timeout_s=s.nats.request_timeout_s)
        while True:
            try:
                info = await js.stream_info(dlq_stream(s.region))
                DLQ_MESSAGES.set(info.state.messages)
            except (nats.errors.Error, TimeoutError) as exc:
                log.debug("replayer.dlq_info_failed", error=repr(exc))
            await asyncio.sleep(s.replayer.metrics_poll_s)

    # ------------------------------------------------------------------ readiness

    def _nats_check(self) -> CheckResult:
        if self._conn.is_connected:
            return CheckResult(Health.OK, "connected")
        return CheckResult(Health.DOWN, "disconnected: nothing is replayed")

    def _consumer_check(self) -> CheckResult:
        if self._consumer is not None and self._consumer.bound:
            return CheckResult(Health.OK, f"bound, {self._consumer.inflight} in flight")
        return CheckResult(Health.DOWN, "consumer not bound")

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
    on_started: Callable[[Replayer], None] | None = None,
) -> int:
    """Run a replayer until `shutdown_trigger()` completes (or NATS closes for good, or the
    fetch loop fails; `shared.lifecycle.serve`). Returns 0 after a requested shutdown, else 1.
    Start failures raise ReplayerError."""

    def started(replayer: Replayer) -> None:
        replayer.start_consuming()
        if on_started is not None:
            on_started(replayer)

    replayer = Replayer(settings)
    return await serve_service(
        replayer, shutdown_trigger=shutdown_trigger, on_started=started,
        reload=replayer.reload_trusted_keys,
    )  # fmt: skip
