"""The bridge's disk fills while NATS is down; one region's clock runs 5 s ahead."""

from __future__ import annotations

import contextlib
import errno
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.conftest import MakeDeployment
from tests.harness.chaos_run import ChaosRun
from tests.harness.tools import in_ci, require_tool

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(420)]

REGION = "ap-south"  # one nats-server: stopping it stops the region's NATS
WARMUP_S = 4.0
SPOOL_S = 3.0
FULL_S = 4.0
AFTER_S = 3.0
SKEW = "+5s"
SKEW_MS = 5000
SKEW_LOAD_S = 10.0
DISK_BYTES = 4 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of its own for the bridge's data dir, so it can be filled for real."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
        check=False, capture_output=True, text=True,
    )  # fmt: skip
    if mounted.returncode != 0:
        message = f"a tmpfs cannot be mounted here (needs root): {mounted.stderr.strip()}"
        if in_ci():
            pytest.fail(f"{message}; CI runs every scenario", pytrace=False)
        pytest.skip(message)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def fill(disk: Path) -> Path:
    """Write zeros until the filesystem is full; the filler file."""
    filler = disk / "filler"
    with filler.open("wb") as out, contextlib.suppress(OSError):
        while True:
            try:
                out.write(b"\0" * 65536)
                out.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


async def test_full_outbox_disk_refuses_writes_with_503(
    make_deployment: MakeDeployment, small_disk: Path
) -> None:
    deployment = await make_deployment(data_dirs={REGION: small_disk})
    servers = [s.name for s in deployment.cluster.servers if s.cluster == REGION]
    run = ChaosRun(
        "outbox_disk_full",
        f"{REGION}'s NATS down and its bridge's outbox disk full: writes refused with 503",
        deployment,
        local_only_allowed=True,  # a refused write was applied by the service there
    )
    load = await run.start_load()
    await run.load_for(WARMUP_S, writes=30)
    for name in servers:
        await deployment.cluster.stop_server(name)
    await run.load_for(SPOOL_S, writes=0)
    filler = fill(small_disk)
    full_at = time.time()
    await run.load_for(FULL_S, writes=0)
    refused = [
        w for w in load.writes if w.region == REGION and w.sent_at >= full_at and not w.accepted
    ]
    filler.unlink()
    for name in servers:
        await deployment.cluster.start_server(name)
    await deployment.cluster.wait_ready(90)
    run.facts["answers_while_full"] = {
        str(w.status): sum(1 for x in refused if x.status == w.status) for w in refused
    }
    run.facts["refusal_example"] = refused[0].error if refused else ""
    run.facts["time_to_recover_s"] = await run.recovered(time.time())
    await run.load_for(AFTER_S)
    result = await run.finish()
    assert not result.problems, "\n".join(result.problems)
    assert refused, "no write was refused while the outbox disk was full"
    assert {w.status for w in refused} == {503}, run.facts["answers_while_full"]


async def test_clock_skew_keeps_hlc_order(make_deployment: MakeDeployment) -> None:
    require_tool("faketime", "Debian's package faketime: make dev-tools")
    deployment = await make_deployment(skew={REGION: SKEW})
    run = ChaosRun(
        "clock_skew",
        f"{REGION}'s xregion processes run with their clock {SKEW} ahead (libfaketime)",
        deployment,
    )
    await run.start_load()
    await run.load_for(SKEW_LOAD_S, writes=60)
    result = await run.finish()
    local = [
        int(r["hlc"][:15]) - r["at"] * 1000
        for r in run.records[REGION]
        if r["origin"] is None and r["hlc"]
    ]
    run.facts["median_hlc_ahead_ms"] = statistics.median(local) if local else None
    run.facts["conflicts_and_stale"] = {
        region: {
            "stale_calls": sum(1 for r in recs if r["effect"] == "stale"),
        }
        for region, recs in run.records.items()
    }
    run.rewrite()
    assert not result.problems, "\n".join(result.problems)
    assert local, f"no local write recorded in {REGION}"
    assert statistics.median(local) > SKEW_MS * 0.8, "the skew did not take"
