"""Topology model and nats-server config rendering (services/xregion/natsconf/)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.xregion.local.supercluster import find_nats_server
from services.xregion.natsconf import (
    GENERATED_HEADER,
    TlsSpec,
    Topology,
    TopologyError,
    build_topology,
    env_references,
    load_topology,
    parse_topology,
    render,
    render_server,
    render_to_dir,
    replace,
    role_permissions,
    server_config,
    server_specs,
)
from tests.harness.fixtures import TlsFiles

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "nats-conf"
REGIONS = ["us-east", "eu-west", "ap-south"]


def minimal(**extra: Any) -> dict[str, Any]:
    return {"name": "t", "regions": [{"name": r} for r in REGIONS], **extra}


def block(conf: dict[str, Any], key: str) -> dict[str, Any]:
    value = conf[key]
    assert isinstance(value, dict)
    return value


def nats_check(conf: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [find_nats_server(), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


# ------------------------------------------------------------------ checked-in files


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_checked_in_rendered_configs_match_a_fresh_render(name: str) -> None:
    topology = load_topology(CONF_DIR / f"{name}.toml")
    fresh = render(topology)
    on_disk = {p.stem: p.read_text() for p in (CONF_DIR / "rendered" / name).glob("*.conf")}
    assert on_disk == fresh, (
        f"nats-conf/rendered/{name} is stale: run `xregion nats-conf render "
        f"--topology nats-conf/{name}.toml --out nats-conf/rendered/{name}`"
    )


def test_checked_in_shapes() -> None:
    dev, prod = load_topology(CONF_DIR / "dev.toml"), load_topology(CONF_DIR / "prod.toml")
    assert [(r.name, r.servers) for r in dev.regions] == [(r, 1) for r in REGIONS]
    assert [(r.name, r.servers) for r in prod.regions] == [(r, 3) for r in REGIONS]
    assert (dev.tls.enabled, dev.auth.enabled) == (False, False)
    assert (prod.tls.enabled, prod.auth.enabled) == (True, True)
    assert dev.max_payload >= 8 * 1024 * 1024 + 64 * 1024


def test_checked_in_dev_configs_pass_nats_server_check() -> None:
    for conf in sorted((CONF_DIR / "rendered" / "dev").glob("*.conf")):
        result = nats_check(conf)
        assert result.returncode == 0, f"{conf.name}: {result.stderr}{result.stdout}"


def test_prod_configs_pass_nats_server_check_with_certs_and_env(
    tmp_path: Path, tls_files: TlsFiles, secret_env: Callable[[Topology], dict[str, str]]
) -> None:
    prod = load_topology(CONF_DIR / "prod.toml")
    tls = TlsSpec(
        enabled=True,
        cert_file=str(tls_files.cert_file),
        key_file=str(tls_files.key_file),
        ca_file=str(tls_files.ca_file),
    )
    prod = replace(prod, tls=tls, store_dir=str(tmp_path / "data"))
    env = secret_env(prod)
    confs = render_to_dir(prod, tmp_path / "conf")
    assert len(confs) == 9
    for conf in confs:
        result = nats_check(conf, env)
        assert result.returncode == 0, f"{conf.name}: {result.stderr}{result.stdout}"


def test_prod_config_fails_check_without_its_secrets(tmp_path: Path) -> None:
    prod = load_topology(CONF_DIR / "prod.toml")
    (conf, *_) = render_to_dir(prod, tmp_path)
    result = nats_check(conf, env={})
    assert result.returncode != 0
    assert "XR_NATS_" in result.stderr + result.stdout


def test_env_references_of_prod() -> None:
    names = env_references(load_topology(CONF_DIR / "prod.toml"))
    assert "XR_NATS_GATEWAY_PASSWORD" in names
    assert "XR_NATS_BRIDGE_US_EAST_PASSWORD" in names
    assert len(names) == 2 + 11


# ------------------------------------------------------------------ rendering rules


def test_one_server_cluster_routes_to_itself() -> None:
    topo = build_topology(REGIONS)
    for spec in server_specs(topo):
        cluster = block(server_config(topo, spec.name), "cluster")
        assert cluster["routes"] == [spec.route_url]
        assert cluster["name"] == spec.cluster


def test_routes_list_every_server_of_the_cluster_including_itself() -> None:
    topo = build_topology(REGIONS, servers_per_region=3)
    specs = server_specs(topo)
    for spec in specs:
        routes = block(server_config(topo, spec.name), "cluster")["routes"]
        assert routes == [s.route_url for s in specs if s.cluster == spec.cluster]
        assert spec.route_url in routes


def test_gateway_list_names_every_cluster_with_all_urls() -> None:
    topo = build_topology(REGIONS, servers_per_region=3, tiebreaker="tb")
    specs = server_specs(topo)
    for spec in specs:
        gateway = block(server_config(topo, spec.name), "gateway")
        assert gateway["name"] == spec.cluster
        names = [g["name"] for g in gateway["gateways"]]
        assert names == [*REGIONS, "tb"]
        for entry in gateway["gateways"]:
            assert entry["urls"] == [s.gateway_url for s in specs if s.cluster == entry["name"]]


def test_server_names_unique_tags_and_no_domain() -> None:
    topo = build_topology(REGIONS, servers_per_region=3, tiebreaker="tb")
    names = [s.name for s in server_specs(topo)]
    assert len(names) == len(set(names)) == 10
    conf = server_config(topo, "eu-west-2")
    assert conf["server_name"] == "eu-west-2"
    assert conf["server_tags"] == ["region:eu-west"]
    assert server_config(topo, "tb-1")["server_tags"] == ["tiebreaker:tb"]
    jetstream = block(conf, "jetstream")
    assert "domain" not in jetstream
    assert jetstream["store_dir"] == ".xregion/nats/eu-west-2"


def test_payload_limits_rendered() -> None:
    conf = server_config(build_topology(REGIONS), "us-east-1")
    assert conf["max_payload"] == 10 * 1024 * 1024
    assert isinstance(conf["max_pending"], int)
    assert conf["max_pending"] >= conf["max_payload"]


def test_base_port_plan() -> None:
    spec = server_specs(build_topology(REGIONS, servers_per_region=2, base_port=14000))[3]
    assert spec.name == "eu-west-2"
    ports = (spec.client_port, spec.cluster_port, spec.gateway_port, spec.monitor_port)
    assert ports == (14022, 14122, 14222, 14322)


def test_gateway_advertise_replaces_the_servers_gateway_url_everywhere() -> None:
    topo = parse_topology(minimal(servers={"eu-west-1": {"gateway_advertise": "127.0.0.1:19999"}}))
    assert block(server_config(topo, "eu-west-1"), "gateway")["advertise"] == "127.0.0.1:19999"
    gateways = block(server_config(topo, "us-east-1"), "gateway")["gateways"]
    eu = next(g for g in gateways if g["name"] == "eu-west")
    assert eu["urls"] == ["nats://127.0.0.1:19999"]
    assert "advertise" not in block(server_config(topo, "us-east-1"), "gateway")


def test_explicit_server_overrides() -> None:
    over = {"host": "127.0.0.2", "client_port": 4222, "monitor_port": 8222}
    topo = parse_topology(minimal(servers={"ap-south-1": over}))
    spec = server_specs(topo)[2]
    assert (spec.host, spec.client_port, spec.monitor_port) == ("127.0.0.2", 4222, 8222)
    assert spec.client_url == "nats://127.0.0.2:4222"


def test_host_placeholders_and_fixed_ports() -> None:
    prod = load_topology(CONF_DIR / "prod.toml")
    spec = server_specs(prod)[4]
    assert spec.host == "nats-2.eu-west.xregion.internal"
    assert spec.listen_host == "0.0.0.0"
    assert spec.client_url == "tls://nats-2.eu-west.xregion.internal:4222"


def test_tls_on_client_route_and_gateway_links() -> None:
    conf = server_config(load_topology(CONF_DIR / "prod.toml"), "us-east-3")
    assert "authorization" not in block(conf, "cluster")  # routes: mutual TLS, see AuthSpec
    assert block(block(conf, "gateway"), "authorization")["user"] == "gateway"
    assert block(conf, "tls")["cert_file"] == "/etc/nats/tls/us-east-3.pem"
    assert block(conf, "tls")["verify"] is False
    assert block(block(conf, "cluster"), "tls")["verify"] is True
    assert block(block(conf, "gateway"), "tls")["verify"] is True


def test_auth_renders_env_references_unquoted_and_subjects_quoted() -> None:
    text = render_server(load_topology(CONF_DIR / "prod.toml"), "us-east-1")
    assert text.startswith(GENERATED_HEADER)
    assert "password: $XR_NATS_GATEWAY_PASSWORD\n" in text
    assert '"$JS.API.INFO"' in text
    assert 'system_account: "SYS"' in text


def test_bridge_may_publish_only_its_regions_events() -> None:
    perms = role_permissions("bridge", "eu-west", REGIONS)
    publish = perms["publish"]["allow"]
    assert "xr.events.eu-west.>" in publish
    assert not [s for s in publish if s.startswith("xr.") and "eu-west" not in s]
    # Events its stream refuses for good go to its region's DLQ, under its own origin only.
    assert [s for s in publish if s.startswith("xr.dlq.")] == ["xr.dlq.eu-west.eu-west.>"]
    # Replies only on its own inboxes (the prefix shared.natsconn connects with), not _INBOX.>.
    assert [s for s in perms["subscribe"]["allow"] if s.startswith("_INBOX")] == [
        "_INBOX.bridge-eu-west.>"
    ]
    assert perms["allow_responses"] is True


def test_broadcaster_never_publishes_back_to_its_origin() -> None:
    publish = role_permissions("broadcaster", "us-east", REGIONS)["publish"]["allow"]
    replay = [s for s in publish if s.startswith("xr.replay.")]
    assert sorted(replay) == ["xr.replay.ap-south.us-east.>", "xr.replay.eu-west.us-east.>"]
    assert "$JS.ACK.XR_EVENTS_US_EAST.xr-broadcast-eu-west.>" in publish


def test_replayer_consumes_its_replay_stream_and_publishes_its_dlq() -> None:
    perms = role_permissions("replayer", "ap-south", REGIONS)
    publish = perms["publish"]["allow"]
    assert "$JS.API.CONSUMER.MSG.NEXT.XR_REPLAY_AP_SOUTH.xr-replayer" in publish
    assert "xr.dlq.ap-south.*.>" in publish
    assert not [s for s in publish if s.startswith("$JS.API.STREAM.CREATE")]


def test_provisioner_gets_the_jetstream_api() -> None:
    assert role_permissions("provisioner", None, REGIONS)["publish"]["allow"] == ["$JS.API.>"]


def kv_subjects(publish: list[str]) -> list[str]:
    """The publish subjects that touch a KV bucket (its stream, its keys)."""
    return sorted(s for s in publish if "KV_" in s or s.startswith("$KV."))


def versions_rw(region: str) -> list[str]:
    bucket = f"xr-versions-{region}"
    return sorted(
        [
            f"$JS.API.STREAM.INFO.KV_{bucket}",  # js.key_value(bucket)
            f"$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.>",  # kv.get(key)
            f"$KV.{bucket}.>",  # kv.create/update/delete(key)
        ]
    )


@pytest.mark.parametrize("role", ["bridge", "replayer"])
def test_bridge_and_replayer_read_and_write_only_their_regions_version_bucket(role: str) -> None:
    perms = role_permissions(role, "eu-west", REGIONS)
    assert kv_subjects(perms["publish"]["allow"]) == versions_rw("eu-west")
    assert not [s for s in perms["subscribe"]["allow"] if "KV" in s]


def test_broadcaster_reads_its_pause_switches_and_nothing_else_of_the_control_bucket() -> None:
    publish = role_permissions("broadcaster", "us-east", REGIONS)["publish"]["allow"]
    get = "$JS.API.DIRECT.GET.KV_xr-control-us-east.$KV.xr-control-us-east.pause."
    assert kv_subjects(publish) == [get + "ap-south", get + "eu-west"]  # no write, no watch
    assert "xr.events.us-east.xr-canary" in publish  # its canaries, into its own events
    assert "$JS.API.DIRECT.GET.XR_EVENTS_US_EAST" in publish  # the backlog's oldest event
    assert not [s for s in publish if s.startswith("xr.events.") and not s.endswith("xr-canary")]
    assert not [s for s in publish if s.startswith("$JS.API.CONSUMER.CREATE")]


def test_admin_writes_every_regions_control_bucket_but_no_version_bucket() -> None:
    publish = role_permissions("admin", None, REGIONS)["publish"]["allow"]
    assert kv_subjects(publish) == sorted(f"$KV.xr-control-{r}.>" for r in REGIONS)
    assert "$JS.API.>" in publish  # reading a switch is a direct get


def test_rendered_prod_users_carry_the_kv_permissions() -> None:
    text = render_server(load_topology(CONF_DIR / "prod.toml"), "eu-west-1")
    assert '"$KV.xr-versions-ap-south.>"' in text
    assert '"$KV.xr-control-us-east.>"' in text
    assert '"$JS.API.DIRECT.GET.KV_xr-control-eu-west.$KV.xr-control-eu-west.pause.us-east"' in text


# ------------------------------------------------------------------ validation errors


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (minimal(regions=[{"name": "US-East"}]), "regions[0].name: invalid region name"),
        (minimal(regions=[]), "regions:"),
        (minimal(regions=[{"name": "a"}, {"name": "a"}]), "duplicate cluster names ['a']"),
        (minimal(tiebreaker={"name": "us-east"}), "duplicate cluster names ['us-east']"),
        (minimal(regions=[{"name": "a", "servers": 0}]), "regions[0].servers:"),
        (minimal(colour="blue"), "colour: Extra inputs are not permitted"),
        (minimal(ports={"base": 14000, "client": 4222}), "ports: base cannot be combined"),
        (minimal(ports={"client": 4222}), "ports: set either base"),
        (minimal(servers={"us-east-9": {}}), "unknown server names ['us-east-9']"),
        (minimal(max_payload=2048, max_pending=1024), "max_pending: must be >= max_payload"),
        (minimal(tls={"enabled": True, "cert_file": "c"}), "tls: key_file is required"),
        (minimal(servers={"eu-west-1": {"gateway_advertise": "nope"}}), "must be host:port"),
        (minimal(host="{zone}.example"), "host: '{zone}.example': only {region}, {index}"),
    ],
)
def test_invalid_topologies_name_the_key(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(data)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_port_collision_rejected() -> None:
    data = minimal(servers={"eu-west-1": {"client_port": 14011}})
    with pytest.raises(TopologyError, match=r"ports: collision: eu-west-1\.client_port"):
        parse_topology(data)


def test_same_ports_on_different_hosts_are_fine() -> None:
    fixed = {"client": 4222, "cluster": 6222, "gateway": 7222, "monitor": 8222}
    topo = parse_topology(minimal(host="n{index}.{region}", ports=fixed))
    assert len({s.host for s in server_specs(topo)}) == 3


@pytest.mark.parametrize(
    ("user", "fragment"),
    [
        ({"name": "b", "role": "bridge", "password": "hunter2"}, "environment reference"),
        ({"name": "b", "role": "bridge", "password": "$XR_B"}, "needs a region"),
        ({"name": "p", "role": "provisioner", "region": "us-east", "password": "$X"}, "takes no"),
        ({"name": "b", "role": "bridge", "region": "mars", "password": "$X"}, "unknown region"),
        ({"name": "b", "role": "root", "password": "$X"}, "auth.users[0].role"),
    ],
)
def test_invalid_users(user: dict[str, str], fragment: str) -> None:
    with pytest.raises(TopologyError, match="auth") as info:
        parse_topology(minimal(auth={"enabled": True, "users": [user]}))
    assert fragment in str(info.value)


def test_link_passwords_must_be_env_references() -> None:
    bcrypt = "$2a$11$" + "a" * 53
    with pytest.raises(TopologyError, match=r"auth\.gateway_password"):
        parse_topology(minimal(auth={"enabled": True, "gateway_password": bcrypt}))
    user = {"name": "admin", "role": "admin", "password": bcrypt}
    assert parse_topology(minimal(auth={"enabled": True, "users": [user]})).auth.enabled


def test_load_topology_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(TopologyError, match=r"bad\.toml: invalid TOML"):
        load_topology(bad)
    with pytest.raises(TopologyError, match=r"missing\.toml: cannot read"):
        load_topology(tmp_path / "missing.toml")


def test_render_to_dir_replaces_stale_generated_files_only(tmp_path: Path) -> None:
    (tmp_path / "old-1.conf").write_text(GENERATED_HEADER + "\n")
    (tmp_path / "mine.conf").write_text("# hand written\n")
    written = render_to_dir(build_topology(["a", "b"]), tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.conf")) == ["a-1.conf", "b-1.conf", "mine.conf"]
    assert [p.name for p in written] == ["a-1.conf", "b-1.conf"]
