"""The super-cluster topology: a validated model of its regions, servers, ports, TLS and users.

`load_topology` reads a TOML file, `build_topology` makes the dev plan; `server_specs` and
`endpoints` resolve every server's name, host and ports. Pure apart from reading the file.
Errors: `TopologyError` (a `ValueError`), one line naming the offending key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shared.regions import (
    InvalidNameError,
    validate_region,
)

__all__ = [
    "ENV_REF_RE",
    "REGIONAL_ROLES",
    "AuthSpec",
    "ClusterEndpoints",
    "JetStreamSpec",
    "PortPlan",
    "RegionSpec",
    "Role",
    "ServerOverride",
    "ServerSpec",
    "TiebreakerSpec",
    "TlsSpec",
    "Topology",
    "TopologyError",
    "UserSpec",
    "build_topology",
    "cluster_names",
    "endpoints",
    "env_references",
    "load_topology",
    "parse_topology",
    "replace",
    "server_specs",
]

MiB = 1024 * 1024
# Highest port any plan offset reaches: base + 300 + 9*10 + 9.
_MAX_PLAN_OFFSET = 399
ENV_REF_RE = re.compile(r"\$[A-Z_][A-Z0-9_]*")
_BCRYPT_RE = re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}")
_HOST_RE = re.compile(r"[A-Za-z0-9.:\-\[\]{}]+")
_USER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PLACEHOLDERS = ("region", "index", "server")

Role = Literal["bridge", "broadcaster", "replayer", "provisioner", "admin"]
REGIONAL_ROLES: frozenset[str] = frozenset({"bridge", "broadcaster", "replayer"})


class TopologyError(ValueError):
    """An invalid topology: the message is one line naming the key at fault."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_region(name: str) -> str:
    try:
        return validate_region(name)
    except InvalidNameError as exc:
        raise ValueError(str(exc)) from exc


def _check_host(host: str) -> str:
    if not _HOST_RE.fullmatch(host):
        raise ValueError(f"invalid host {host!r}")
    return host


class PortPlan(_Model):
    """Either a `base` (dev: every listener on one host, offsets per cluster and server) or
    four fixed ports (prod: the same ports on every host)."""

    base: int | None = Field(default=None, ge=1, le=65535 - _MAX_PLAN_OFFSET)
    client: int | None = Field(default=None, ge=1, le=65535)
    cluster: int | None = Field(default=None, ge=1, le=65535)
    gateway: int | None = Field(default=None, ge=1, le=65535)
    monitor: int | None = Field(default=None, ge=1, le=65535)

    @model_validator(mode="after")
    def _one_plan(self) -> Self:
        fixed = (self.client, self.cluster, self.gateway, self.monitor)
        if self.base is None and None in fixed:
            raise ValueError("set either base, or all of client, cluster, gateway and monitor")
        if self.base is not None and any(p is not None for p in fixed):
            raise ValueError("base cannot be combined with fixed client/cluster/gateway/monitor")
        return self

    def ports_for(self, cluster_index: int, server_index: int) -> tuple[int, int, int, int]:
        """(client, cluster, gateway, monitor) for a 1-based cluster and server index."""
        if self.base is None:
            fixed = (self.client, self.cluster, self.gateway, self.monitor)
            client, cluster, gateway, monitor = (p or 0 for p in fixed)
            return client, cluster, gateway, monitor
        offset = self.base + cluster_index * 10 + server_index
        return offset, offset + 100, offset + 200, offset + 300


class RegionSpec(_Model):
    name: str
    servers: int = Field(default=1, ge=1, le=9)

    _name = field_validator("name")(_check_region)


class TiebreakerSpec(_Model):
    """A small cluster that only votes in the JetStream meta group; it runs no stack."""

    name: str = "tiebreaker"
    servers: int = Field(default=1, ge=1, le=9)

    _name = field_validator("name")(_check_region)


class JetStreamSpec(_Model):
    max_memory_store: int = Field(default=256 * MiB, ge=0)
    max_file_store: int = Field(default=1024 * MiB, ge=0)


class TlsSpec(_Model):
    """TLS on client, route and gateway links. File paths may contain `{server}`."""

    enabled: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    verify_clients: bool = False
    timeout_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _files_when_enabled(self) -> Self:
        if self.enabled:
            for key in ("cert_file", "key_file", "ca_file"):
                if not getattr(self, key):
                    raise ValueError(f"{key} is required when tls is enabled")
        return self


def _check_secret(value: str) -> str:
    if ENV_REF_RE.fullmatch(value) or _BCRYPT_RE.fullmatch(value):
        return value
    raise ValueError("must be an environment reference like $XR_NATS_X_PASSWORD or a bcrypt hash")


def _check_env_ref(value: str) -> str:
    if not ENV_REF_RE.fullmatch(value):
        raise ValueError("must be an environment reference like $XR_NATS_GATEWAY_PASSWORD")
    return value


class UserSpec(_Model):
    name: str
    role: Role
    region: str | None = None
    password: str

    _password = field_validator("password")(_check_secret)

    @field_validator("name")
    @classmethod
    def _user_name(cls, value: str) -> str:
        if not _USER_RE.fullmatch(value):
            raise ValueError(f"invalid user name {value!r}")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str | None) -> str | None:
        return None if value is None else _check_region(value)

    @model_validator(mode="after")
    def _region_matches_role(self) -> Self:
        if (self.role in REGIONAL_ROLES) != (self.region is not None):
            need = "needs" if self.role in REGIONAL_ROLES else "takes no"
            raise ValueError(f"role {self.role!r} {need} a region")
        return self


class AuthSpec(_Model):
    """Accounts and users. The gateway password is sent by the servers themselves, so it must
    be an environment reference; user passwords may also be bcrypt hashes.

    Routes carry no password: a solicited route only sends credentials embedded in its URL
    (server/route.go `sendRouteConnect`), which a config cannot take from the environment.
    Routes are authenticated by mutual TLS instead (`tls.enabled`)."""

    enabled: bool = False
    account: str = "XR"
    system_user: str = "sys"
    system_password: str = "$XR_NATS_SYS_PASSWORD"
    gateway_user: str = "gateway"
    gateway_password: str = "$XR_NATS_GATEWAY_PASSWORD"
    users: tuple[UserSpec, ...] = ()

    _system_password = field_validator("system_password")(_check_secret)
    _gateway_password = field_validator("gateway_password")(_check_env_ref)

    @model_validator(mode="after")
    def _unique_users(self) -> Self:
        names = [u.name for u in self.users] + [self.system_user]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate user names {dupes}")
        return self


class ServerOverride(_Model):
    """Explicit settings for one server (by name), e.g. free ports chosen by a test."""

    host: str | None = None
    client_port: int | None = Field(default=None, ge=1, le=65535)
    cluster_port: int | None = Field(default=None, ge=1, le=65535)
    gateway_port: int | None = Field(default=None, ge=1, le=65535)
    monitor_port: int | None = Field(default=None, ge=1, le=65535)
    gateway_advertise: str | None = None

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return None if value is None else _check_host(value)

    @field_validator("gateway_advertise")
    @classmethod
    def _advertise(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", value):
            raise ValueError(f"gateway_advertise {value!r} must be host:port")
        return value


@dataclass(frozen=True)
class ServerSpec:
    """One server with every address resolved."""

    name: str
    cluster: str
    index: int
    tiebreaker: bool
    host: str
    listen_host: str
    client_port: int
    cluster_port: int
    gateway_port: int
    monitor_port: int
    gateway_advertise: str | None
    tls: bool

    @property
    def client_url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.client_port}"

    @property
    def route_url(self) -> str:
        return f"nats://{self.host}:{self.cluster_port}"

    @property
    def gateway_url(self) -> str:
        """What other servers dial for this server's gateway: its advertise, if any."""
        return f"nats://{self.gateway_advertise or f'{self.host}:{self.gateway_port}'}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"


@dataclass(frozen=True)
class ClusterEndpoints:
    """What a client (the CLI, the supercluster runner) needs to reach one cluster."""

    cluster: str
    tiebreaker: bool
    client_urls: tuple[str, ...]
    monitor_urls: tuple[str, ...]
    servers: tuple[str, ...]


class Topology(_Model):
    """A whole super-cluster: see nats-conf/README.md for the TOML schema."""

    name: str
    host: str = "127.0.0.1"
    listen_host: str | None = None
    store_dir: str = ".xregion/nats"
    max_payload: int = Field(default=10 * MiB, ge=1, le=64 * MiB)
    max_pending: int = Field(default=64 * MiB, ge=1)
    ports: PortPlan = PortPlan(base=14000)
    jetstream: JetStreamSpec = JetStreamSpec()
    regions: tuple[RegionSpec, ...] = Field(min_length=1)
    tiebreaker: TiebreakerSpec | None = None
    tls: TlsSpec = TlsSpec()
    auth: AuthSpec = AuthSpec()
    servers: dict[str, ServerOverride] = Field(default_factory=dict)

    _host = field_validator("host")(_check_host)

    @field_validator("listen_host")
    @classmethod
    def _listen_host(cls, value: str | None) -> str | None:
        return None if value is None else _check_host(value)

    @field_validator("name")
    @classmethod
    def _topology_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
            raise ValueError(f"invalid topology name {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _check_limits(self)
        _check_clusters(self)
        _check_overrides(self)
        _check_users(self)
        _check_ports(server_specs(self))
        return self


def _check_limits(topo: Topology) -> None:
    if topo.max_pending < topo.max_payload:
        raise ValueError(f"max_pending: must be >= max_payload ({topo.max_payload})")


def _check_clusters(topo: Topology) -> None:
    names = cluster_names(topo)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"regions: duplicate cluster names {dupes} (regions and tiebreaker)")
    if topo.ports.base is not None and len(names) > 9:
        raise ValueError("ports.base: the plan supports at most 9 clusters; use fixed ports")


def _check_overrides(topo: Topology) -> None:
    known = {slot[0] for slot in _server_slots(topo)}
    unknown = sorted(set(topo.servers) - known)
    if unknown:
        raise ValueError(f"servers: unknown server names {unknown}; known: {sorted(known)}")


def _check_users(topo: Topology) -> None:
    regions = {r.name for r in topo.regions}
    for user in topo.auth.users:
        if user.region is not None and user.region not in regions:
            raise ValueError(f"auth.users: user {user.name!r} names unknown region {user.region!r}")


def _check_ports(servers: Sequence[ServerSpec]) -> None:
    seen: dict[tuple[str, int], str] = {}
    for srv in servers:
        for kind, port in (
            ("client_port", srv.client_port),
            ("cluster_port", srv.cluster_port),
            ("gateway_port", srv.gateway_port),
            ("monitor_port", srv.monitor_port),
        ):
            key = (srv.host, port)
            if key in seen:
                raise ValueError(
                    f"ports: collision: {srv.name}.{kind} {srv.host}:{port} is already {seen[key]}"
                )
            seen[key] = f"{srv.name}.{kind}"


def cluster_names(topo: Topology) -> list[str]:
    """Every cluster in order: the regions, then the tie-breaker."""
    names = [r.name for r in topo.regions]
    if topo.tiebreaker is not None:
        names.append(topo.tiebreaker.name)
    return names


def _server_slots(topo: Topology) -> list[tuple[str, str, int, int]]:
    """(server name, cluster, 1-based cluster index, 1-based server index) per server."""
    clusters: list[tuple[str, int]] = [(r.name, r.servers) for r in topo.regions]
    if topo.tiebreaker is not None:
        clusters.append((topo.tiebreaker.name, topo.tiebreaker.servers))
    return [
        (f"{name}-{i}", name, c_index, i)
        for c_index, (name, count) in enumerate(clusters, start=1)
        for i in range(1, count + 1)
    ]


def _expand_host(key: str, template: str, cluster: str, index: int, server: str) -> str:
    try:
        return template.format_map({"region": cluster, "index": index, "server": server})
    except (KeyError, IndexError, ValueError) as exc:
        allowed = ", ".join(f"{{{p}}}" for p in _PLACEHOLDERS)
        raise ValueError(f"{key}: {template!r}: only {allowed} placeholders are allowed") from exc


def _resolve(topo: Topology, name: str, cluster: str, c_index: int, s_index: int) -> ServerSpec:
    over = topo.servers.get(name, ServerOverride())
    client, route, gateway, monitor = topo.ports.ports_for(c_index, s_index)
    host = over.host or _expand_host("host", topo.host, cluster, s_index, name)
    listen = host
    if topo.listen_host:
        listen = _expand_host("listen_host", topo.listen_host, cluster, s_index, name)
    return ServerSpec(
        name=name,
        cluster=cluster,
        index=s_index,
        tiebreaker=topo.tiebreaker is not None and cluster == topo.tiebreaker.name,
        host=host,
        listen_host=over.host or listen,
        client_port=over.client_port or client,
        cluster_port=over.cluster_port or route,
        gateway_port=over.gateway_port or gateway,
        monitor_port=over.monitor_port or monitor,
        gateway_advertise=over.gateway_advertise,
        tls=topo.tls.enabled,
    )


def server_specs(topo: Topology) -> tuple[ServerSpec, ...]:
    """Every server of the super-cluster with resolved hosts and ports, in cluster order."""
    return tuple(_resolve(topo, *slot) for slot in _server_slots(topo))


def endpoints(topo: Topology) -> dict[str, ClusterEndpoints]:
    """Per cluster (region or tie-breaker): client URLs, monitoring URLs and server names."""
    specs = server_specs(topo)
    result: dict[str, ClusterEndpoints] = {}
    for cluster in cluster_names(topo):
        members = [s for s in specs if s.cluster == cluster]
        result[cluster] = ClusterEndpoints(
            cluster=cluster,
            tiebreaker=members[0].tiebreaker,
            client_urls=tuple(s.client_url for s in members),
            monitor_urls=tuple(s.monitor_url for s in members),
            servers=tuple(s.name for s in members),
        )
    return result


def env_references(topo: Topology) -> list[str]:
    """Names of the environment variables the rendered configs read (`$NAME`), sorted.

    nats-server refuses to start when one is unset, so deployments must provide all of them.
    """
    if not topo.auth.enabled:
        return []
    auth = topo.auth
    secrets = [auth.system_password, auth.gateway_password]
    secrets += [u.password for u in auth.users]
    return sorted({s[1:] for s in secrets if ENV_REF_RE.fullmatch(s)})


# --------------------------------------------------------------------------- loading


def _format_loc(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _error_line(exc: ValidationError, source: str) -> str:
    err = exc.errors(include_url=False)[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = _format_loc(err["loc"])
    return f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}"


def parse_topology(data: Mapping[str, Any], *, source: str = "topology") -> Topology:
    """Validate a topology mapping (parsed TOML); raise TopologyError naming the key."""
    try:
        return Topology.model_validate(dict(data))
    except ValidationError as exc:
        raise TopologyError(_error_line(exc, source)) from None


def load_topology(path: Path) -> Topology:
    """Read and validate a topology TOML file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TopologyError(f"{path}: cannot read topology: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: invalid TOML: {exc}") from exc
    return parse_topology(data, source=str(path))


def replace(topo: Topology, **changes: Any) -> Topology:
    """A copy of `topo` with top-level keys replaced, validated again."""
    data = topo.model_dump(exclude_unset=False)
    data.update({k: _dump(v) for k, v in changes.items()})
    return parse_topology(data, source=f"topology {topo.name}")


def _dump(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, Mapping):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_dump(v) for v in value]
    return value


def build_topology(
    regions: Sequence[str],
    *,
    servers_per_region: int = 1,
    tiebreaker: str | None = None,
    tiebreaker_servers: int = 1,
    name: str = "local",
    base_port: int = 14000,
    store_dir: str = ".xregion/nats",
) -> Topology:
    """A loopback topology of the given shape (what `xregion up` and tests start from)."""
    data: dict[str, Any] = {
        "name": name,
        "store_dir": store_dir,
        "ports": {"base": base_port},
        "regions": [{"name": r, "servers": servers_per_region} for r in regions],
    }
    if tiebreaker is not None:
        data["tiebreaker"] = {"name": tiebreaker, "servers": tiebreaker_servers}
    return parse_topology(data)
