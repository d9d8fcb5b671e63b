"""A whole local deployment for the operator-command tests: a 3x1 super-cluster, and per region
a demo upstream (aiohttp, in the test process), a region TOML with fixed free ports, and the
bridge, broadcaster and replayer as real `xregion <service> --config F` processes.

Every process is stopped by its owner, by PID (SIGTERM, then SIGKILL after a deadline).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from services.xregion.local.supercluster import SuperCluster, free_ports
from shared.settings import Settings, load_settings
from tests.harness.fixtures import DEV_REGIONS
from tests.harness.http import LoopbackApp
from tests.harness.provisioning import provision_region
from tests.harness.toml import write_region_toml
from tests.harness.xregion_procs import FAST_BROADCASTER, XREGION, ServiceProcess, run_xregion

__all__ = [
    "REGIONS",
    "SERVICE",
    "SERVICES",
    "XREGION",
    "LocalDeployment",
    "RegionStack",
    "ServiceProcess",
    "Upstream",
    "prepare_region",
    "region_settings",
    "run_piped",
    "run_xregion",
    "write_region_file",
    "write_state_file",
]

REGIONS = DEV_REGIONS
SERVICES = ("bridge", "broadcaster", "replayer")
SERVICE = "catalog"

# Short waits so canaries, backlogs and retries show within a second or two.
_REPLAYER: dict[str, Any] = {
    "fetch_timeout_s": 0.3,
    "ack_wait_s": 4.0,
    "upstream_timeout_s": 1.0,
    "retry_total_s": 0.5,
    "metrics_poll_s": 0.25,
    "shutdown_timeout_s": 5.0,
}


class Upstream(LoopbackApp):
    """A region's demo service: answers every request 200 with JSON, counts the calls; a path
    under `refused_prefix` is answered 400 (its replayed writes are dead-lettered)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.refused_prefix: str | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.calls += 1
        if self.refused_prefix is not None and request.path.startswith(self.refused_prefix):
            return web.json_response({"error": "refused by the test"}, status=400)
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
        broadcaster={"admin_listen": f"127.0.0.1:{broadcaster_admin}", **FAST_BROADCASTER},  # type: ignore[arg-type]
        replayer={"admin_listen": f"127.0.0.1:{replayer_admin}", **_REPLAYER},  # type: ignore[arg-type]
        services={SERVICE: {"upstream": upstream, "routes": ["/catalog"]}},  # type: ignore[dict-item]
    )


def write_region_file(path: Path, settings: Settings) -> Path:
    """`settings` as a region TOML (read back with `load_settings` to prove it is the same)."""
    write_region_toml(path, settings.model_dump(mode="json"))
    assert load_settings(path, env={}) == settings
    return path


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


async def run_piped(*args: str, timeout_s: float = 60.0) -> tuple[int, str, str]:
    """`xregion ARGS` as `xregion ARGS > file` runs it (stdout a pipe, no COLUMNS)."""
    return await run_xregion(*args, timeout_s=timeout_s, wide=False)


@dataclass(frozen=True)
class LocalDeployment:
    """What the package-wide `deployment` fixture (tests/ops/conftest.py) yields."""

    cluster: SuperCluster
    stacks: dict[str, RegionStack]
    workdir: Path

    def configs(self) -> list[str]:
        return [str(self.stacks[r].config) for r in REGIONS]
