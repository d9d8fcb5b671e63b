"""The `xregion` command line, run as the installed console script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from services.xregion.cli.bench import bench_scripts
from services.xregion.cli.common import CommandError

COMMANDS = [
    "bridge", "broadcaster", "replayer", "provision", "nats-conf", "up", "demo",
    "top", "status", "dlq", "pause", "resume", "trace", "bench", "demo-service",
]  # fmt: skip


def xregion(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("xregion", path=str(Path(sys.executable).parent))
    assert exe is not None, "the xregion console script is installed next to python"
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_help_lists_every_command() -> None:
    result = xregion("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = xregion(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: xregion" in result.stdout


def test_invalid_region_file_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "region.toml"
    config.write_text('region = "us-east"\nregions = ["us-east"]\n[signing]\nmode = "off"\n'
                      "[replayer]\nconcurrency = 0\n")  # fmt: skip
    result = xregion("replayer", "--config", str(config), "--check-config")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "replayer.concurrency" in lines[0]
    assert "Traceback" not in result.stderr


def test_check_config_prints_effective_config_redacted(tmp_path: Path) -> None:
    config = tmp_path / "region.toml"
    config.write_text(
        'region = "eu-west"\nregions = ["us-east", "eu-west"]\n[signing]\nmode = "off"\n'
        '[nats]\nservers = ["nats://127.0.0.1:4222"]\npassword = "hunter2"\n'
    )
    env = {"XR_BRIDGE__LISTEN": "127.0.0.1:18080", "PATH": "/usr/bin:/bin"}
    result = xregion("bridge", "--config", str(config), "--check-config", env=env)
    assert result.returncode == 0, result.stderr
    effective = json.loads(result.stdout)
    assert effective["region"] == "eu-west"
    assert effective["bridge"]["listen"] == "127.0.0.1:18080"
    assert effective["nats"]["password"] == "***"
    assert "hunter2" not in result.stdout
    assert "signing is off" in result.stderr


def test_bench_runs_the_named_script_with_its_arguments() -> None:
    result = xregion("bench", "bridge", "--help")  # the script's own --help, not ours
    assert result.returncode == 0, result.stderr
    assert "usage: bench_bridge.py" in result.stdout
    assert "--rounds" in result.stdout


def test_bench_script_arguments_need_one_name() -> None:
    result = xregion("bench", "all", "--rounds", "3")
    assert result.returncode == 2
    assert result.stderr.strip() == "xregion bench: script arguments need one benchmark NAME"


def test_bench_without_a_checkout_says_where_the_scripts_live(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "bench_bridge.py").write_text("")
    assert bench_scripts(tmp_path, "bridge") == [tmp_path / "bench" / "bench_bridge.py"]
    with pytest.raises(CommandError, match=r"bench_broadcaster.py, .*bench_replayer.py not found"):
        bench_scripts(tmp_path, "all")
    with pytest.raises(CommandError, match="ship with the source, not the package"):
        bench_scripts(tmp_path / "elsewhere", "replayer")


def test_bench_names_every_script_in_the_checkout() -> None:
    root = Path(__file__).resolve().parents[2]
    on_disk = sorted(p.name for p in (root / "bench").glob("bench_*.py"))
    assert [p.name for p in bench_scripts(root, "all")] == on_disk


def test_trace_refuses_what_is_not_an_event_id(tmp_path: Path) -> None:
    config = tmp_path / "region.toml"
    config.write_text(
        'region = "us-east"\nregions = ["us-east", "eu-west"]\n'
        f'data_dir = "{tmp_path}"\n[signing]\nmode = "off"\n'
    )
    result = xregion("trace", "12345", "--config", str(config))
    assert result.returncode == 2
    refusal = "xregion trace: '12345' is not an event id (a lower-case UUIDv7)"
    assert result.stderr.strip() == refusal
    result = xregion("trace", "--help")
    assert result.returncode == 0
    assert "EVENT_ID" in result.stdout


def _region_file(tmp_path: Path) -> Path:
    config = tmp_path / "region.toml"
    config.write_text(
        'region = "us-east"\nregions = ["us-east", "eu-west"]\n[signing]\nmode = "off"\n'
    )
    return config


def test_a_usage_error_of_the_library_exits_2_with_one_line(tmp_path: Path) -> None:
    # paths_into raises UsageError before anything connects: the CLI alone maps it.
    result = xregion("pause", "--config", str(_region_file(tmp_path)), "--target", "mars")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "xregion pause: --target 'mars' is not one of regions ['us-east', 'eu-west']"
    )
    assert "Traceback" not in result.stderr


def test_a_failure_of_the_library_exits_1_with_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "XR_NATS__SERVERS": '["nats://127.0.0.1:9"]',
           "XR_NATS__FIRST_CONNECT_TIMEOUT_S": "0.5"}  # fmt: skip
    result = xregion("pause", "--list", "--config", str(_region_file(tmp_path)), env=env)
    assert result.returncode == 1, result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("xregion pause: "), result.stderr
    assert "Traceback" not in result.stderr
