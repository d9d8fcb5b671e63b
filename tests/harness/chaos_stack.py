"""The chaos suite's deployment: 3 regions on a real super-cluster, signing on.

`ChaosDeployment.start(workdir)` starts, on free loopback ports, a super-cluster with a fault
proxy on every gateway link, where `us-east` has 3 nats-servers (its streams and buckets are
R3) and `eu-west` and `ap-south` one each; per region a `chaos_downstream` process, a region
file with Ed25519 signing (a bridge and a replayer key per region, one trusted-keys file),
the region's streams, buckets and consumers, and bridge, broadcaster and replayer as real
`xregion <service> --config F` processes, all ready. `stop()` stops every process it started,
by PID, and says which (if any) were still alive after it.

`skew` runs one region's xregion processes under libfaketime (`LD_PRELOAD`, `FAKETIME`):
their wall clock, which the HLC reads through `time.time_ns`, is offset; no code path changes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.xregion.local.supercluster import SuperCluster, free_ports, with_free_ports
from services.xregion.natsconf import Topology, parse_topology
from services.xregion.ops.scrape import parse_metrics
from shared import regions
from shared.natsconn import NatsConnection
from shared.settings import Settings
from tests.harness.collection_stack import metric_total, render_region_file
from tests.harness.provisioning import provision_region
from tests.harness.wait import wait_until
from tests.harness.xregion_procs import FAST_BROADCASTER, ServiceProcess, clean_env, stop

__all__ = [
    "BIG_REGION",
    "REGIONS",
    "SERVICE",
    "ChaosDeployment",
    "ChaosProcess",
    "DownstreamProcess",
    "RegionStack",
    "faketime_library",
    "pid_alive",
]

REGIONS = ("us-east", "eu-west", "ap-south")
BIG_REGION = "us-east"  # 3 servers, R3 streams
SERVERS = {"us-east": 3, "eu-west": 1, "ap-south": 1}
SERVICE = "chaos"
XREGION_SERVICES = ("bridge", "broadcaster", "replayer")
REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0
_FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
)

_NATS: dict[str, Any] = {
    "first_connect_timeout_s": 15.0,
    "reconnect_wait_s": 0.1,
    "reconnect_wait_max_s": 0.5,
}
# Short waits, so an outage is noticed in a second and a restart catches up quickly.
_BRIDGE: dict[str, Any] = {
    "publish_timeout_s": 1.0,
    "outbox_retry_base_s": 0.1,
    "outbox_retry_max_s": 0.5,
    "start_drain_timeout_s": 2.0,
    "shutdown_timeout_s": 5.0,
}
_REPLAYER: dict[str, Any] = {
    "fetch_timeout_s": 0.3,
    # At least 2 x (retry_total_s + upstream_timeout_s); also how long a SIGKILLed replayer's
    # claims hold its events back.
    "ack_wait_s": 10.0,
    # Longer than the slow downstream's 2 s per call plus a busy machine's delay, so a slow
    # call is never retried in process (that would be a second call of its event).
    "upstream_timeout_s": 4.0,
    "retry_total_s": 0.5,
    "nak_base_s": 0.2,
    "nak_max_s": 1.0,
    "metrics_poll_s": 0.25,
    "shutdown_timeout_s": 5.0,
}
_SERVICE: dict[str, Any] = {
    "routes": ["/configs", "/items"],
    "replicate": ["PUT", "DELETE", "POST", "PATCH"],
    "targets": "all",
    "create_key": "json:id",
}


def faketime_library() -> str | None:
    """Path of Debian's libfaketime (package `faketime`), or None when it is not installed."""
    return next((p for p in _FAKETIME_LIBS if Path(p).exists()), None)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def chaos_topology(store_dir: Path) -> Topology:
    """us-east with 3 servers, the others with one; free loopback ports."""
    return with_free_ports(
        parse_topology(
            {
                "name": "chaos",
                "store_dir": str(store_dir),
                "ports": {"base": 14000},
                "regions": [{"name": r, "servers": SERVERS[r]} for r in REGIONS],
            }
        )
    )


# ---------------------------------------------------------------------- signing keys


def _write_key(directory: Path, key_id: str) -> str:
    """A new Ed25519 private key file `<key_id>.pem`; its base64 DER public key."""
    key = Ed25519PrivateKey.generate()
    path = directory / f"{key_id}.pem"
    path.touch(mode=0o600)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def write_keys(directory: Path) -> Path:
    """A bridge and a replayer key per region, and the trusted-keys file listing them all."""
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for region in REGIONS:
        for key_id, role in ((f"{region}-1", "bridge"), (f"{region}-replayer-1", "replayer")):
            public = _write_key(directory, key_id)
            entries.append(
                f'[keys."{key_id}"]\nregion = "{region}"\nroles = ["{role}"]\n'
                f'public_key = "{public}"\n'
            )
    trusted = directory / "trusted.toml"
    trusted.write_text("".join(entries))
    return trusted


# ---------------------------------------------------------------------- processes


class ChaosProcess(ServiceProcess):
    """An xregion service process that can be restarted, optionally under a skewed clock."""

    def __init__(
        self, service: str, config: Path, admin_url: str, log_path: Path, env: Mapping[str, str]
    ) -> None:
        super().__init__(service, config, admin_url, log_path)
        self._env = dict(env)

    async def spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.xregion", "--log-format", "json",
                self.service, "--config", str(self._config),
                stdout=log, stderr=log, env={**clean_env(), **self._env}, cwd=REPO_ROOT,
            )  # fmt: skip

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def terminate(self) -> None:
        """SIGTERM by PID (the graceful path); `wait_dead()` reaps it."""
        assert self.proc is not None
        self.proc.terminate()


class DownstreamProcess:
    """`python -m tests.harness.chaos_downstream`, a real process per region."""

    def __init__(self, log_path: Path) -> None:
        self.url = ""
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, http: httpx.AsyncClient) -> None:
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.harness.chaos_downstream",
                "--listen", f"127.0.0.1:{port}",
                stdout=log, stderr=log, cwd=REPO_ROOT, env=clean_env(),
            )  # fmt: skip
        await wait_until(
            lambda: self._healthy(http), 20, interval=0.05, message=f"{self.url}/_health"
        )

    async def _healthy(self, http: httpx.AsyncClient) -> bool:
        if self.proc is None or self.proc.returncode is not None:
            raise RuntimeError(f"chaos_downstream exited; see {self.log_path}")
        try:
            return (await http.get(self.url + "/_health")).status_code == 200
        except httpx.HTTPError:
            return False

    async def records(self, http: httpx.AsyncClient) -> list[dict[str, Any]]:
        reply = await http.get(self.url + "/_records", timeout=30.0)
        reply.raise_for_status()
        found: list[dict[str, Any]] = reply.json()["records"]
        return found

    async def state(self, http: httpx.AsyncClient) -> dict[str, Any]:
        reply = await http.get(self.url + "/_state", timeout=30.0)
        reply.raise_for_status()
        found: dict[str, Any] = reply.json()
        return found

    async def set_fault(
        self, http: httpx.AsyncClient, *, status: int | None = None, delay_s: float = 0.0
    ) -> None:
        reply = await http.post(self.url + "/_fault", json={"status": status, "delay_s": delay_s})
        reply.raise_for_status()

    async def stop(self) -> None:
        await stop(self.proc)


@dataclass
class RegionStack:
    region: str
    settings: Settings
    config: Path
    downstream: DownstreamProcess
    processes: dict[str, ChaosProcess] = field(default_factory=dict)

    @property
    def bridge_url(self) -> str:
        return "http://" + self.settings.bridge.listen

    @property
    def bridge(self) -> ChaosProcess:
        return self.processes["bridge"]

    @property
    def broadcaster(self) -> ChaosProcess:
        return self.processes["broadcaster"]

    @property
    def replayer(self) -> ChaosProcess:
        return self.processes["replayer"]


@dataclass
class ChaosDeployment:
    cluster: SuperCluster
    workdir: Path
    http: httpx.AsyncClient
    stacks: dict[str, RegionStack] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        workdir: Path,
        *,
        skew: Mapping[str, str] | None = None,
        data_dirs: Mapping[str, Path] | None = None,
    ) -> ChaosDeployment:
        """Everything up and ready; on failure what was started is stopped, then it raises.

        `skew`: region -> FAKETIME offset (e.g. "+5s") for its xregion processes.
        `data_dirs`: region -> data_dir (where its bridge keeps the outbox)."""
        cluster = SuperCluster(chaos_topology(workdir / "nats"), workdir / "nats", fault_proxy=True)
        await cluster.start(READY_TIMEOUT_S)
        http = httpx.AsyncClient(timeout=10.0, trust_env=False)
        deployment = cls(cluster, workdir, http)
        try:
            await deployment._start_regions(dict(skew or {}), dict(data_dirs or {}))
        except BaseException:
            await deployment.stop()
            raise
        return deployment

    async def _start_regions(self, skew: dict[str, str], data_dirs: dict[str, Path]) -> None:
        trusted = write_keys(self.workdir / "keys")
        for region in REGIONS:
            downstream = DownstreamProcess(self.workdir / f"{region}-downstream.log")
            await downstream.start(self.http)
            assert downstream.proc is not None
            self.pids.append(downstream.proc.pid)
            data_dir = data_dirs.get(region, self.workdir / region)
            config = self.workdir / f"{region}.toml"
            settings = render_region_file(
                config, self._region_data(region, downstream.url, trusted, data_dir)
            )
            replicas = min(SERVERS[region], 3)
            await provision_region(
                settings,
                replicas=replicas,
                interval_s=0.3,
                service="chaos-provision",
                message=f"region {region} provisioned (R{replicas})",
            )
            stack = RegionStack(region, settings, config, downstream)
            env = _skew_env(skew.get(region))
            listens = {
                "bridge": settings.bridge.admin_listen,
                "broadcaster": settings.broadcaster.admin_listen,
                "replayer": settings.replayer.admin_listen,
            }
            for name in XREGION_SERVICES:
                stack.processes[name] = ChaosProcess(
                    name, config, "http://" + listens[name],
                    self.workdir / f"{region}-{name}.log", env,
                )  # fmt: skip
            self.stacks[region] = stack
        for process in self.processes():
            await self.spawn(process)
        await self.wait_ready()

    def _region_data(
        self, region: str, upstream: str, trusted: Path, data_dir: Path
    ) -> dict[str, Any]:
        bridge, bridge_admin, broadcaster_admin, replayer_admin = free_ports(4)
        keys = trusted.parent
        return {
            "region": region,
            "regions": list(REGIONS),
            "data_dir": str(data_dir),
            "nats": {"servers": self.cluster.client_urls(region), **_NATS},
            "signing": {
                "mode": "ed25519",
                "key_id": f"{region}-1",
                "private_key_file": str(keys / f"{region}-1.pem"),
                "replayer_key_id": f"{region}-replayer-1",
                "replayer_private_key_file": str(keys / f"{region}-replayer-1.pem"),
                "trusted_keys_file": str(trusted),
            },
            "bridge": {
                "listen": f"127.0.0.1:{bridge}",
                "admin_listen": f"127.0.0.1:{bridge_admin}",
                **_BRIDGE,
            },
            "broadcaster": {"admin_listen": f"127.0.0.1:{broadcaster_admin}", **FAST_BROADCASTER},
            "replayer": {"admin_listen": f"127.0.0.1:{replayer_admin}", **_REPLAYER},
            "services": {SERVICE: {"upstream": upstream, **_SERVICE}},
        }

    def processes(self) -> list[ChaosProcess]:
        return [p for s in self.stacks.values() for p in s.processes.values()]

    async def spawn(self, process: ChaosProcess) -> None:
        """Start (or restart) `process`; its PID is remembered for the leak check."""
        await process.spawn()
        assert process.pid is not None
        self.pids.append(process.pid)

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        processes = self.processes()

        async def all_ready() -> bool:
            return all([await p.ready(self.http) for p in processes])

        await wait_until(
            all_ready, timeout_s, interval=0.2, message=f"{len(processes)} xregion processes ready"
        )

    async def stop(self) -> list[int]:
        """Every process this deployment started, by PID; then NATS. Idempotent.
        Returns the PIDs still alive afterwards (a leak)."""
        try:
            bridges = [s.processes["bridge"] for s in self.stacks.values() if s.processes]
            await asyncio.gather(*(p.stop() for p in bridges))
            await asyncio.gather(*(p.stop() for p in self.processes()))
            await asyncio.gather(*(s.downstream.stop() for s in self.stacks.values()))
        finally:
            if not self.http.is_closed:
                await self.http.aclose()
            await self.cluster.stop()
        return [pid for pid in self.pids if pid_alive(pid) and not _is_zombie(pid)]

    # ------------------------------------------------------------------ what is left

    async def leftovers(self) -> dict[str, dict[str, int]]:
        """Per region: events owed to it (broadcast and replay consumers), its DLQ's size."""
        found: dict[str, dict[str, int]] = {}
        for target in REGIONS:
            async with NatsConnection(
                self.stacks[target].settings.nats, service="chaos-audit"
            ) as conn:
                js = conn.jetstream()
                owed = 0
                for origin in REGIONS:
                    if origin != target:
                        info = await js.consumer_info(
                            regions.events_stream(origin), regions.broadcast_consumer(target)
                        )
                        owed += info.num_pending + info.num_ack_pending
                info = await js.consumer_info(
                    regions.replay_stream(target), regions.replay_consumer()
                )
                dlq = await js.stream_info(regions.dlq_stream(target))
                found[target] = {
                    "broadcast_owed": owed,
                    "replay_owed": info.num_pending + info.num_ack_pending,
                    "dead_letters": dlq.state.messages,
                }
        return found

    async def outbox_depths(self) -> dict[str, float]:
        """Each running bridge's `xr_bridge_outbox_depth`."""
        depths: dict[str, float] = {}
        for region, stack in self.stacks.items():
            text = await stack.bridge.metrics(self.http)
            depths[region] = metric_total(text, "xr_bridge_outbox_depth", {})
        return depths

    async def replayer_outcomes(self, region: str) -> dict[str, float]:
        """`xr_replayer_events_total` of the chaos service by outcome (this process's life)."""
        text = await self.stacks[region].replayer.metrics(self.http)
        counts: dict[str, float] = {}
        for sample in parse_metrics(text):
            ours = sample.labels.get("service") == SERVICE
            if sample.name == "xr_replayer_events_total" and ours:
                outcome = sample.labels.get("outcome", "")
                counts[outcome] = counts.get(outcome, 0.0) + sample.value
        return counts

    async def conflicts(self, region: str) -> float:
        text = await self.stacks[region].replayer.metrics(self.http)
        return metric_total(text, "xr_replayer_conflicts_total", {"service": SERVICE})


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False


def _skew_env(offset: str | None) -> dict[str, str]:
    if offset is None:
        return {}
    library = faketime_library()
    if library is None or shutil.which("faketime") is None:
        raise RuntimeError(
            "clock skew needs Debian's libfaketime: apt-get install faketime (make dev-tools)"
        )
    # DONT_FAKE_MONOTONIC: only the wall clock is offset; timeouts and sleeps run normally.
    return {"LD_PRELOAD": library, "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
