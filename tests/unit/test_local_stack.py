"""The region stacks of `xregion up`: port plan, region files, the checked-in examples."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

from services.xregion.local.stack import (
    StackPorts,
    example_region_files,
    plan_stacks,
    write_stack_files,
)
from services.xregion.local.up import hold_workdir
from services.xregion.natsconf import build_topology, server_specs
from shared.settings import load_settings
from shared.signing import load_signer, load_verifier

REGIONS = ["us-east", "eu-west", "ap-south"]
REPO = Path(__file__).resolve().parents[2]


def test_the_checked_in_region_files_are_what_up_writes() -> None:
    for region, text in example_region_files(REGIONS).items():
        path = REPO / "deploy" / "regions" / f"{region}.toml"
        assert path.read_text() == text, (
            f"{path} is stale; regenerate with: .venv/bin/python -c 'from pathlib import Path; "
            "from services.xregion.local.stack import example_region_files as f; "
            '[Path(f"deploy/regions/{r}.toml").write_text(t) for r, t in f().items()]\''
        )


def test_stack_ports_never_collide_with_the_nats_servers() -> None:
    topology = build_topology(REGIONS, servers_per_region=3, base_port=14000)
    nats_ports = {
        port
        for s in server_specs(topology)
        for port in (s.client_port, s.cluster_port, s.gateway_port, s.monitor_port)
    }
    none: dict[str, list[str]] = {r: [] for r in REGIONS}
    stacks = plan_stacks(REGIONS, base_port=14000, workdir=Path("w"), nats=none, nats_monitor=none)
    stack_ports = [port for s in stacks for port in vars_of(s.ports)]
    assert len(set(stack_ports)) == len(stack_ports) == 15
    assert not nats_ports & set(stack_ports)
    assert stacks[0].bridge_url == "http://127.0.0.1:14410"


def vars_of(ports: StackPorts) -> list[int]:
    return [getattr(ports, field.name) for field in dataclasses.fields(ports)]


def test_written_region_files_load_and_their_keys_sign_and_verify(tmp_path: Path) -> None:
    stacks = plan_stacks(REGIONS, base_port=0, workdir=tmp_path,
                         nats={r: [f"nats://127.0.0.1:{4222 + i}"] for i, r in enumerate(REGIONS)},
                         nats_monitor={r: [] for r in REGIONS})  # fmt: skip
    write_stack_files(stacks, tmp_path)
    first_keys = (tmp_path / "keys" / "trusted.toml").read_text()
    write_stack_files(stacks, tmp_path)  # a second `up` keeps the keys
    assert (tmp_path / "keys" / "trusted.toml").read_text() == first_keys
    for stack in stacks:
        settings = load_settings(stack.config)
        assert settings.region == stack.region
        assert settings.bridge.listen == f"127.0.0.1:{stack.ports.bridge}"
        assert settings.services["configs"].upstream == stack.service_url
        signer, verifier = load_signer(settings.signing), load_verifier(settings.signing)
        assert signer is not None
        assert verifier is not None
        assert signer.key_id == f"{stack.region}-1"


def test_a_workdir_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    exe = shutil.which("xregion", path=str(Path(sys.executable).parent))
    assert exe is not None
    with hold_workdir(tmp_path):
        result = subprocess.run(
            [exe, "demo", "--base-port", "0", "--workdir", str(tmp_path)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2
    assert f"is in use by another `xregion up` or `demo` (pid {os.getpid()})" in result.stderr
    assert not (tmp_path / "data").exists()
