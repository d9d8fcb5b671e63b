"""The demo's traffic plan and the state it must produce: last-writer-wins for the configs,
every create, patch and delete for the items (pure)."""

from __future__ import annotations

from collections import Counter

from services.xregion.local.demo import Op, Outcome, expected_items, expected_state, plan_traffic

REGIONS = ["us-east", "eu-west", "ap-south"]


def configs(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.resource == "configs"]


def items(ops: list[Op]) -> list[Op]:
    return [op for op in ops if op.resource == "items"]


def test_the_plan_creates_updates_conflicts_and_deletes() -> None:
    creates, updates, deletes = (
        configs(p) for p in plan_traffic(REGIONS, keys=30, conflicts=6, deletes=3)
    )
    assert len({op.key for op in creates}) == 30
    assert Counter(op.region for op in creates) == {r: 10 for r in REGIONS}
    writers = Counter(op.key for op in updates)
    assert sum(1 for n in writers.values() if n == 2) == 6
    for key in (k for k, n in writers.items() if n == 2):
        assert len({op.region for op in updates if op.key == key}) == 2
    assert all(op.method == "DELETE" for op in deletes)
    assert len(deletes) == 3


def test_the_plan_creates_items_everywhere_patches_some_twice_and_deletes_through_the_creator() -> (
    None
):
    plan = plan_traffic(REGIONS, items=30, patched=12, concurrent_patches=3, item_deletes=6)
    creates, patches, deletes = (items(p) for p in plan)
    assert all(op.method == "POST" and op.path == "/items" for op in creates)
    assert [op.value["id"] for op in creates] == [op.key for op in creates]
    assert len({op.key for op in creates}) == 30
    assert Counter(op.region for op in creates) == {r: 10 for r in REGIONS}
    creator = {op.key: op.region for op in creates}
    assert all(op.method == "PATCH" and op.path == f"/items/{op.key}" for op in patches)
    by_item: dict[str, list[Op]] = {}
    for op in patches:
        by_item.setdefault(op.key, []).append(op)
    assert len(by_item) == 12
    twice = {key: ops for key, ops in by_item.items() if len(ops) == 2}
    assert len(twice) == 3
    for ops in twice.values():
        assert len({op.region for op in ops}) == 2
        assert not ops[0].value.keys() & ops[1].value.keys()  # both patches must survive
    assert all(op.region != creator[op.key] for op in patches)
    assert len(deletes) == 6
    assert all(op.method == "DELETE" and op.region == creator[op.key] for op in deletes)
    assert {op.key for op in deletes} & by_item.keys()  # some patched items are deleted too


def test_the_highest_accepted_version_wins_and_deletes_remove() -> None:
    a1 = Outcome(Op("us-east", "PUT", "s/a", 1), 201, ("t1", "e1"))
    a2 = Outcome(Op("eu-west", "PUT", "s/a", 2), 200, ("t2", "e0"))
    a_tie = Outcome(Op("ap-south", "PUT", "s/a", 3), 200, ("t2", "e9"))
    refused = Outcome(Op("us-east", "PUT", "s/a", 4), 409, None)
    b1 = Outcome(Op("us-east", "PUT", "s/b", 1), 201, ("t1", "e2"))
    b_gone = Outcome(Op("eu-west", "DELETE", "s/b"), 200, ("t3", "e3"))
    c_old_delete = Outcome(Op("eu-west", "DELETE", "s/c"), 200, ("t1", "e4"))
    c2 = Outcome(Op("us-east", "PUT", "s/c", 2), 200, ("t2", "e5"))
    item = Outcome(Op("us-east", "POST", "s/d", {"id": "s/d"}, "items"), 201, ("t9", "e9"))
    state = expected_state([a1, a_tie, a2, refused, b1, b_gone, c_old_delete, c2, item])
    assert state == {"s/a": (3, ("t2", "e9")), "s/c": (2, ("t2", "e5"))}


def item(region: str, method: str, key: str, value: object, status: int, version: str) -> Outcome:
    accepted = (version, f"e-{version}") if 200 <= status < 300 else None
    return Outcome(Op(region, method, key, value, "items"), status, accepted)


def test_items_hold_every_accepted_create_with_every_patch_minus_the_deletes() -> None:
    outcomes = [
        item("us-east", "POST", "1", {"id": "1", "name": "one"}, 201, "t1"),
        item("eu-west", "POST", "2", {"id": "2", "name": "two"}, 201, "t2"),
        item("ap-south", "POST", "3", {"id": "3"}, 201, "t3"),
        item("ap-south", "POST", "4", {"id": "4"}, 409, "t4"),  # refused: never made
        item("eu-west", "PATCH", "1", {"size": 2}, 200, "t1"),
        item("ap-south", "PATCH", "1", {"color": "red"}, 200, "t1"),
        item("us-east", "PATCH", "2", {"size": 9}, 404, "t2"),  # refused: not applied
        item("ap-south", "DELETE", "3", None, 200, "t5"),
        Outcome(Op("us-east", "PUT", "s/1", 1), 201, ("t6", "e6")),  # a config, not an item
    ]
    assert expected_items(outcomes) == {
        "1": ({"name": "one", "size": 2, "color": "red"}, ("t1", "e-t1")),
        "2": ({"name": "two"}, ("t2", "e-t2")),
    }


def test_a_plan_for_one_region_has_no_concurrent_writes() -> None:
    _, updates, _ = plan_traffic(["solo"], keys=6, conflicts=2, deletes=1, items=6, patched=3)
    assert Counter(op.key for op in updates).most_common(1)[0][1] == 1
