"""`xregion nats-conf certs`: the certificates it writes run a real TLS super-cluster (mutual
TLS on routes and gateways, client certificates required) and let a service's connection in;
a client without a client certificate, or one that does not trust the CA, is refused."""

from __future__ import annotations

import json
import ssl
import stat
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.xregion.local.supercluster import SuperCluster, with_free_ports
from services.xregion.natsconf import build_topology, replace
from services.xregion.natsconf.certs import write_dev_certs
from shared.natsconn import NatsConnection
from shared.settings import NatsSettings
from tests.harness.xregion_procs import run_xregion

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGIONS = ("us-east", "eu-west")
TOPOLOGY = """\
name = "tls-dev"
[[regions]]
name = "us-east"
[[regions]]
name = "eu-west"
"""


@pytest_asyncio.fixture
async def certs(tmp_path: Path) -> dict[str, Any]:
    """What `xregion nats-conf certs --output json` says it wrote, run as a real command."""
    topology = tmp_path / "topology.toml"
    topology.write_text(TOPOLOGY)
    out = tmp_path / "certs"
    code, stdout, stderr = await run_xregion(
        "nats-conf", "certs", "--topology", str(topology), "--out", str(out),
        "--verify-clients", "--output", "json",
    )  # fmt: skip
    assert code == 0, stderr
    document: dict[str, Any] = json.loads(stdout)
    return document


@pytest_asyncio.fixture
async def tls_cluster(certs: dict[str, Any], tmp_path: Path) -> AsyncIterator[SuperCluster]:
    tls = tomllib.loads(certs["tls_section"])["tls"]
    topology = with_free_ports(replace(build_topology(REGIONS, name="tls-dev"), tls=tls))
    cluster = SuperCluster(topology, tmp_path / "nats")
    # Ready means every route and gateway came up: mutual TLS with these certificates.
    await cluster.start(90)
    try:
        yield cluster
    finally:
        await cluster.stop()


def test_files_and_modes(certs: dict[str, Any]) -> None:
    assert certs["ca_created"] is True
    assert [s["server"] for s in certs["servers"]] == ["us-east-1", "eu-west-1"]
    for server in certs["servers"]:
        assert set(server["names"]) >= {"127.0.0.1", "localhost"}
        assert stat.S_IMODE(Path(server["key_file"]).stat().st_mode) == 0o600
    for key in (certs["ca_key_file"], certs["client_key_file"]):
        assert stat.S_IMODE(Path(key).stat().st_mode) == 0o600


def test_a_second_run_keeps_the_ca(certs: dict[str, Any], tmp_path: Path) -> None:
    before = Path(certs["ca_file"]).read_bytes()
    again = write_dev_certs(build_topology(REGIONS, name="tls-dev"), Path(certs["ca_file"]).parent)
    assert again.ca_created is False
    assert Path(certs["ca_file"]).read_bytes() == before
    key = serialization.load_pem_private_key(again.servers[0].key_file.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)


async def test_a_service_connects_over_tls(
    tls_cluster: SuperCluster, certs: dict[str, Any]
) -> None:
    urls = tls_cluster.client_urls("us-east")
    assert all(url.startswith("tls://") for url in urls)
    settings = NatsSettings(
        servers=urls,
        tls_ca=Path(certs["ca_file"]),
        tls_cert=Path(certs["client_cert_file"]),
        tls_key=Path(certs["client_key_file"]),
        first_connect_timeout_s=10.0,
    )
    async with NatsConnection(settings, service="test-tls") as conn:
        sub = await conn.nc.subscribe("tls.check")
        await conn.nc.publish("tls.check", b"over tls")
        msg = await sub.next_msg(timeout=5)
        assert msg.data == b"over tls"


async def test_a_client_without_a_certificate_is_refused(
    tls_cluster: SuperCluster, certs: dict[str, Any]
) -> None:
    context = ssl.create_default_context(cafile=certs["ca_file"])
    with pytest.raises((nats.errors.Error, OSError, ssl.SSLError, TimeoutError)):
        await _connect_once(tls_cluster.client_urls("us-east"), context)


async def test_a_client_that_does_not_trust_the_ca_is_refused(
    tls_cluster: SuperCluster, certs: dict[str, Any], tmp_path: Path
) -> None:
    other = write_dev_certs(build_topology(REGIONS, name="other"), tmp_path / "other")
    context = ssl.create_default_context(cafile=str(other.ca_file))
    context.load_cert_chain(certs["client_cert_file"], certs["client_key_file"])
    with pytest.raises((nats.errors.Error, OSError, ssl.SSLError, TimeoutError)):
        await _connect_once(tls_cluster.client_urls("us-east"), context)


async def _connect_once(urls: list[str], context: ssl.SSLContext) -> None:
    nc = await nats.connect(
        urls, tls=context, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3
    )
    await nc.close()
    raise AssertionError("the connection was accepted")
