"""Pytest fixtures: real nats-server super-clusters on free loopback ports, NATS clients that
are always closed, and throwaway TLS material.

* `make_supercluster(...)`: factory; every super-cluster it starts is stopped at teardown,
  also when the test fails (a failed start stops what it spawned by itself).
* `supercluster`: 3 regions x 1 server (`us-east`, `eu-west`, `ap-south`), fault proxy on.
* `nats_connect(servers, **opts)`: factory for nats-py clients, closed at teardown.
* `tls_files`: a CA and one server/client certificate for 127.0.0.1/localhost (openssl CLI),
  shared by the session; fails the test when openssl is missing.
* `secret_env(topology)`: random values for every `$XR_NATS_*` reference a topology renders.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import nats
import pytest

from services.xregion.local.supercluster import ServerExitedError, SuperCluster, with_free_ports
from services.xregion.natsconf import Topology, build_topology, env_references
from shared.natsconn import inbox_prefix

__all__ = [
    "DEV_REGIONS",
    "MakeSuperCluster",
    "NatsConnect",
    "TlsFiles",
    "make_supercluster",
    "nats_connect",
    "secret_env",
    "supercluster",
    "tls_files",
]

DEV_REGIONS = ("us-east", "eu-west", "ap-south")
READY_TIMEOUT_S = 90.0
PORT_RACE_ATTEMPTS = 3


class MakeSuperCluster(Protocol):
    async def __call__(
        self,
        *,
        regions: Sequence[str] = DEV_REGIONS,
        servers_per_region: int = 1,
        tiebreaker: str | None = None,
        fault_proxy: bool = False,
        topology: Topology | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> SuperCluster: ...


NatsConnect = Callable[..., Awaitable[Any]]


@pytest.fixture
async def make_supercluster(tmp_path: Path) -> AsyncIterator[MakeSuperCluster]:
    """Start super-clusters of any shape (always on free loopback ports); stop them all."""
    started: list[SuperCluster] = []

    async def make(
        *,
        regions: Sequence[str] = DEV_REGIONS,
        servers_per_region: int = 1,
        tiebreaker: str | None = None,
        fault_proxy: bool = False,
        topology: Topology | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> SuperCluster:
        if topology is None:
            topology = build_topology(
                regions, servers_per_region=servers_per_region, tiebreaker=tiebreaker
            )
        for attempt in range(1, PORT_RACE_ATTEMPTS + 1):
            workdir = tmp_path / f"supercluster-{len(started)}"
            cluster = SuperCluster(
                with_free_ports(topology), workdir, fault_proxy=fault_proxy, env=env
            )
            started.append(cluster)
            try:
                await cluster.start(timeout_s)
            except ServerExitedError as exc:
                # Another process took a "free" port between probing and binding: new ports.
                if "address already in use" not in str(exc) or attempt == PORT_RACE_ATTEMPTS:
                    raise
            else:
                return cluster
        raise AssertionError("unreachable: the last attempt returns or raises")

    try:
        yield make
    finally:
        for cluster in reversed(started):
            await cluster.stop()


@pytest.fixture
async def supercluster(make_supercluster: MakeSuperCluster) -> SuperCluster:
    """3 regions x 1 server with a fault proxy on every gateway listener, ready."""
    return await make_supercluster(fault_proxy=True)


@pytest.fixture
async def nats_connect() -> AsyncIterator[NatsConnect]:
    """Connect nats-py clients (fail-fast defaults); every client is closed at teardown."""
    clients: list[Any] = []

    async def connect(servers: str | list[str], **opts: Any) -> Any:
        opts.setdefault("connect_timeout", 2)
        opts.setdefault("reconnect_time_wait", 0.2)
        opts.setdefault("max_reconnect_attempts", 5)
        # As the services connect: a user may subscribe to its own inboxes only.
        opts.setdefault("inbox_prefix", inbox_prefix(opts.get("user")))
        client = await nats.connect(servers=servers, **opts)
        clients.append(client)
        return client

    try:
        yield connect
    finally:
        for client in reversed(clients):
            await client.close()


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


_LEAF_EXT = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\n"
    "basicConstraints=CA:FALSE\n"
)


def _make_certs(out: Path) -> TlsFiles:
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=xregion test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=out)  # fmt: skip
    _openssl("req", *ec, "-keyout", "server-key.pem", "-out", "server.csr",
             "-subj", "/CN=localhost", cwd=out)  # fmt: skip
    (out / "leaf.ext").write_text(_LEAF_EXT)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "leaf.ext",
             cwd=out)  # fmt: skip
    return TlsFiles(out / "ca.pem", out / "server.pem", out / "server-key.pem")


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Throwaway CA + certificate valid for 127.0.0.1 and localhost (server and client use)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl CLI not found: install it (Debian: apt-get install openssl)")
    return _make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def secret_env() -> Callable[[Topology], dict[str, str]]:
    """Random values for every environment reference a topology's configs read."""

    def make(topology: Topology) -> dict[str, str]:
        # nats-server parses the value as config text: start with a letter, no punctuation.
        return {name: "xr" + secrets.token_hex(16) for name in env_references(topology)}

    return make
