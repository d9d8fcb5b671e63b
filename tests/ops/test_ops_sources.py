"""Where `top` and `status` find a deployment (state file, region files), how `status` joins
the services API answers, and their usage errors (exit 2) and unreachable endpoints (exit 1),
all without NATS."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from services.xregion import cli
from services.xregion.local.supercluster import free_ports
from services.xregion.ops.deployment import (
    AdminEndpoint,
    DeploymentError,
    admin_url,
    from_settings,
    from_state,
    load_deployment,
)
from services.xregion.ops.discovery import join, parse_started
from services.xregion.ops.status import status_rows
from shared.settings import load_settings
from tests.harness.toml import write_region_toml

STATE = {
    "workdir": "/tmp/x",
    "regions": {
        "us-east": {
            "nats": ["nats://127.0.0.1:14011"],
            "nats_monitor": ["http://127.0.0.1:14311"],
            "config": "/tmp/x/us-east.toml",
            "bridge": "http://127.0.0.1:8080",
            "service": "http://127.0.0.1:7001",
            "admin": {
                "bridge": "http://127.0.0.1:9180",
                "broadcaster": "http://127.0.0.1:9181",
                "replayer": "http://127.0.0.1:9182/",
            },
        },
        "eu-west": {"nats": ["nats://127.0.0.1:14021"], "nats_monitor": []},
    },
}


def region_toml(path: Path, region: str, ports: list[int]) -> Path:
    data = {
        "region": region,
        "regions": ["us-east", "eu-west", "ap-south"],
        "nats": {"servers": [f"nats://127.0.0.1:{ports[0]}"]},
        "signing": {"mode": "off"},
        "bridge": {"admin_listen": f"0.0.0.0:{ports[1]}"},
        "broadcaster": {"admin_listen": f"127.0.0.1:{ports[2]}"},
        "replayer": {"admin_listen": f"[::1]:{ports[3]}"},
    }
    return write_region_toml(path, data)


def test_state_file_gives_regions_admin_urls_and_nats() -> None:
    deployment = from_state(STATE)
    assert deployment.regions == ("us-east", "eu-west")
    assert deployment.admin == (
        AdminEndpoint("us-east", "bridge", "http://127.0.0.1:9180"),
        AdminEndpoint("us-east", "broadcaster", "http://127.0.0.1:9181"),
        AdminEndpoint("us-east", "replayer", "http://127.0.0.1:9182"),
    )
    assert deployment.nats["eu-west"].servers == ["nats://127.0.0.1:14021"]


@pytest.mark.parametrize(
    "state",
    [
        [],
        {"regions": []},
        {"regions": {"us-east": "x"}},
        {"regions": {"us-east": {"admin": {"bridge": "ftp://x"}}}},
        {"regions": {"us-east": {"nats": ["http://not-nats"]}}},
    ],
)
def test_bad_state_files_are_one_line_errors(state: object) -> None:
    with pytest.raises(DeploymentError) as info:
        from_state(state)
    assert "\n" not in str(info.value)


def test_region_files_give_admin_urls_from_admin_listen(tmp_path: Path) -> None:
    settings = load_settings(region_toml(tmp_path / "a.toml", "eu-west", [1, 2, 3, 4]))
    deployment = from_settings([settings])
    assert deployment.regions == ("us-east", "eu-west", "ap-south")
    assert [e.url for e in deployment.admin] == [
        "http://127.0.0.1:2",  # a wildcard listen is scraped on loopback
        "http://127.0.0.1:3",
        "http://[::1]:4",
    ]
    assert admin_url("[::]:9") == "http://[::1]:9"


def test_default_source_is_the_state_file_in_dot_xregion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DeploymentError, match=r"\.xregion/state\.json does not exist"):
        load_deployment(None, [])
    (tmp_path / ".xregion").mkdir()
    (tmp_path / ".xregion" / "state.json").write_text(json.dumps(STATE))
    assert load_deployment(None, []).regions == ("us-east", "eu-west")


def test_join_merges_ping_info_stats_by_instance_id() -> None:
    meta = {"region": "eu-west", "admin_url": "http://127.0.0.1:9"}
    pings = [
        {"type": "io.nats.micro.v1.ping_response", "id": "A", "name": "xr-replayer",
         "version": "0.1.0", "metadata": meta},
        {"id": "B", "name": "xr-bridge", "version": "0.1.0", "metadata": {"region": "us-east"}},
        {"id": "C", "name": "someone-else", "version": "1.0.0", "metadata": {}},
    ]  # fmt: skip
    infos = [{"id": "A", "name": "xr-replayer", "version": "0.1.0", "description": "replayer",
              "endpoints": [], "metadata": meta}]  # fmt: skip
    started = "2026-08-01T10:00:00.123Z"
    stats = [{"id": "A", "name": "xr-replayer", "version": "0.1.0", "started": started,
              "endpoints": [], "metadata": meta}]  # fmt: skip
    instances = join(pings, infos, stats)
    assert [(i.region, i.service, i.id) for i in instances] == [
        ("eu-west", "replayer", "A"),
        ("us-east", "bridge", "B"),
    ]
    replayer = instances[0]
    assert replayer.admin_url == "http://127.0.0.1:9"
    assert replayer.description == "replayer"
    now = datetime(2026, 8, 1, 10, 1, 0, 123000, tzinfo=UTC)
    rows = status_rows(instances, {"A": "ok"}, now)
    assert (rows[0].uptime_s, rows[0].health) == (60.0, "ok")
    assert (rows[1].uptime_s, rows[1].health, rows[1].admin_url) == (None, "-", None)


def test_parse_started_accepts_go_nanoseconds_and_rejects_junk() -> None:
    assert parse_started("2026-08-01T10:00:00.123456789Z") == datetime(
        2026, 8, 1, 10, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_started("yesterday") is None
    assert parse_started(None) is None


def run_cli(*argv: str) -> int:
    """`xregion ARGV` in this process; the logging it configures is undone afterwards, so
    later tests (`capture_logs`) see structlog's defaults."""
    try:
        return cli.main(list(argv))
    finally:
        structlog.reset_defaults()


@pytest.mark.parametrize("command", ["top", "status"])
def test_missing_sources_are_usage_errors(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(command) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(command, "--state-file", str(tmp_path / "nope.json")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"xregion {command}: cannot read state file")
    assert err.count("\n") == 1
    with pytest.raises(SystemExit) as info:  # argparse: mutually exclusive sources
        run_cli(command, "--state-file", "a.json", "--config", "b.toml")
    assert info.value.code == 2


def test_top_without_admin_urls_in_the_state_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"regions": {"us-east": {"nats": ["nats://127.0.0.1:1"]}}}))
    assert run_cli("top", "--once", "--state-file", str(state)) == 2
    assert "no admin endpoints" in capsys.readouterr().err


def test_top_json_needs_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = region_toml(tmp_path / "us-east.toml", "us-east", free_ports(4))
    assert run_cli("top", "--output", "json", "--config", str(config)) == 2
    assert "--output json needs --once" in capsys.readouterr().err


def test_top_once_json_with_nothing_answering_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = region_toml(tmp_path / "us-east.toml", "us-east", free_ports(4))
    args = ("top", "--once", "--output", "json", "--interval", "0.1", "--config", str(config))
    assert run_cli(*args) == 1
    doc = json.loads(capsys.readouterr().out)
    assert (doc["endpoints_up"], doc["endpoints"]) == (0, 3)
    assert [row["up"] for row in doc["health"]] == [False, False, False]
    assert {path["state"] for path in doc["paths"]} == {None}


def test_top_once_with_nothing_answering_shows_down_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = region_toml(tmp_path / "us-east.toml", "us-east", free_ports(4))
    assert run_cli("top", "--once", "--interval", "0.1", "--config", str(config)) == 1
    out = capsys.readouterr().out
    assert "Replication paths" in out
    assert "Health" in out
    assert out.count("down") >= 3


def test_status_without_reachable_nats_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = region_toml(tmp_path / "us-east.toml", "us-east", free_ports(4))
    assert run_cli("status", "--config", str(config), "--timeout", "0.2") == 1
    last = capsys.readouterr().err.splitlines()[-1]  # before it: the client's own error log
    assert last.startswith("xregion status: cannot connect to NATS: us-east:")
