"""One chaos scenario from load to verdict: `ChaosRun`.

A scenario starts the load (`start_load`), injects its faults, and calls `finish()`: the
load stops, the deployment is given until `CONVERGE_TIMEOUT_S` to settle (nothing owed
anywhere, no outbox entry, every region's state the same), the records and states are
collected, the deployment is stopped (and checked for leaked processes), the audit runs and
`chaos/results/<name>.json` is written. The test then asserts the audit found nothing.

`recovered(since)` measures catch-up: the time until every `apply` write accepted before
`since` (creates and patches are never superseded) is applied in every region.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.chaos_audit import Audit, audit
from tests.harness.chaos_load import Load, Write
from tests.harness.chaos_stack import BIG_REGION, REGIONS, SERVERS, ChaosDeployment
from tests.harness.wait import wait_until

__all__ = ["CONVERGE_TIMEOUT_S", "RESULTS_DIR", "ChaosRun"]

RESULTS_DIR = Path(__file__).resolve().parents[2] / "chaos" / "results"
CONVERGE_TIMEOUT_S = 60.0
RECOVER_TIMEOUT_S = 60.0


@dataclass
class ChaosRun:
    name: str
    title: str
    deployment: ChaosDeployment
    repeats_allowed: bool = False
    local_only_allowed: bool = False
    expected_dead_letters: dict[str, int] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    load: Load | None = None
    problems: list[str] = field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    _leftovers: dict[str, dict[str, int]] = field(default_factory=dict)
    _record: dict[str, Any] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    async def start_load(self) -> Load:
        self.load = Load({r: s.bridge_url for r, s in self.deployment.stacks.items()})
        await self.load.start()
        return self.load

    async def load_for(self, seconds: float, *, writes: int = 1) -> None:
        """Let the load run `seconds` and until at least `writes` more were accepted."""
        load = self.load
        assert load is not None
        since = time.time()
        target = load.accepted_since(0) + writes
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        await wait_until(
            lambda: loop.time() >= until and load.accepted_since(0) >= target,
            seconds + 120, interval=0.1,
            message=f"{seconds:g} s of load and {writes} accepted writes since {since:.0f}",
        )  # fmt: skip

    async def recovered(self, since: float) -> float | None:
        """Seconds from `since` until every `apply` write accepted before it is applied
        everywhere; None (and a problem for the audit) if that does not happen in time."""
        assert self.load is not None
        wanted = {w.event_id for w in self.load.writes if w.accepted and w.rule == "apply"}
        wanted = {
            w.event_id for w in self.load.writes if w.event_id in wanted and w.answered_at <= since
        }

        async def caught_up() -> bool:
            for stack in self.deployment.stacks.values():
                recs = await stack.downstream.records(self.deployment.http)
                done = {r["event_id"] for r in recs if r["effect"] == "applied"}
                if not wanted <= done:
                    return False
            return True

        try:
            await wait_until(
                caught_up, RECOVER_TIMEOUT_S, interval=0.25,
                message=f"{len(wanted)} apply writes accepted before the fault ended applied "
                "in every region",
            )  # fmt: skip
        except TimeoutError as exc:
            self.problems.append(str(exc))
            return None
        return round(time.time() - since, 2)

    async def _settled(self) -> bool:
        dep = self.deployment
        leftovers = await dep.leftovers()
        self._leftovers = leftovers
        if any(v["broadcast_owed"] or v["replay_owed"] for v in leftovers.values()):
            return False
        if any((await dep.outbox_depths()).values()):
            return False
        if self.local_only_allowed:
            return True  # states differ by the unreplicated writes; the audit leaves them out
        states = [await s.downstream.state(dep.http) for s in dep.stacks.values()]
        return all(s == states[0] for s in states[1:])

    async def finish(self) -> Audit:
        """Stop the load, let it settle, audit, stop everything, write the record."""
        assert self.load is not None
        writes = await self.load.stop()
        dep = self.deployment
        stopped = time.time()
        settle_error = ""
        try:
            await wait_until(
                self._settled, CONVERGE_TIMEOUT_S, interval=0.3,
                ignore=(Exception,), message="every region settled on the same state",
            )  # fmt: skip
        except TimeoutError as exc:
            settle_error = str(exc)
        settled_s = time.time() - stopped
        records = {r: await s.downstream.records(dep.http) for r, s in dep.stacks.items()}
        self.records = records
        states = {r: await s.downstream.state(dep.http) for r, s in dep.stacks.items()}
        metrics = await self._metrics()
        # What the settled check saw: canaries keep crossing the consumers after it.
        leftovers = self._leftovers or await dep.leftovers()
        outbox = await dep.outbox_depths()
        leaked = await dep.stop()
        result = audit(
            writes, records, states,
            repeats_allowed=self.repeats_allowed, local_only_allowed=self.local_only_allowed,
        )  # fmt: skip
        for problem in [*self.problems, settle_error]:
            if problem:
                result.note(problem)
        self._check_leftovers(result, leftovers, outbox, leaked)
        self._write(result, writes, settled_s, metrics, leftovers, outbox, leaked)
        return result

    async def _metrics(self) -> dict[str, Any]:
        dep = self.deployment
        found: dict[str, Any] = {}
        for region in REGIONS:
            found[region] = {
                "replayer_outcomes": await dep.replayer_outcomes(region),
                "conflicts_out_of_order": await dep.conflicts(region),
            }
        return found

    def _check_leftovers(
        self,
        result: Audit,
        leftovers: dict[str, dict[str, int]],
        outbox: dict[str, float],
        leaked: list[int],
    ) -> None:
        for region, left in leftovers.items():
            if left["broadcast_owed"] or left["replay_owed"]:
                result.note(f"{region}: events still owed {left}")
            expected = self.expected_dead_letters.get(region, 0)
            if left["dead_letters"] != expected:
                result.note(f"{region}: {left['dead_letters']} dead letters, expected {expected}")
        for region, depth in outbox.items():
            if depth:
                result.note(f"{region}: {depth:g} events left in the bridge's outbox")
        if leaked:
            result.note(f"processes still alive after stop: {leaked}")

    def _write(
        self,
        result: Audit,
        writes: list[Write],
        settled_s: float,
        metrics: dict[str, Any],
        leftovers: dict[str, dict[str, int]],
        outbox: dict[str, float],
        leaked: list[int],
    ) -> None:
        record = {
            "scenario": self.name,
            "title": self.title,
            "topology": {
                "regions": {r: SERVERS[r] for r in REGIONS},
                "replicated_region": BIG_REGION,
                "signing": "ed25519",
            },
            "load_s": round(max((w.sent_at for w in writes), default=self.started_at)
                            - min((w.sent_at for w in writes), default=self.started_at), 1),
            "writes_sent": len(writes),
            **result.summary(),
            "settled_after_load_s": round(settled_s, 2),
            "facts": self.facts,
            "replayers": metrics,
            "left": {
                "consumers_and_dead_letters": leftovers,
                "outbox_depth": outbox,
                "leaked_pids": leaked,
            },
            "passed": not result.problems,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
        self._record = record
        self.rewrite()

    def rewrite(self) -> None:
        """(Re)write `chaos/results/<name>.json`, with the facts as they are now."""
        self._record["facts"] = self.facts
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / f"{self.name}.json").write_text(json.dumps(self._record, indent=2) + "\n")
