"""The dashboard and the alert rules against a live deployment: `xregion up --prometheus`
scrapes every process with the shipped job, Prometheus evaluates every query of the Grafana
dashboard and of the alert rules, and real faults put their alerts in motion.

Prometheus is Debian's `prometheus` (installed by `.ci/run` and `make dev-tools`); without it
the tests skip, and under CI they fail (`tests/harness/tools.py`).

The shipped rules hold for minutes (`for: 5m`, `1h`) before firing, longer than a test may
run; their `for` and their annotations are covered by the promtool unit tests
(tests/deploy). Here each alert must turn *active* (pending, then firing) on the real fault
and clear after the fix: that proves its expression matches the labels and values the live
processes export.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import pytest_asyncio
import yaml

from tests.harness.fixtures import DEV_REGIONS
from tests.harness.tools import require_tool
from tests.harness.wait import wait_until
from tests.harness.xregion_procs import XREGION, clean_env, run_xregion

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(420),
    pytest.mark.asyncio(loop_scope="module"),
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "xregion.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
# Grafana's variables, as a dashboard user would set them: every region, a one-minute window.
_VARIABLES = {"$__rate_interval": "1m", "$region": ".*"}
_STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Live:
    state: dict[str, Any]
    url: str

    def stack(self, region: str) -> dict[str, Any]:
        return dict(self.state["regions"][region])

    def pid(self, process: str) -> int:
        state = json.loads(Path(self.state["state_file"]).read_text())
        return int(state["pids"][process])


@contextlib.contextmanager
def _up(workdir: Path, state_file: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (workdir.parent / "up.log").open("wb") as log:
        # Popen only forks; the test waits for the state file asynchronously.
        proc = subprocess.Popen(
            [str(XREGION), "up", "--prometheus", "--base-port", "0",
             "--workdir", str(workdir), "--state-file", str(state_file)],
            env=clean_env(), stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    require_tool("prometheus", "make dev-tools; .ci/run installs Debian's package")
    base = tmp_path_factory.mktemp("prometheus-live")
    state_file = base / "state.json"
    with _up(base / "work", state_file) as proc:
        await wait_until(lambda: state_file.exists() or proc.poll() is not None, 150,
                         message="xregion up --prometheus wrote its state file")  # fmt: skip
        assert proc.poll() is None, (base / "up.log").read_text()
        state = {**json.loads(state_file.read_text()), "state_file": str(state_file)}
        live = Live(state, state["prometheus"])
        await wait_until(lambda: _targets_up(live), 60, message="every target scraped and up")
        yield live


async def _get(live: Live, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        reply = await client.get(f"{live.url}{path}", params=params)
    body = reply.json()
    assert body["status"] == "success", (path, params, body)
    return body["data"]


async def _targets_up(live: Live) -> bool:
    targets = (await _get(live, "/api/v1/targets"))["activeTargets"]
    return len(targets) == 3 * len(DEV_REGIONS) and all(t["health"] == "up" for t in targets)


async def _query(live: Live, expr: str) -> list[dict[str, Any]]:
    for name, value in _VARIABLES.items():
        expr = expr.replace(name, value)
    return list((await _get(live, "/api/v1/query", query=expr))["result"])


def _panels() -> list[tuple[str, list[str]]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], [t["expr"] for t in p["targets"]])
        for p in dashboard["panels"]
        if p["type"] != "row"  # a row only groups the panels below it
    ]


def _alert_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


async def _active(live: Live, alert: str, **labels: str) -> bool:
    """Whether Prometheus holds `alert` pending or firing with these labels."""
    alerts = (await _get(live, "/api/v1/alerts"))["alerts"]
    return any(
        a["labels"]["alertname"] == alert
        and all(a["labels"].get(k) == v for k, v in labels.items())
        for a in alerts
    )


async def _write(live: Live, region: str, count: int, prefix: str) -> None:
    bridge = live.stack(region)["bridge"]
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        for i in range(count):
            reply = await client.put(f"{bridge}/configs/{prefix}/k{i}", json={"v": i})
            assert reply.is_success, reply.text


async def test_every_dashboard_and_alert_query_evaluates(live: Live) -> None:
    rules = (await _get(live, "/api/v1/rules"))["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} == set(_alert_exprs())
    assert all(r["health"] != "err" for g in rules for r in g["rules"]), rules
    for _, exprs in _panels():
        for expr in exprs:
            await _query(live, expr)  # raises on an invalid query
    for expr in _alert_exprs().values():
        await _query(live, expr)
    regions = await _get(live, "/api/v1/label/region/values", **{"match[]": "xr_build_info"})
    assert sorted(regions) == sorted(DEV_REGIONS)  # the dashboard's region variable


async def test_every_panel_shows_series_under_traffic(live: Live) -> None:
    for region in DEV_REGIONS:
        await _write(live, region, 20, f"panels-{region}")

    async def empty_panels() -> list[str]:
        await _write(live, "us-east", 2, "panels-steady")
        return [
            title
            for title, exprs in _panels()
            if not any([await _query(live, expr) for expr in exprs])
        ]

    async def all_filled() -> bool:
        return not await empty_panels()

    with contextlib.suppress(TimeoutError):
        await wait_until(all_filled, 60, interval=2.0)
    assert await empty_panels() == []


async def test_faults_activate_their_alerts_and_the_fixes_clear_them(live: Live) -> None:
    """Three faults at once (the canary needs a minute to go stale): a paused path, a
    dead-lettered event, and a broadcaster that stops sending canaries."""
    origin_config = live.stack("ap-south")["config"]
    code, out, err = await run_xregion("pause", "--config", origin_config, "--target", "eu-west")
    assert code == 0, out + err
    await _poison(live, target="eu-west", origin="us-east")
    frozen = live.pid("us-east-broadcaster")
    os.kill(frozen, signal.SIGSTOP)
    try:
        await wait_until(
            lambda: _active(live, "XregionBroadcasterPausedTooLong", region="ap-south",
                            target="eu-west"), 60, interval=1.0, message="paused alert",
        )  # fmt: skip
        await wait_until(
            lambda: _active(live, "XregionDeadLettersGrowing", region="eu-west"),
            60, interval=1.0, message="dead-letter alert",
        )  # fmt: skip
        await wait_until(
            lambda: _active(live, "XregionCanaryStale", region="eu-west", origin="us-east"),
            150, interval=2.0, message="stale-canary alert",
        )  # fmt: skip
    finally:
        os.kill(frozen, signal.SIGCONT)

    code, out, err = await run_xregion("resume", "--config", origin_config, "--target", "eu-west")
    assert code == 0, out + err
    target_config = live.stack("eu-west")["config"]
    code, out, err = await run_xregion("dlq", "purge", "--config", target_config, "--yes")
    assert code == 0, out + err
    for alert, labels in (
        ("XregionBroadcasterPausedTooLong", {"region": "ap-south", "target": "eu-west"}),
        ("XregionDeadLettersGrowing", {"region": "eu-west"}),
        ("XregionCanaryStale", {"region": "eu-west", "origin": "us-east"}),
    ):

        async def cleared(alert: str = alert, labels: dict[str, str] = labels) -> bool:
            return not await _active(live, alert, **labels)

        await wait_until(cleared, 90, interval=1.0, message=f"{alert} cleared")


async def _poison(live: Live, *, target: str, origin: str) -> None:
    """An event with no envelope headers, straight onto the target's replay stream: the
    replayer dead-letters it (malformed) without calling the service."""
    nc = await nats.connect(live.stack(target)["nats"], connect_timeout=2)
    try:
        ack = await nc.jetstream().publish(f"xr.replay.{target}.{origin}.configs", b"poison")
        assert ack.seq > 0
    finally:
        await nc.close()
