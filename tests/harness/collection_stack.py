"""A 3-region deployment whose downstream services are real `collection_service` processes.

`CollectionDeployment.start(workdir, services)` starts a 3x1 super-cluster and, per region, a
`python -m tests.harness.collection_service` process, a region file (free loopback ports) that
routes every configured xregion service to it, provisions the region and runs bridge,
broadcaster and replayer as real `xregion <service> --config F` processes, all ready.
`stop()` stops every process it started, by PID (SIGTERM, then SIGKILL after a deadline).

Service settings may use keys this build of xregion does not know yet (`rules`,
`create_key`): such a service is left out of the region files and `unsupported[name]` says
why, so the tests of the other services still run and the tests of that one can fail with
the reason.

Adapted from tests/ops/stack.py (test modules are not imported from one another).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from services.xregion.local.supercluster import SuperCluster, free_ports, with_free_ports
from services.xregion.natsconf import build_topology
from services.xregion.ops.scrape import parse_metrics
from shared import regions
from shared.natsconn import NatsConnection
from shared.settings import ServiceSettings, Settings, load_settings
from tests.harness.fixtures import DEV_REGIONS
from tests.harness.provisioning import provision_region
from tests.harness.toml import write_region_toml
from tests.harness.wait import wait_until
from tests.harness.xregion_procs import (
    FAST_BROADCASTER,
    XREGION,
    ServiceProcess,
    clean_env,
    run_xregion,
    stop,
)

__all__ = [
    "REGIONS",
    "XREGION",
    "CollectionDeployment",
    "CollectionService",
    "RegionStack",
    "ServiceProcess",
    "metric_total",
    "render_region_file",
    "run_xregion",
]

REGIONS = DEV_REGIONS
REPO_ROOT = Path(__file__).resolve().parents[2]
XREGION_SERVICES = ("bridge", "broadcaster", "replayer")
READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 10.0

# Short waits so retries, pauses and reconnects show within a second or two.
_NATS: dict[str, Any] = {
    "first_connect_timeout_s": 10.0,
    "reconnect_wait_s": 0.1,
    "reconnect_wait_max_s": 0.5,
}
_REPLAYER: dict[str, Any] = {
    "fetch_timeout_s": 0.3,
    # At least 2 x (retry_total_s + upstream_timeout_s): a call and its retries fit a claim.
    "ack_wait_s": 6.0,
    # Long enough that a call slowed down by a busy machine is not retried in process: that
    # retry would be a second call of the event that the repeat counts cannot explain.
    "upstream_timeout_s": 2.5,
    "retry_total_s": 0.5,
    "nak_base_s": 0.2,
    "nak_max_s": 1.0,
    "metrics_poll_s": 0.25,
    "shutdown_timeout_s": 5.0,
}


def _log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class CollectionService:
    """`python -m tests.harness.collection_service --listen 127.0.0.1:PORT`, a real process."""

    def __init__(self, log_path: Path) -> None:
        self.url = ""
        self._log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, http: httpx.AsyncClient) -> None:
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        with self._log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.harness.collection_service",
                "--listen", f"127.0.0.1:{port}",
                stdout=log, stderr=log, cwd=REPO_ROOT, env=clean_env(),
            )  # fmt: skip
        await wait_until(
            lambda: self._healthy(http), 20, interval=0.05, message=f"{self.url}/_health"
        )

    async def _healthy(self, http: httpx.AsyncClient) -> bool:
        if self.proc is None or self.proc.returncode is not None:
            raise RuntimeError(f"collection_service exited: {_log_tail(self._log_path)}")
        try:
            return (await http.get(self.url + "/_health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop(self) -> None:
        await stop(self.proc)

    async def items(self, http: httpx.AsyncClient, collection: str) -> dict[str, dict[str, Any]]:
        """The collection's items by id, as this region's service holds them."""
        reply = await http.get(f"{self.url}/{collection}")
        reply.raise_for_status()
        return {item["id"]: item for item in reply.json()}

    async def calls(self, http: httpx.AsyncClient) -> dict[str, dict[str, int]]:
        reply = await http.get(self.url + "/_calls")
        reply.raise_for_status()
        data: dict[str, dict[str, int]] = reply.json()
        return data


def metric_total(text: str, name: str, labels: Mapping[str, str]) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(s.value for s in parse_metrics(text) if s.matches(name, labels))


# ---------------------------------------------------------------------- region files


def render_region_file(path: Path, data: Mapping[str, Any]) -> Settings:
    """Write `data` (the region file's tables as plain values) as TOML; read it back."""
    return load_settings(write_region_toml(path, data), env={})


def _unsupported(services: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Services whose settings this build rejects, with the reason (one line)."""
    found: dict[str, str] = {}
    for name, values in services.items():
        try:
            ServiceSettings.model_validate({"upstream": "http://127.0.0.1:1", **values})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            found[name] = f"services.{name} rejected by this build of xregion: {problems}"
    return found


@dataclass
class RegionStack:
    region: str
    settings: Settings
    config: Path
    service: CollectionService
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def bridge_url(self) -> str:
        return "http://" + self.settings.bridge.listen

    @property
    def replayer(self) -> ServiceProcess:
        return self.processes["replayer"]

    @property
    def broadcaster(self) -> ServiceProcess:
        return self.processes["broadcaster"]


@dataclass
class CollectionDeployment:
    cluster: SuperCluster
    workdir: Path
    http: httpx.AsyncClient
    stacks: dict[str, RegionStack] = field(default_factory=dict)
    unsupported: dict[str, str] = field(default_factory=dict)
    _services: list[CollectionService] = field(default_factory=list)

    @classmethod
    async def start(
        cls, workdir: Path, services: Mapping[str, Mapping[str, Any]]
    ) -> CollectionDeployment:
        """Everything up and ready; on failure what was started is stopped, then it raises.

        `services` maps an xregion service name to its region-file table minus `upstream`
        (each region's own collection_service is filled in).
        """
        cluster = SuperCluster(with_free_ports(build_topology(REGIONS)), workdir / "nats")
        await cluster.start(90)  # stops what it started if it fails
        http = httpx.AsyncClient(timeout=5.0, trust_env=False)
        deployment = cls(cluster, workdir, http)
        try:
            await deployment._start_regions(services)
        except BaseException:
            await deployment.stop()
            raise
        return deployment

    async def _start_regions(self, services: Mapping[str, Mapping[str, Any]]) -> None:
        self.unsupported = _unsupported(services)
        usable = {k: v for k, v in services.items() if k not in self.unsupported}
        for region in REGIONS:
            service = CollectionService(self.workdir / f"{region}-collection.log")
            self._services.append(service)
            await service.start(self.http)
            settings = render_region_file(
                self.workdir / f"{region}.toml", self._region_data(region, service.url, usable)
            )
            await provision_region(settings)
            stack = RegionStack(region, settings, self.workdir / f"{region}.toml", service)
            listens = {
                "bridge": settings.bridge.admin_listen,
                "broadcaster": settings.broadcaster.admin_listen,
                "replayer": settings.replayer.admin_listen,
            }
            for name in XREGION_SERVICES:
                stack.processes[name] = ServiceProcess(
                    name,
                    stack.config,
                    "http://" + listens[name],
                    self.workdir / f"{region}-{name}.log",
                )
            self.stacks[region] = stack
        for process in self.processes():
            await process.spawn()
        await self.wait_ready()

    def _region_data(
        self, region: str, upstream: str, services: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        bridge, bridge_admin, broadcaster_admin, replayer_admin = free_ports(4)
        return {
            "region": region,
            "regions": list(REGIONS),
            "data_dir": str(self.workdir / region),
            "nats": {"servers": self.cluster.client_urls(region), **_NATS},
            "signing": {"mode": "off"},
            "bridge": {
                "listen": f"127.0.0.1:{bridge}",
                "admin_listen": f"127.0.0.1:{bridge_admin}",
            },
            "broadcaster": {"admin_listen": f"127.0.0.1:{broadcaster_admin}", **FAST_BROADCASTER},
            "replayer": {"admin_listen": f"127.0.0.1:{replayer_admin}", **_REPLAYER},
            "services": {name: {"upstream": upstream, **v} for name, v in services.items()},
        }

    def processes(self) -> list[ServiceProcess]:
        return [p for s in self.stacks.values() for p in s.processes.values()]

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        processes = self.processes()

        async def all_ready() -> bool:
            return all([await p.ready(self.http) for p in processes])

        await wait_until(
            all_ready, timeout_s, interval=0.2, message=f"{len(processes)} xregion processes ready"
        )

    async def stop(self) -> None:
        """Every process this deployment started, by PID; then NATS. Idempotent."""
        try:
            bridges = [s.processes["bridge"] for s in self.stacks.values() if s.processes]
            await asyncio.gather(*(p.stop() for p in bridges))
            await asyncio.gather(*(p.stop() for p in self.processes()))
            await asyncio.gather(*(s.stop() for s in self._services))
        finally:
            await self.http.aclose()
            await self.cluster.stop()

    def log_paths(self) -> Sequence[Path]:
        return [p.log_path for p in self.processes()]

    async def drained(self, target: str) -> bool:
        """Nothing owed to `target`'s replayer: no event waits in another region's broadcast
        consumer for it, nor in its replay consumer (undelivered, unacked or to be redelivered).

        Canaries pass through these consumers too; a wait on this sees a moment between them.
        """
        owed = [
            (regions.events_stream(origin), regions.broadcast_consumer(target))
            for origin in REGIONS
            if origin != target
        ]
        owed.append((regions.replay_stream(target), regions.replay_consumer()))
        async with NatsConnection(
            self.stacks[target].settings.nats, service="test-drained"
        ) as conn:
            js = conn.jetstream()
            for stream, consumer in owed:
                info = await js.consumer_info(stream, consumer)
                if info.num_pending or info.num_ack_pending:
                    return False
        return True
