"""The region stacks of the local deployment (`xregion up`): ports, region files, keys,
and the processes of each stack.

Each region gets its own region TOML under `<workdir>/stacks/<region>/region.toml` (the same
file an operator would write, docs/DESIGN.md §6) with signing on: an Ed25519 key pair per region
and role (bridge, replayer) under `<workdir>/keys/`, and one trusted-keys file listing every
region's public keys with their region and role. The
demo service (`xregion demo-service`) is the region's `configs` service.

Ports: with a base port N, region i (1-based, in the order given) uses N+400+10i+k for
k = 0 bridge, 1 bridge admin, 2 broadcaster admin, 3 replayer admin, 4 demo service (the NATS
servers use offsets up to N+399); with base port 0, free ports are picked.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.xregion.local.supercluster import free_ports
from services.xregion.local.supervisor import ProcessSpec
from services.xregion.natsconf import build_topology, server_specs

__all__ = [
    "DEMO_SERVICE",
    "RegionStack",
    "StackPorts",
    "example_region_files",
    "plan_stacks",
    "region_file",
    "write_stack_files",
]

HOST = "127.0.0.1"
DEV_REGIONS = ("us-east", "eu-west", "ap-south")
DEMO_SERVICE = "configs"
STACK_PORT_OFFSET = 400
_PORTS_PER_STACK = 5
# Stop order of `up`: bridges first (no new writes), then the replication path, then the
# demo services, which the replayers call until they stop.
_STOP_GROUP = {"bridge": 0, "replayer": 1, "broadcaster": 2, "demo-service": 3}


@dataclass(frozen=True, slots=True)
class StackPorts:
    bridge: int
    bridge_admin: int
    broadcaster_admin: int
    replayer_admin: int
    service: int


@dataclass(frozen=True, slots=True)
class RegionStack:
    region: str
    directory: Path  # <workdir>/stacks/<region>: region file, data dir, demo database
    ports: StackPorts
    nats: tuple[str, ...]
    nats_monitor: tuple[str, ...]

    @property
    def config(self) -> Path:
        return self.directory / "region.toml"

    @property
    def bridge_url(self) -> str:
        return f"http://{HOST}:{self.ports.bridge}"

    @property
    def service_url(self) -> str:
        return f"http://{HOST}:{self.ports.service}"

    def admin_urls(self) -> dict[str, str]:
        return {
            "bridge": f"http://{HOST}:{self.ports.bridge_admin}",
            "broadcaster": f"http://{HOST}:{self.ports.broadcaster_admin}",
            "replayer": f"http://{HOST}:{self.ports.replayer_admin}",
        }

    def state(self) -> dict[str, Any]:
        """This stack's entry in the state file (`xregion top --state-file` reads it)."""
        return {
            "nats": list(self.nats),
            "nats_monitor": list(self.nats_monitor),
            "config": str(self.config),
            "bridge": self.bridge_url,
            "service": self.service_url,
            "admin": self.admin_urls(),
        }

    def processes(self, logs: Path, env: dict[str, str]) -> list[ProcessSpec]:
        xregion = (sys.executable, "-m", "services.xregion", "--log-format", "json")
        service = ProcessSpec(
            name=f"{self.region}-demo-service",
            argv=(*xregion, "demo-service", "--listen", f"{HOST}:{self.ports.service}",
                  "--db", str(self.directory / "configs.sqlite")),
            log=logs / f"{self.region}-demo-service.log",
            ready_url=f"{self.service_url}/healthz",
            group=_STOP_GROUP["demo-service"],
            env=env,
        )  # fmt: skip
        admins = self.admin_urls()
        return [service] + [
            ProcessSpec(
                name=f"{self.region}-{name}",
                argv=(*xregion, name, "--config", str(self.config)),
                log=logs / f"{self.region}-{name}.log",
                ready_url=f"{admins[name]}/readyz",
                group=_STOP_GROUP[name],
                env=env,
            )
            for name in ("bridge", "broadcaster", "replayer")
        ]


def plan_stacks(
    regions: Sequence[str],
    *,
    base_port: int,
    workdir: Path,
    nats: dict[str, list[str]],
    nats_monitor: dict[str, list[str]],
) -> list[RegionStack]:
    """One stack per region; `base_port` 0 picks free ports."""
    if base_port == 0:
        pool = free_ports(_PORTS_PER_STACK * len(regions), HOST)
    else:
        pool = [
            base_port + STACK_PORT_OFFSET + 10 * i + k
            for i in range(1, len(regions) + 1)
            for k in range(_PORTS_PER_STACK)
        ]
    return [
        RegionStack(
            region=region,
            directory=workdir / "stacks" / region,
            ports=StackPorts(*pool[_PORTS_PER_STACK * i : _PORTS_PER_STACK * (i + 1)]),
            nats=tuple(nats[region]),
            nats_monitor=tuple(nats_monitor[region]),
        )
        for i, region in enumerate(regions)
    ]


def example_region_files(regions: Sequence[str] = DEV_REGIONS) -> dict[str, str]:
    """The region files `xregion up` writes with its defaults (base port 14000, workdir
    `.xregion`, paths relative to where it runs): `deploy/regions/<region>.toml`."""
    topology = build_topology(list(regions), servers_per_region=1, base_port=14000)
    specs = server_specs(topology)
    stacks = plan_stacks(
        regions,
        base_port=14000,
        workdir=Path(".xregion"),
        nats={r: [s.client_url for s in specs if s.cluster == r] for r in regions},
        nats_monitor={r: [s.monitor_url for s in specs if s.cluster == r] for r in regions},
    )
    return {s.region: region_file(s, regions, Path(".xregion/keys")) for s in stacks}


def write_stack_files(stacks: Sequence[RegionStack], workdir: Path) -> None:
    """Key pairs (kept across runs), the trusted-keys file and every region file."""
    keys = workdir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    trusted = keys / "trusted.toml"
    trusted.write_text("".join(_trusted_entries(keys, s.region) for s in stacks))
    regions = [s.region for s in stacks]
    for stack in stacks:
        stack.directory.mkdir(parents=True, exist_ok=True)
        stack.config.write_text(region_file(stack, regions, keys))


def _trusted_entries(keys: Path, region: str) -> str:
    """The region's bridge key (signs events) and replayer key (signs replay markers)."""
    return "".join(
        f'[keys."{key_id}"]\nregion = "{region}"\nroles = ["{role}"]\n'
        f'public_key = "{_key_pair(keys, key_id)}"\n'
        for key_id, role in ((f"{region}-1", "bridge"), (f"{region}-replayer-1", "replayer"))
    )


def _key_pair(directory: Path, key_id: str) -> str:
    """The base64 public key of `key_id`, creating the private key file if needed."""
    path = directory / f"{key_id}.pem"
    if path.exists():
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(loaded, Ed25519PrivateKey)
        key = loaded
    else:
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.touch(mode=0o600)
        path.write_bytes(pem)
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def region_file(stack: RegionStack, regions: Sequence[str], keys: Path) -> str:
    """The region TOML of one stack; `keys` holds `<key id>.pem` and `trusted.toml`."""
    q = json.dumps  # a JSON string or list of strings is a valid TOML value
    p = stack.ports
    trusted = keys / "trusted.toml"
    return f"""\
# The {stack.region} stack of the local deployment, as `xregion up` writes it (make up: the
# same file with absolute paths, under .xregion/stacks/{stack.region}/region.toml).
# Every value can be overridden from the environment: XR_<SECTION>__<KEY>, e.g.
# XR_BRIDGE__LISTEN=127.0.0.1:18080 XR_BRIDGE__ADMIN_LISTEN=127.0.0.1:18081 runs a second
# bridge of the region next to the first.
region = {q(stack.region)}
regions = {q(list(regions))}
data_dir = {q(str(stack.directory / "data"))}

[nats]
servers = {q(list(stack.nats))}

[bridge]
listen = "{HOST}:{p.bridge}"
admin_listen = "{HOST}:{p.bridge_admin}"

[broadcaster]
admin_listen = "{HOST}:{p.broadcaster_admin}"
canary_interval_s = 2

[replayer]
admin_listen = "{HOST}:{p.replayer_admin}"

[signing]
mode = "ed25519"
key_id = "{stack.region}-1"
private_key_file = {q(str(keys / f"{stack.region}-1.pem"))}
replayer_key_id = "{stack.region}-replayer-1"
replayer_private_key_file = {q(str(keys / f"{stack.region}-replayer-1.pem"))}
trusted_keys_file = {q(str(trusted))}

[services.{DEMO_SERVICE}]
upstream = "{stack.service_url}"
routes = ["/configs", "/items"]
replicate = ["PUT", "DELETE", "POST", "PATCH"]
targets = "all"
key = "path"
# POST /items {{"id": "7", ...}} is keyed /items/7, so the item's PATCH and DELETE follow it.
create_key = "json:id"
"""
