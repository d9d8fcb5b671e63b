"""A real nats-server super-cluster (services/xregion/local/supercluster.py): boot, cross-region
traffic, JetStream placement and dedup, a region going down, the checked-in topologies."""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import Placement, StreamConfig
from nats.js.errors import BadRequestError, NoStreamResponseError, ServiceUnavailableError

from services.xregion.local.supercluster import (
    ServerExitedError,
    ServerProbe,
    SuperCluster,
    SuperClusterError,
    readiness_problem,
    with_free_ports,
)
from services.xregion.natsconf import (
    TlsSpec,
    Topology,
    build_topology,
    load_topology,
    replace,
    server_specs,
)
from tests.harness.fixtures import MakeSuperCluster, NatsConnect, TlsFiles
from tests.harness.wait import wait_until

CONF_DIR = Path(__file__).resolve().parents[2] / "nats-conf"
# Transient JetStream answers right after a stream is created or a leader is elected.
JS_TRANSIENT = (NoStreamResponseError, ServiceUnavailableError, NatsTimeoutError)


def processes_using(workdir: Path) -> list[int]:
    """PIDs of live processes whose command line mentions `workdir` (Linux /proc)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(workdir).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # the process went away while we looked
    return found


# "no suitable peers for placement": also what a cluster answers before its servers all joined.
_NO_PEERS_YET = 10005


async def add_stream(js: Any, name: str, subject: str, cluster: str, replicas: int = 1) -> Any:
    config = StreamConfig(
        name=name, subjects=[subject], placement=Placement(cluster=cluster), num_replicas=replicas
    )

    async def create() -> Any:
        try:
            return await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code == _NO_PEERS_YET:
                return None  # right after boot, not every server has joined the meta group
            raise

    return await wait_until(
        create, 30, interval=0.2, ignore=JS_TRANSIENT,
        message=f"stream {name} created in {cluster}",
    )  # fmt: skip


async def publish(js: Any, subject: str, msg_id: str | None = None) -> Any:
    headers = {"Nats-Msg-Id": msg_id} if msg_id else None
    return await wait_until(
        lambda: js.publish(subject, b"x", headers=headers), 30, interval=0.2,
        ignore=JS_TRANSIENT, message=f"JetStream ack for {subject}",
    )  # fmt: skip


# ------------------------------------------------------------------ pure readiness rules


def probe(server: str, cluster: str, **kw: Any) -> ServerProbe:
    base: dict[str, Any] = {"reachable": True, "alive": True, "meta_leader": "a-1"}
    return ServerProbe(server, cluster, **{**base, **kw})


def test_readiness_names_the_missing_gateway() -> None:
    probes = [probe("a-1", "a", gateways=frozenset({"b"})), probe("b-1", "b")]
    problem = readiness_problem(probes, ["a", "b", "c"])
    assert problem == ("gateway a -> c not connected (on a-1)", "a-1")


def test_readiness_needs_one_agreed_meta_leader() -> None:
    gw = frozenset({"a", "b"})
    assert readiness_problem([probe("a-1", "a", gateways=gw, meta_leader=None)], ["a"]) == (
        "server a-1: no JetStream meta leader known",
        "a-1",
    )
    split = [probe("a-1", "a", gateways=gw), probe("b-1", "b", gateways=gw, meta_leader="b-1")]
    assert "disagree" in (readiness_problem(split, ["a", "b"]) or ("", ""))[0]
    agreed = [probe("a-1", "a", gateways=gw), probe("b-1", "b", gateways=gw)]
    assert readiness_problem(agreed, ["a", "b"]) is None


def test_readiness_reports_unreachable_and_unhealthy_first() -> None:
    dead = ServerProbe("a-1", "a", reachable=False)
    assert readiness_problem([dead], ["a"]) == ("server a-1: monitoring endpoint not answering",
                                                 "a-1")  # fmt: skip
    sick = probe("a-1", "a", alive=False, alive_error="JetStream not enabled")
    assert readiness_problem([sick], ["a"]) == (
        "server a-1: /healthz?js-server-only=true: JetStream not enabled",
        "a-1",
    )


# ------------------------------------------------------------------ real servers


@pytest.mark.integration
async def test_core_message_crosses_regions(
    supercluster: SuperCluster, nats_connect: NatsConnect
) -> None:
    pub = await nats_connect(supercluster.client_urls("us-east"))
    sub_client = await nats_connect(supercluster.client_urls("eu-west"))
    received: list[bytes] = []

    async def on_msg(msg: Any) -> None:
        received.append(msg.data)

    await sub_client.subscribe("xr.test.core", cb=on_msg)
    await sub_client.flush()

    async def delivered() -> bool:
        # Interest crosses the gateway asynchronously: publish until one arrives.
        await pub.publish("xr.test.core", b"hello")
        await pub.flush()
        return bool(received)

    await wait_until(delivered, 15, interval=0.1, message="us-east publish seen in eu-west")
    assert set(received) == {b"hello"}


@pytest.mark.integration
async def test_jetstream_publish_to_a_stream_in_another_region_with_dedup(
    supercluster: SuperCluster, nats_connect: NatsConnect
) -> None:
    nc = await nats_connect(supercluster.client_urls("us-east"))
    js = nc.jetstream(timeout=3)
    info = await add_stream(js, "T_EU", "t.eu.>", "eu-west")
    assert info.cluster.name == "eu-west"

    first = await publish(js, "t.eu.x", "us-east:1")
    again = await js.publish("t.eu.x", b"x", headers={"Nats-Msg-Id": "us-east:1"})
    assert (first.stream, first.seq, first.duplicate) == ("T_EU", 1, None)
    assert (again.seq, again.duplicate) == (1, True)


@pytest.mark.integration
@pytest.mark.chaos
async def test_one_region_down_keeps_meta_quorum(
    supercluster: SuperCluster, nats_connect: NatsConnect
) -> None:
    east = (await nats_connect(supercluster.client_urls("us-east"))).jetstream(timeout=2)
    west = (await nats_connect(supercluster.client_urls("eu-west"))).jetstream(timeout=2)
    await add_stream(east, "T_EAST", "t.east.>", "us-east")
    await add_stream(west, "T_WEST", "t.west.>", "eu-west")

    await supercluster.stop_server("ap-south-1")

    assert (await publish(east, "t.east.1")).stream == "T_EAST"
    assert (await publish(west, "t.west.1")).stream == "T_WEST"
    created = await add_stream(east, "T_AFTER", "t.after.>", "us-east")
    assert created.config.name == "T_AFTER"
    rows = {h.name: h for h in await supercluster.health()}
    assert (rows["ap-south-1"].running, rows["ap-south-1"].healthz) == (False, "stopped")
    assert rows["us-east-1"].healthz == rows["eu-west-1"].healthz == "ok"

    await supercluster.start_server("ap-south-1")
    await supercluster.wait_ready(60)
    assert {h.healthz for h in await supercluster.health()} == {"ok"}


@pytest.mark.integration
async def test_health_table_and_clean_stop(make_supercluster: MakeSuperCluster) -> None:
    cluster = await make_supercluster(regions=["aa", "bb"], tiebreaker="tb")
    rows = await cluster.health()
    assert [(r.name, r.tiebreaker) for r in rows] == [
        ("aa-1", False),
        ("bb-1", False),
        ("tb-1", True),
    ]
    leaders = {r.meta_leader for r in rows}
    assert len(leaders) == 1
    assert leaders <= {"aa-1", "bb-1", "tb-1"}
    for row in rows:
        assert (row.running, row.healthz, row.jetstream_ok) == (True, "ok", True)
        assert set(row.gateways) == {"aa", "bb", "tb"} - {row.cluster}
    assert cluster.regions == ("aa", "bb")
    assert cluster.clusters == ("aa", "bb", "tb")
    assert len(processes_using(cluster.workdir)) == 3

    await cluster.stop()
    await cluster.stop()  # idempotent
    assert processes_using(cluster.workdir) == []


@pytest.mark.integration
async def test_failed_start_stops_what_it_spawned(tmp_path: Path) -> None:
    topology = with_free_ports(build_topology(["aa", "bb", "cc"]))
    victim = server_specs(topology)[1]
    with socket.socket() as squatter:  # bb-1 cannot bind its client port and exits
        squatter.bind((victim.host, victim.client_port))
        squatter.listen()
        cluster = SuperCluster(topology, tmp_path / "sc")
        with pytest.raises(
            ServerExitedError, match=r"nats-server bb-1 exited with code 1; see "
        ) as info:
            await cluster.start(timeout_s=30)
    assert "address already in use" in str(info.value)  # the log's last lines are quoted
    assert processes_using(tmp_path / "sc") == []
    with pytest.raises(SuperClusterError, match="was stopped"):
        await cluster.start()


@pytest.mark.integration
async def test_checked_in_dev_topology_boots(
    make_supercluster: MakeSuperCluster, nats_connect: NatsConnect
) -> None:
    cluster = await make_supercluster(topology=load_topology(CONF_DIR / "dev.toml"))
    assert cluster.regions == ("us-east", "eu-west", "ap-south")
    for region in cluster.regions:
        nc = await nats_connect(cluster.client_urls(region))
        assert nc.max_payload == 10 * 1024 * 1024


def prod_on_loopback(tls_files: TlsFiles) -> Topology:
    tls = TlsSpec(
        enabled=True,
        cert_file=str(tls_files.cert_file),
        key_file=str(tls_files.key_file),
        ca_file=str(tls_files.ca_file),
    )
    return replace(load_topology(CONF_DIR / "prod.toml"), tls=tls)


@pytest.mark.integration
@pytest.mark.slow
async def test_checked_in_prod_topology_boots_with_tls_and_users(
    make_supercluster: MakeSuperCluster,
    nats_connect: NatsConnect,
    tls_files: TlsFiles,
    secret_env: Callable[[Topology], dict[str, str]],
) -> None:
    topology = prod_on_loopback(tls_files)
    env = secret_env(topology)
    cluster = await make_supercluster(topology=topology, env=env, timeout_s=100)
    assert len(cluster.servers) == 9
    assert all(url.startswith("tls://") for url in cluster.client_urls("us-east"))

    tls = ssl.create_default_context(cafile=str(tls_files.ca_file))
    urls = cluster.client_urls("us-east")
    admin = await nats_connect(
        urls, tls=tls, user="provisioner", password=env["XR_NATS_PROVISIONER_PASSWORD"]
    )
    js = admin.jetstream(timeout=3)
    await add_stream(js, "XR_EVENTS_US_EAST", "xr.events.us-east.>", "us-east", replicas=3)

    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    bridge = await nats_connect(
        urls,
        tls=tls,
        user="bridge-us-east",
        password=env["XR_NATS_BRIDGE_US_EAST_PASSWORD"],
        error_cb=on_error,
    )
    ack = await publish(bridge.jetstream(timeout=3), "xr.events.us-east.catalog", str(uuid.uuid4()))
    assert ack.stream == "XR_EVENTS_US_EAST"

    await bridge.publish("xr.events.eu-west.catalog", b"not mine")
    await wait_until(
        lambda: any("permissions violation" in str(e).lower() for e in errors), 10,
        message="permission violation for the bridge publishing another region's events",
    )  # fmt: skip
    with pytest.raises((NoRespondersError, NatsTimeoutError)):
        await bridge.request("$JS.API.STREAM.CREATE.EVIL", b"{}", timeout=1)
