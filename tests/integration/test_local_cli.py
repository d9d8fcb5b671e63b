"""`xregion demo` and `xregion up` as real processes: whole region stacks boot, replicate,
survive a crashed process, and stop with nothing left behind."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXE = shutil.which("xregion", path=str(Path(sys.executable).parent))
REGIONS = ("us-east", "eu-west", "ap-south")


def processes_using(workdir: Path) -> list[int]:
    """PIDs of live processes whose command line mentions `workdir`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(workdir).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # the process went away while we looked
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed at teardown if the test left them running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)  # reaps it and closes its pipes


@pytest.mark.timeout(150)
def test_demo_replicates_traffic_converges_and_leaves_nothing(tmp_path: Path) -> None:
    assert EXE is not None
    result = subprocess.run(
        [EXE, "demo", "--base-port", "0", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=140, check=False,
        env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stderr
    assert "NATS healthy: 3 regions provisioned, 3 servers, every gateway up" in out
    assert "12 service processes ready" in out
    assert "converged: every region holds the same 270 records" in out
    assert "60 keys written concurrently from two regions" in out
    for region in REGIONS:
        assert f"│ {region}" in out
    for origin in REGIONS:
        for target in REGIONS:
            if origin != target:
                assert f"{origin} → {target}" in out
    assert processes_using(tmp_path) == []


async def run_cli(*args: str) -> tuple[int, str]:
    """Run `xregion ARGS` to completion: exit code, stdout and stderr together."""
    assert EXE is not None
    proc = await asyncio.create_subprocess_exec(
        EXE, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "COLUMNS": "160"},
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode()


async def _configs(service: str) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        reply = await client.get(f"{service}/configs")
        return dict(reply.json())


@pytest.mark.timeout(180)
async def test_up_runs_every_stack_restarts_a_crash_and_stops_everything(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    assert EXE is not None
    state_file = tmp_path / "state.json"
    workdir = tmp_path / "work"
    # Popen only forks; the waiting below is asynchronous.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [EXE, "up", "--regions", ",".join(REGIONS), "--base-port", "0",
         "--workdir", str(workdir), "--state-file", str(state_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    spawned.append(proc)
    await wait_until(lambda: state_file.exists() or proc.poll() is not None, 120,
                     message="xregion up wrote its state file")  # fmt: skip
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    state = json.loads(state_file.read_text())
    assert set(state["regions"]) == set(REGIONS)
    assert len(state["pids"]) == 12
    assert all(alive(pid) for pid in state["pids"].values())
    stacks = state["regions"]

    nc = await nats.connect(stacks["ap-south"]["nats"], connect_timeout=2)
    try:
        info = await nc.jetstream().stream_info("XR_EVENTS_AP_SOUTH")
        assert info.cluster is not None
        assert info.cluster.name == "ap-south"
    finally:
        await nc.close()

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        reply = await client.put(
            f"{stacks['us-east']['bridge']}/configs/billing/limit", json={"max": 5}
        )
    assert reply.status_code == 201, reply.text
    event_id = reply.headers["Xr-Event-Id"]

    async def replicated(region: str) -> bool:
        configs = (await _configs(stacks[region]["service"]))["configs"]
        return [(c["value"], c["version"]["event_id"]) for c in configs] == [({"max": 5}, event_id)]

    for region in ("eu-west", "ap-south"):
        await wait_until(functools.partial(replicated, region), 30, message=f"write in {region}")

    # The operator's views of the deployment, from the state file `up` wrote.
    code, out = await run_cli("status", "--state-file", str(state_file))
    assert code == 0, out
    assert "xregion instances: 9 in 3 regions" in out
    code, out = await run_cli("top", "--once", "--state-file", str(state_file))
    assert code == 0, out
    assert "9/9 endpoints up" in out
    assert "us-east → eu-west" in out

    # A crashed replayer is restarted, and the state file names the new process.
    crashed = state["pids"]["eu-west-replayer"]
    os.kill(crashed, signal.SIGKILL)

    def restarted() -> int | None:
        pid = json.loads(state_file.read_text())["pids"]["eu-west-replayer"]
        return pid if pid not in (None, crashed) and alive(pid) else None

    await wait_until(restarted, 30, message="eu-west replayer restarted")
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        reply = await client.put(
            f"{stacks['ap-south']['bridge']}/configs/billing/limit", json={"max": 7}
        )
    assert reply.status_code == 200, reply.text

    async def updated() -> bool:
        configs = (await _configs(stacks["eu-west"]["service"]))["configs"]
        return [c["value"] for c in configs] == [{"max": 7}]

    await wait_until(updated, 30, message="the update applied by the restarted replayer")

    proc.send_signal(signal.SIGTERM)
    await wait_until(lambda: proc.poll() is not None, 90, message="xregion up exited")
    assert proc.returncode == 0
    assert processes_using(workdir) == []
