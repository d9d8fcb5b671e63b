"""The demo's traffic plan and the state last-writer-wins must produce (pure)."""

from __future__ import annotations

from collections import Counter

from services.xregion.demo import Op, Outcome, expected_state, plan_traffic

REGIONS = ["us-east", "eu-west", "ap-south"]


def test_the_plan_creates_updates_conflicts_and_deletes() -> None:
    creates, updates, deletes = plan_traffic(REGIONS, keys=30, conflicts=6, deletes=3)
    assert len({op.key for op in creates}) == 30
    assert Counter(op.region for op in creates) == {r: 10 for r in REGIONS}
    writers = Counter(op.key for op in updates)
    assert sum(1 for n in writers.values() if n == 2) == 6
    for key in (k for k, n in writers.items() if n == 2):
        assert len({op.region for op in updates if op.key == key}) == 2
    assert all(op.method == "DELETE" for op in deletes)
    assert len(deletes) == 3


def test_the_highest_accepted_version_wins_and_deletes_remove() -> None:
    a1 = Outcome(Op("us-east", "PUT", "s/a", 1), 201, ("t1", "e1"))
    a2 = Outcome(Op("eu-west", "PUT", "s/a", 2), 200, ("t2", "e0"))
    a_tie = Outcome(Op("ap-south", "PUT", "s/a", 3), 200, ("t2", "e9"))
    refused = Outcome(Op("us-east", "PUT", "s/a", 4), 409, None)
    b1 = Outcome(Op("us-east", "PUT", "s/b", 1), 201, ("t1", "e2"))
    b_gone = Outcome(Op("eu-west", "DELETE", "s/b"), 200, ("t3", "e3"))
    c_old_delete = Outcome(Op("eu-west", "DELETE", "s/c"), 200, ("t1", "e4"))
    c2 = Outcome(Op("us-east", "PUT", "s/c", 2), 200, ("t2", "e5"))
    state = expected_state([a1, a_tie, a2, refused, b1, b_gone, c_old_delete, c2])
    assert state == {"s/a": (3, ("t2", "e9")), "s/c": (2, ("t2", "e5"))}
