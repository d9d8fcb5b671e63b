"""A whole local deployment for the operator-command tests: a 3x1 super-cluster, and per region
a demo upstream (aiohttp, in the test process), a region TOML with fixed free ports, and the
bridge, broadcaster and replayer as real `xregion <service> --config F` processes.

Every process is stopped by its owner, by PID (SIGTERM, then SIGKILL after a deadline).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from services.xregion.supercluster import SuperCluster, free_ports
from shared import provision
from shared.natsconn import NatsConnection
from shared.settings import Settings, load_settings
from tests.harness.fixtures import DEV_REGIONS
from tests.harness.http import LoopbackApp
from tests.harness.toml import toml_value as _toml
from tests.harness.wait import wait_until

__all__ = [
    "REGIONS",
    "SERVICE",
    "SERVICES",
    "XREGION",
    "RegionStack",
    "ServiceProcess",
    "Upstream",
    "prepare_region",
    "region_settings",
    "run_xregion",
    "write_region_file",
    "write_state_file",
]

REGIONS = DEV_REGIONS
SERVICES = ("bridge", "broadcaster", "replayer")
SERVICE = "catalog"
XREGION = Path(sys.executable).parent / "xregion"
_STOP_TIMEOUT_S = 10.0

# Short waits so canaries, backlogs and retries show within a second or two.
_BROADCASTER: dict[str, Any] = {
    "fetch_timeout_s": 0.25,
    "publish_timeout_s": 1.0,
    "ack_wait_s": 3.0,
    "retry_base_s": 0.05,
    "retry_max_s": 0.5,
    "canary_interval_s": 0.5,
    "control_poll_s": 0.1,
    "metrics_poll_s": 0.25,
    "shutdown_timeout_s": 5.0,
}
_REPLAYER: dict[str, Any] = {
    "fetch_timeout_s": 0.3,
    "ack_wait_s": 4.0,
    "upstream_timeout_s": 1.0,
    "retry_total_s": 0.5,
    "metrics_poll_s": 0.25,
    "shutdown_timeout_s": 5.0,
}


class Upstream(LoopbackApp):
    """A region's demo service: answers every request 200 with JSON, counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.calls += 1
        return web.json_response({"ok": True, "path": request.path})


def region_settings(cluster: SuperCluster, region: str, upstream: str, workdir: Path) -> Settings:
    """The region's stack on free loopback ports (admin ports fixed, so `--config` finds them)."""
    bridge, bridge_admin, broadcaster_admin, replayer_admin = free_ports(4)
    return Settings(
        region=region,
        regions=list(REGIONS),
        data_dir=workdir / region,
        nats={  # type: ignore[arg-type]
            "servers": cluster.client_urls(region),
            "first_connect_timeout_s": 10.0,
            "reconnect_wait_s": 0.1,
            "reconnect_wait_max_s": 0.5,
        },
        signing={"mode": "off"},  # type: ignore[arg-type]
        bridge={  # type: ignore[arg-type]
            "listen": f"127.0.0.1:{bridge}",
            "admin_listen": f"127.0.0.1:{bridge_admin}",
        },
        broadcaster={"admin_listen": f"127.0.0.1:{broadcaster_admin}", **_BROADCASTER},  # type: ignore[arg-type]
        replayer={"admin_listen": f"127.0.0.1:{replayer_admin}", **_REPLAYER},  # type: ignore[arg-type]
        services={SERVICE: {"upstream": upstream, "routes": ["/catalog"]}},  # type: ignore[dict-item]
    )


def _table(name: str, values: Mapping[str, Any]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items() if v is not None)]


def write_region_file(path: Path, settings: Settings) -> Path:
    """`settings` as a region TOML (read back with `load_settings` to prove it is the same)."""
    data = settings.model_dump(mode="json")
    lines = [f"{key} = {_toml(data[key])}" for key in ("region", "regions", "data_dir")]
    for section in ("nats", "signing", "bridge", "broadcaster", "replayer"):
        lines += _table(section, data[section])
    for name, service in data["services"].items():
        lines += _table(f"services.{name}", service)
    path.write_text("\n".join(lines) + "\n")
    assert load_settings(path, env={}) == settings
    return path


async def provision_region(settings: Settings) -> None:
    async with NatsConnection(settings.nats, service="test-provision") as conn:
        await wait_until(
            lambda: provision.apply(conn.jetstream(), provision.plan(settings, 1)),
            60,
            interval=0.2,
            ignore=(Exception,),
            message=f"region {settings.region} provisioned",
        )


class ServiceProcess:
    """`xregion <service> --config F` as a real process; its owner always calls `stop()`."""

    def __init__(self, service: str, config: Path, admin_url: str, log_path: Path) -> None:
        self.service = service
        self.admin_url = admin_url
        self._config = config
        self._log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def spawn(self) -> None:
        with self._log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(XREGION), "--log-format", "json", self.service, "--config", str(self._config),
                stdout=log, stderr=log, env=_clean_env(),
            )  # fmt: skip

    async def ready(self, http: httpx.AsyncClient) -> bool:
        if self.proc is None or self.proc.returncode is not None:
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"{self.service} exited ({code}): {self.log_tail()}")
        try:
            reply = await http.get(self.admin_url + "/readyz")
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json().get("status") == "ok"

    def log_tail(self, lines: int = 20) -> str:
        if not self._log_path.exists():
            return ""
        return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])

    async def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it is still there after the deadline; always reaped."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), _STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _clean_env() -> dict[str, str]:
    """The test's environment minus XR_* (so only the region file configures the process)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("XR_")}


@dataclass
class RegionStack:
    region: str
    settings: Settings
    config: Path
    upstream: Upstream
    processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def bridge_url(self) -> str:
        return "http://" + self.settings.bridge.listen

    def admin(self, service: str) -> str:
        return next(p.admin_url for p in self.processes if p.service == service)


async def prepare_region(
    cluster: SuperCluster, region: str, upstream: Upstream, workdir: Path
) -> RegionStack:
    """Write the region file and provision the region; `spawn()` then starts its processes."""
    settings = region_settings(cluster, region, upstream.url, workdir)
    config = write_region_file(workdir / f"{region}.toml", settings)
    await provision_region(settings)
    listens = {
        "bridge": settings.bridge.admin_listen,
        "broadcaster": settings.broadcaster.admin_listen,
        "replayer": settings.replayer.admin_listen,
    }
    processes = [
        ServiceProcess(
            service, config, "http://" + listens[service], workdir / f"{region}-{service}.log"
        )
        for service in SERVICES
    ]
    return RegionStack(region, settings, config, upstream, processes)


def write_state_file(path: Path, cluster: SuperCluster, stacks: Sequence[RegionStack]) -> Path:
    """The state file `xregion up --state-file` writes (the schema `top`/`status` read)."""
    state = {
        "workdir": str(cluster.workdir),
        "regions": {
            s.region: {
                "nats": cluster.client_urls(s.region),
                "nats_monitor": cluster.monitor_urls(s.region),
                "config": str(s.config),
                "bridge": s.bridge_url,
                "service": s.upstream.url,
                "admin": {service: s.admin(service) for service in SERVICES},
            }
            for s in stacks
        },
    }
    path.write_text(json.dumps(state, indent=2) + "\n")
    return path


async def run_xregion(*args: str, timeout_s: float = 60.0) -> tuple[int, str, str]:
    """`xregion ARGS` to completion: (exit code, stdout, stderr). Wide output, no colours."""
    env = {**_clean_env(), "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    proc = await asyncio.create_subprocess_exec(
        str(XREGION), *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
