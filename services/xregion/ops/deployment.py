"""Where a running deployment is: its regions, their NATS servers and every admin port.

Two sources, read by `xregion top` and `xregion status`:

* the JSON state file `xregion up --state-file F` writes (`read_state_file`)::

      {"workdir": "...", "regions": {"us-east": {
          "nats": ["nats://..."], "nats_monitor": ["http://..."], "config": "...",
          "bridge": "http://...", "service": "http://...",
          "admin": {"bridge": "http://...", "broadcaster": "http://...", "replayer": "http://..."}}}}

* region TOML files, one per region stack (`from_settings`): admin URLs come from
  `bridge.admin_listen`, `broadcaster.admin_listen` and `replayer.admin_listen`.

Errors::

    UsageError (services.xregion.errors)
     └── DeploymentError   the source is missing, unreadable or names nothing usable
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from services.xregion.errors import UsageError
from shared.netaddr import split_listen
from shared.settings import NatsSettings, Settings, load_settings

__all__ = [
    "DEFAULT_STATE_FILE",
    "SERVICES",
    "AdminEndpoint",
    "Deployment",
    "DeploymentError",
    "admin_url",
    "from_settings",
    "from_state",
    "load_deployment",
    "read_state_file",
]

SERVICES = ("bridge", "broadcaster", "replayer")
DEFAULT_STATE_FILE = Path(".xregion/state.json")
# Listening on every address is reachable on the loopback address of the same host.
_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class DeploymentError(UsageError):
    """The deployment's description cannot be used; `str()` is one line for the operator."""


@dataclass(frozen=True, slots=True)
class AdminEndpoint:
    """One process's admin port: `url` is its base (`/metrics`, `/readyz` are under it)."""

    region: str
    service: str
    url: str


@dataclass(frozen=True)
class Deployment:
    regions: tuple[str, ...]
    admin: tuple[AdminEndpoint, ...]
    nats: Mapping[str, NatsSettings] = field(default_factory=dict)  # region -> how to connect


def admin_url(listen: str) -> str:
    """`"127.0.0.1:9180"` -> `"http://127.0.0.1:9180"` (a wildcard host becomes loopback)."""
    host, port = split_listen(listen)
    host = _ANY_HOST.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def from_settings(settings: Sequence[Settings]) -> Deployment:
    """The deployment that region files describe (one file per region stack or instance)."""
    regions: list[str] = []
    admin: list[AdminEndpoint] = []
    nats: dict[str, NatsSettings] = {}
    for s in settings:
        regions += [r for r in s.regions if r not in regions]  # includes s.region
        nats.setdefault(s.region, s.nats)
        listens = (s.bridge.admin_listen, s.broadcaster.admin_listen, s.replayer.admin_listen)
        for service, listen in zip(SERVICES, listens, strict=True):
            endpoint = AdminEndpoint(s.region, service, admin_url(listen))
            if endpoint not in admin:
                admin.append(endpoint)
    return Deployment(tuple(regions), tuple(admin), nats)


def from_state(state: Any, source: str = "state file") -> Deployment:
    """The deployment a parsed `xregion up --state-file` document describes."""
    if not isinstance(state, Mapping) or not isinstance(state.get("regions"), Mapping):
        raise DeploymentError(f"{source}: expected an object with a 'regions' object")
    admin: list[AdminEndpoint] = []
    nats: dict[str, NatsSettings] = {}
    for region, entry in state["regions"].items():
        if not isinstance(entry, Mapping):
            raise DeploymentError(f"{source}: regions.{region} is not an object")
        admin += _state_admin(region, entry.get("admin") or {}, source)
        servers = entry.get("nats") or []
        if servers:
            nats[region] = _nats(servers, f"{source}: regions.{region}.nats")
    return Deployment(tuple(state["regions"]), tuple(admin), nats)


def _state_admin(region: str, urls: Any, source: str) -> list[AdminEndpoint]:
    if not isinstance(urls, Mapping):
        raise DeploymentError(f"{source}: regions.{region}.admin is not an object")
    found = []
    for service in SERVICES:
        url = urls.get(service)
        if url is None:
            continue
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise DeploymentError(f"{source}: regions.{region}.admin.{service}: not a URL")
        found.append(AdminEndpoint(region, service, url.rstrip("/")))
    return found


def _nats(servers: Any, where: str) -> NatsSettings:
    if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
        raise DeploymentError(f"{where}: expected a list of URLs")
    try:
        return NatsSettings(servers=servers)
    except ValidationError as exc:
        raise DeploymentError(f"{where}: {exc.errors()[0]['msg']}") from None


def read_state_file(path: Path) -> Deployment:
    try:
        text = path.read_text()
    except OSError as exc:
        raise DeploymentError(f"cannot read state file {path}: {exc.strerror or exc}") from None
    try:
        state = json.loads(text)
    except ValueError as exc:
        raise DeploymentError(f"state file {path} is not JSON: {exc}") from None
    return from_state(state, source=str(path))


def load_deployment(state_file: Path | None, configs: Sequence[Path]) -> Deployment:
    """From `--config` files if given, else the state file (default `.xregion/state.json`).

    Raises DeploymentError (or the settings' ConfigError) with one line for the operator.
    """
    if configs:
        return from_settings([load_settings(path) for path in configs])
    if state_file is None:
        if not DEFAULT_STATE_FILE.is_file():
            raise DeploymentError(
                f"no --state-file or --config given and {DEFAULT_STATE_FILE} does not exist "
                "(start a local deployment with `xregion up --state-file "
                f"{DEFAULT_STATE_FILE}`, or name region files with --config)"
            )
        state_file = DEFAULT_STATE_FILE
    return read_state_file(state_file)
