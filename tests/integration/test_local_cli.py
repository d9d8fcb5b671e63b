"""`xregion demo` and `xregion up` as real processes: they boot, report, and stop cleanly."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration
EXE = shutil.which("xregion", path=str(Path(sys.executable).parent))


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


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed at teardown if the test left them running."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)  # reaps it and closes its pipes


def test_demo_boots_reports_and_leaves_nothing(tmp_path: Path) -> None:
    assert EXE is not None
    result = subprocess.run(
        [EXE, "demo", "--base-port", "0", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=110, check=False,
        env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "healthy: 3 regions provisioned, 3 servers, every gateway up" in result.stderr
    for server in ("us-east-1", "eu-west-1", "ap-south-1"):
        assert server in result.stderr
    assert processes_using(tmp_path) == []


async def test_up_serves_until_sigterm_then_stops_everything(
    tmp_path: Path, spawned: list[subprocess.Popen[str]]
) -> None:
    assert EXE is not None
    state_file = tmp_path / "state.json"
    workdir = tmp_path / "work"
    # Popen only forks; the waiting below is asynchronous.
    proc = subprocess.Popen(  # noqa: ASYNC220
        [EXE, "up", "--regions", "us-east,eu-west,ap-south", "--base-port", "0",
         "--workdir", str(workdir), "--state-file", str(state_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    spawned.append(proc)
    await wait_until(lambda: state_file.exists() or proc.poll() is not None, 90,
                     message="xregion up wrote its state file")  # fmt: skip
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    state = json.loads(state_file.read_text())
    assert set(state["regions"]) == {"us-east", "eu-west", "ap-south"}

    nc = await nats.connect(state["regions"]["ap-south"]["nats"], connect_timeout=2)
    try:
        info = await nc.jetstream().stream_info("XR_EVENTS_AP_SOUTH")
        assert info.cluster is not None
        assert info.cluster.name == "ap-south"
    finally:
        await nc.close()
    assert processes_using(workdir), "the servers run while `up` runs"

    proc.send_signal(signal.SIGTERM)
    await wait_until(lambda: proc.poll() is not None, 60, message="xregion up exited")
    assert proc.returncode == 0
    assert processes_using(workdir) == []
