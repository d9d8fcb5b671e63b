"""The audit finds what it must: a lost write, a doubled call, a call out of HLC order,
regions that differ. Pure: made-up answers, records and states."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.chaos_audit import audit
from tests.harness.chaos_load import Write

pytestmark = [pytest.mark.chaos]

REGIONS = ("us-east", "eu-west")


def _write(event_id: str, method: str = "PUT", path: str = "/configs/k") -> Write:
    return Write("us-east", method, path, 200, event_id, 1.0, 1.1)


def _rec(event_id: str, hlc: str, *, origin: str | None, effect: str = "applied",
         method: str = "PUT", path: str = "/configs/k") -> dict[str, Any]:  # fmt: skip
    return {
        "seq": 0, "at": 2.0, "method": method, "path": path, "key": path,
        "event_id": event_id, "hlc": hlc, "origin": origin,
        "idempotency_key": event_id if origin else None, "status": 200, "effect": effect,
    }  # fmt: skip


def _state(hlc: str, event_id: str) -> dict[str, Any]:
    return {
        "configs": {"k": {"value": {}, "hlc": hlc, "event_id": event_id, "deleted": False}},
        "items": {},
    }


def test_a_clean_run_has_no_problem() -> None:
    records = {
        "us-east": [_rec("e1", "1", origin=None)],
        "eu-west": [_rec("e1", "1", origin="us-east")],
    }
    states = {r: _state("1", "e1") for r in REGIONS}
    result = audit([_write("e1")], records, states, repeats_allowed=False)
    assert result.problems == []
    assert result.applied == {"us-east": 1, "eu-west": 1}


def test_a_write_never_replayed_is_lost() -> None:
    records: dict[str, list[dict[str, Any]]] = {
        "us-east": [_rec("e1", "1", origin=None)],
        "eu-west": [],
    }
    states = {"us-east": _state("1", "e1"), "eu-west": {"configs": {}, "items": {}}}
    result = audit([_write("e1")], records, states, repeats_allowed=False)
    assert result.lost == 1
    assert any("not applied in eu-west" in p for p in result.problems)
    assert not result.converged


def test_a_second_call_is_a_problem_unless_repeats_are_allowed() -> None:
    records = {
        "us-east": [_rec("e1", "1", origin=None)],
        "eu-west": [
            _rec("e1", "1", origin="us-east"),
            _rec("e1", "1", origin="us-east", effect="duplicate_prevented"),
        ],
    }
    states = {r: _state("1", "e1") for r in REGIONS}
    strict = audit([_write("e1")], records, states, repeats_allowed=False)
    assert any("called 2 times in eu-west" in p for p in strict.problems)
    allowed = audit([_write("e1")], records, states, repeats_allowed=True)
    assert allowed.problems == []
    assert allowed.duplicates_prevented == 1


def test_replayed_replace_calls_out_of_hlc_order_are_counted() -> None:
    records = {
        "us-east": [_rec("e2", "2", origin=None), _rec("e1", "1", origin=None)],
        "eu-west": [
            _rec("e2", "2", origin="us-east"),
            _rec("e1", "1", origin="us-east", effect="stale"),
        ],
    }
    states = {r: _state("2", "e2") for r in REGIONS}
    result = audit([_write("e1"), _write("e2")], records, states, repeats_allowed=False)
    assert result.order_violations == 1
    assert result.superseded["eu-west"] == 1
