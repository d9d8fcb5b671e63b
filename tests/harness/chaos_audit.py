"""The one audit every chaos scenario ends with (README guarantees, docs/DESIGN.md §5a).

From the bridges' answers (`Write`s) and every region's downstream records and final state:

* every write a bridge answered 2xx is applied exactly once in every region (its own region's
  call is the bridge's, the others' the replayers'), or, for `replace`, superseded there by
  a newer version of its key;
* no event id is called twice in a region, except repeats after a replayer SIGKILL (allowed
  only when the scenario killed one): they carry the same `Idempotency-Key`, the downstream
  answers them without effect (`duplicate_prevented`) and they are counted;
* per key, the `replace` calls replayers make arrive in HLC order;
* every region's final state is the same, and each key's is its newest applied version;
* nothing is left: no event owed by a broadcast or replay consumer, no outbox entry, only
  the dead letters the scenario expects, no process alive after the deployment stopped.

`Audit.problems` lists every breach in one line each; a scenario passes when it is empty.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.harness.chaos_load import Write, refusals

__all__ = ["Audit", "audit"]

Record = dict[str, Any]
# Attempts without effect that the replayer retries by design: an injected fault, and a 404
# for a patch that overtook its create (docs/DESIGN.md §5 replayer). Counted apart.
_ATTEMPTS = ("fault", "not_found")
_MAX_LISTED = 8


@dataclass
class Audit:
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    applied: dict[str, int] = field(default_factory=dict)
    superseded: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    doubled: int = 0
    repeated_calls: int = 0
    duplicates_prevented: int = 0
    retried_attempts: int = 0
    stale_calls: int = 0
    order_violations: int = 0
    unreplicated: int = 0
    max_lag_s: float = 0.0
    converged: bool = False
    problems: list[str] = field(default_factory=list)

    def note(self, problem: str) -> None:
        if len(self.problems) < _MAX_LISTED * 4:
            self.problems.append(problem)

    def summary(self) -> dict[str, Any]:
        return {
            "writes_accepted": self.accepted,
            "writes_refused": self.refused,
            "applied_per_region": self.applied,
            "superseded_per_region": self.superseded,
            "lost": self.lost,
            "doubled": self.doubled,
            "repeated_calls": self.repeated_calls,
            "duplicate_calls_prevented": self.duplicates_prevented,
            "retried_attempts_without_effect": self.retried_attempts,
            "stale_calls": self.stale_calls,
            "order_violations": self.order_violations,
            "unreplicated_local_writes": self.unreplicated,
            "max_lag_s": round(self.max_lag_s, 3),
            "converged": self.converged,
            "problems": self.problems,
        }


def _version(record: Record) -> tuple[str, str]:
    return record["hlc"], record["event_id"]


def audit(
    writes: Sequence[Write],
    records: Mapping[str, Sequence[Record]],
    states: Mapping[str, Mapping[str, Any]],
    *,
    repeats_allowed: bool,
    local_only_allowed: bool = False,
) -> Audit:
    """Every check that needs only the answers, the records and the states.

    `local_only_allowed`: a write the service applied but whose bridge died before its event was
    stored (no 2xx was answered) is the documented gap (docs/DESIGN.md §5a): it is counted,
    and its keys are left out of the state comparison; otherwise it is a problem."""
    result = Audit(accepted=sum(1 for w in writes if w.accepted), refused=refusals(writes))
    by_event = {region: _by_event(recs) for region, recs in records.items()}
    result.retried_attempts = sum(
        1 for recs in records.values() for r in recs if r["effect"] in _ATTEMPTS
    )
    origin_hlc = _origin_hlcs(records)
    _check_writes(result, writes, by_event, states, origin_hlc)
    _check_calls(result, by_event, repeats_allowed)
    _check_order(result, records)
    gap = _unreplicated(writes, records, by_event)
    result.unreplicated = len(gap)
    if gap and not local_only_allowed:
        result.note(f"{len(gap)} writes applied where they were made and nowhere else: {gap}")
    _check_states(result, records, _without(states, gap.values()))
    return result


def _unreplicated(
    writes: Sequence[Write],
    records: Mapping[str, Sequence[Record]],
    by_event: Mapping[str, Mapping[str, list[Record]]],
) -> dict[str, str]:
    """Event id -> key of local calls that no 2xx answered and no other region ever saw."""
    accepted = {w.event_id for w in writes if w.accepted}
    found: dict[str, str] = {}
    for region, recs in records.items():
        for rec in recs:
            event_id = rec["event_id"]
            if rec["origin"] is not None or rec["effect"] != "applied" or event_id in accepted:
                continue
            if not any(event_id in events for r, events in by_event.items() if r != region):
                found[event_id] = rec["key"]
    return found


def _without(
    states: Mapping[str, Mapping[str, Any]], keys: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """`states` minus the resources `keys` name (`/configs/<k>`, `/items/<id>`)."""
    drop = {tuple(k.strip("/").split("/", 1)) for k in keys}
    return {
        region: {
            part: {k: v for k, v in state[part].items() if (part, k) not in drop}
            for part in ("configs", "items")
        }
        for region, state in states.items()
    }


def _by_event(recs: Sequence[Record]) -> dict[str, list[Record]]:
    found: dict[str, list[Record]] = defaultdict(list)
    for rec in recs:
        if rec["event_id"] and rec["effect"] not in _ATTEMPTS:
            found[rec["event_id"]].append(rec)
    return found


def _origin_hlcs(records: Mapping[str, Sequence[Record]]) -> dict[str, tuple[float, str]]:
    """Event id -> (arrival time, HLC) of the bridge's own call in the origin region."""
    found: dict[str, tuple[float, str]] = {}
    for recs in records.values():
        for rec in recs:
            if rec["origin"] is None and rec["event_id"] and rec["effect"] == "applied":
                found[rec["event_id"]] = (rec["at"], rec["hlc"])
    return found


def _check_writes(
    result: Audit,
    writes: Sequence[Write],
    by_event: Mapping[str, Mapping[str, list[Record]]],
    states: Mapping[str, Mapping[str, Any]],
    origin_hlc: Mapping[str, tuple[float, str]],
) -> None:
    for region in by_event:
        result.applied[region] = 0
        result.superseded[region] = 0
    for write in writes:
        if not write.accepted:
            continue
        if not write.event_id:
            result.note(f"{write.method} {write.path} via {write.region}: 2xx without Xr-Event-Id")
            result.lost += 1
            continue
        origin = origin_hlc.get(write.event_id)
        for region, events in by_event.items():
            calls = events.get(write.event_id, [])
            effective = [c for c in calls if c["effect"] == "applied"]
            if len(effective) == 1:
                result.applied[region] += 1
                if origin is not None and effective[0]["origin"] is not None:
                    result.max_lag_s = max(result.max_lag_s, effective[0]["at"] - origin[0])
            elif len(effective) > 1:
                result.doubled += 1
                result.note(f"{write.event_id} took effect {len(effective)} times in {region}")
            elif write.rule == "replace" and _superseded(write, origin, states[region]):
                result.superseded[region] += 1
            else:
                result.lost += 1
                seen = ",".join(c["effect"] for c in calls) or "never called"
                result.note(
                    f"{write.method} {write.path} {write.event_id} (via {write.region}) "
                    f"not applied in {region}: {seen}"
                )


def _superseded(write: Write, origin: tuple[float, str] | None, state: Mapping[str, Any]) -> bool:
    """Its key's final version in that region is newer than the write."""
    if origin is None:
        return False
    held = state["configs"].get(write.path.removeprefix("/configs/"))
    return held is not None and (held["hlc"], held["event_id"]) > (origin[1], write.event_id)


def _check_calls(
    result: Audit, by_event: Mapping[str, Mapping[str, list[Record]]], repeats_allowed: bool
) -> None:
    for region, events in by_event.items():
        for event_id, calls in events.items():
            result.stale_calls += sum(1 for c in calls if c["effect"] == "stale")
            extra = len(calls) - 1
            if extra <= 0:
                continue
            prevented = sum(1 for c in calls if c["effect"] == "duplicate_prevented")
            result.repeated_calls += extra
            result.duplicates_prevented += prevented
            if not repeats_allowed:
                result.note(f"{event_id} called {len(calls)} times in {region}")
            elif any(c["idempotency_key"] != event_id for c in calls if c["origin"]):
                result.note(f"{event_id} repeated in {region} without its Idempotency-Key")


def _check_order(result: Audit, records: Mapping[str, Sequence[Record]]) -> None:
    for region, recs in records.items():
        last: dict[str, tuple[str, str]] = {}
        for rec in recs:
            replayed_replace = rec["origin"] is not None and rec["method"] in ("PUT", "DELETE")
            if not replayed_replace or rec["effect"] in ("fault", "duplicate_prevented"):
                continue
            version = _version(rec)
            before = last.get(rec["path"])
            if before is not None and version <= before:
                result.order_violations += 1
                result.note(f"{rec['path']} in {region}: {version} called after {before}")
            last[rec["path"]] = max(version, before or version)


def _check_states(
    result: Audit,
    records: Mapping[str, Sequence[Record]],
    states: Mapping[str, Mapping[str, Any]],
) -> None:
    regions = list(states)
    first = states[regions[0]]
    result.converged = all(states[r] == first for r in regions[1:])
    if not result.converged:
        for region in regions[1:]:
            for part in ("configs", "items"):
                differ = _differences(first[part], states[region][part])
                if differ:
                    result.note(f"{region} {part} differ from {regions[0]}: {differ}")
    kept = {key for state in states.values() for key in state["configs"]}
    for key, version in _newest(records).items():
        if key not in kept:
            continue  # left out: an unreplicated write's key
        for region in regions:
            held = states[region]["configs"].get(key)
            if held is None or (held["hlc"], held["event_id"]) != version:
                result.note(f"{region} holds {key} at {held and held['hlc']}, newest is {version}")


def _newest(records: Mapping[str, Sequence[Record]]) -> dict[str, tuple[str, str]]:
    """Config key -> the newest version any region applied."""
    newest: dict[str, tuple[str, str]] = {}
    for recs in records.values():
        for rec in recs:
            if rec["method"] in ("PUT", "DELETE") and rec["effect"] == "applied":
                key = rec["path"].removeprefix("/configs/")
                newest[key] = max(newest.get(key, ("", "")), _version(rec))
    return newest


def _differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(keys[:_MAX_LISTED]) + (" ..." if len(keys) > _MAX_LISTED else "")
