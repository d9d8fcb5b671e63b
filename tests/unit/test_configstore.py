"""The demo service over real HTTP and a real SQLite file: versions, 409, tombstones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from services.demo_service.app import make_app
from services.demo_service.store import ConfigStore

OLD, NEW, NEWER = "000000000000010-000000", "000000000000020-000000", "000000000000030-000000"


def versioned(hlc: str, event_id: str = "e") -> dict[str, str]:
    return {"Xr-Hlc": hlc, "Xr-Event-Id": event_id}


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with ConfigStore(tmp_path / "configs.sqlite") as store:
        runner = web.AppRunner(make_app(store))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                yield http
        finally:
            await runner.cleanup()


async def test_put_get_and_list_by_prefix(client: httpx.AsyncClient) -> None:
    first = await client.put("/configs/billing/limit", json={"max": 5}, headers=versioned(OLD))
    assert first.status_code == 201
    again = await client.put("/configs/billing/limit", json={"max": 6}, headers=versioned(NEW))
    assert again.status_code == 200
    await client.put("/configs/search/size", json=10, headers=versioned(OLD))
    got = (await client.get("/configs/billing/limit")).json()
    assert got["value"] == {"max": 6}
    assert got["version"] == {"hlc": NEW, "event_id": "e"}
    listed = (await client.get("/configs", params={"prefix": "billing/"})).json()
    assert [c["property"] for c in listed["configs"]] == ["limit"]
    assert (await client.get("/configs")).json()["count"] == 2
    assert (await client.get("/configs/billing/nope")).status_code == 404


async def test_an_older_write_gets_409_and_changes_nothing(client: httpx.AsyncClient) -> None:
    await client.put("/configs/a/b", json=2, headers=versioned(NEW, "e2"))
    stale = await client.put("/configs/a/b", json=1, headers=versioned(OLD, "e1"))
    assert stale.status_code == 409
    assert stale.json()["stored_version"] == {"hlc": NEW, "event_id": "e2"}
    # The same stamp from another region: the event id decides, the same way everywhere.
    tie_lost = await client.put("/configs/a/b", json=3, headers=versioned(NEW, "e1"))
    assert tie_lost.status_code == 409
    tie_won = await client.put("/configs/a/b", json=4, headers=versioned(NEW, "e3"))
    assert tie_won.status_code == 200
    assert (await client.get("/configs/a/b")).json()["value"] == 4


async def test_the_same_version_again_is_an_idempotent_200(client: httpx.AsyncClient) -> None:
    assert (await client.put("/configs/a/b", json=1, headers=versioned(NEW))).status_code == 201
    again = await client.put("/configs/a/b", json=1, headers=versioned(NEW))
    assert again.status_code == 200


async def test_a_delete_leaves_a_tombstone_older_writes_cannot_cross(
    client: httpx.AsyncClient,
) -> None:
    await client.put("/configs/a/b", json=1, headers=versioned(OLD))
    deleted = await client.delete("/configs/a/b", headers=versioned(NEWER))
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] is True
    assert (await client.get("/configs/a/b")).status_code == 404
    late = await client.put("/configs/a/b", json=2, headers=versioned(NEW))
    assert late.status_code == 409
    assert (await client.get("/configs")).json()["count"] == 0
    # Deleting what was never there still keeps the tombstone (a replayed DELETE must not 404).
    unseen = await client.delete("/configs/x/y", headers=versioned(NEW))
    assert unseen.status_code == 200
    assert unseen.json()["deleted"] is False
    assert (await client.put("/configs/x/y", json=1, headers=versioned(OLD))).status_code == 409


async def test_bad_input_gets_400(client: httpx.AsyncClient) -> None:
    not_json = await client.put("/configs/a/b", content=b"{nope", headers=versioned(NEW))
    assert not_json.status_code == 400
    assert "not JSON" in not_json.json()["error"]
    bad_stamp = await client.put("/configs/a/b", json=1, headers=versioned("yesterday"))
    assert bad_stamp.status_code == 400
    assert (await client.get("/configs")).json()["count"] == 0


async def test_unversioned_writes_lose_to_every_replicated_one(client: httpx.AsyncClient) -> None:
    assert (await client.put("/configs/a/b", json=1)).status_code == 201
    assert (await client.put("/configs/a/b", json=2)).status_code == 200
    assert (await client.put("/configs/a/b", json=3, headers=versioned(OLD))).status_code == 200
    assert (await client.put("/configs/a/b", json=4)).status_code == 409


async def test_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "configs.sqlite"
    async with ConfigStore(path) as store:
        await store.put("a", "b", {"x": 1}, (NEW, "e"))
    async with ConfigStore(path) as store:
        record = await store.get("a", "b")
    assert record is not None
    assert record.value == {"x": 1}
    assert record.version == (NEW, "e")


async def test_items_are_created_listed_and_fetched(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/items", json={"id": "7", "name": "seven"}, headers=versioned(OLD, "e7")
    )
    assert created.status_code == 201
    assert created.headers["Location"] == "/items/7"
    assert created.json() == {
        "id": "7",
        "fields": {"name": "seven"},
        "version": {"hlc": OLD, "event_id": "e7"},
    }
    await client.post("/items", json={"id": "3"}, headers=versioned(NEW, "e3"))
    listed = (await client.get("/items")).json()
    assert [i["id"] for i in listed["items"]] == ["3", "7"]
    assert listed["count"] == 2
    assert (await client.get("/items/7")).json()["fields"] == {"name": "seven"}
    assert (await client.get("/items/8")).status_code == 404


async def test_a_create_of_an_existing_item_is_409_unless_it_is_the_same_create(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/items", json={"id": "7", "n": 1}, headers=versioned(OLD, "e1"))
    again = await client.post("/items", json={"id": "7", "n": 1}, headers=versioned(OLD, "e1"))
    assert again.status_code == 200  # a retried call: no change
    other = await client.post("/items", json={"id": "7", "n": 2}, headers=versioned(NEW, "e2"))
    assert other.status_code == 409
    assert other.json()["error"] == "exists"
    assert (await client.get("/items/7")).json()["fields"] == {"n": 1}


async def test_patches_merge_fields_in_any_order_without_moving_the_version(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/items", json={"id": "7", "a": 0, "b": 0}, headers=versioned(OLD))
    newer = await client.patch("/items/7", json={"b": 2}, headers=versioned(NEWER, "p2"))
    assert newer.status_code == 200
    older = await client.patch("/items/7", json={"a": 1}, headers=versioned(NEW, "p1"))
    assert older.status_code == 200  # an older patch is applied all the same
    item = (await client.get("/items/7")).json()
    assert item["fields"] == {"a": 1, "b": 2}
    assert item["version"] == {"hlc": OLD, "event_id": "e"}
    assert (await client.patch("/items/7", json={"id": "7", "c": 3})).status_code == 200
    assert (await client.patch("/items/7", json={"id": "8"})).status_code == 400
    assert (await client.patch("/items/nope", json={"a": 1})).status_code == 404


async def test_an_item_delete_keeps_a_tombstone_only_a_newer_create_crosses(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/items", json={"id": "7", "n": 1}, headers=versioned(OLD))
    deleted = await client.delete("/items/7", headers=versioned(NEW, "d"))
    assert deleted.status_code == 200
    assert deleted.json()["deleted"] is True
    assert (await client.get("/items/7")).status_code == 404
    assert (await client.patch("/items/7", json={"n": 2})).status_code == 404
    late = await client.post("/items", json={"id": "7", "n": 0}, headers=versioned(OLD, "e0"))
    assert late.status_code == 409
    assert late.json()["error"] == "stale"
    stale_delete = await client.delete("/items/7", headers=versioned(OLD))
    assert stale_delete.status_code == 409
    again = await client.post("/items", json={"id": "7", "n": 3}, headers=versioned(NEWER, "e3"))
    assert again.status_code == 201
    assert (await client.get("/items/7")).json()["fields"] == {"n": 3}
    # Deleting what was never there still answers 200 and keeps the tombstone.
    unseen = await client.delete("/items/9", headers=versioned(NEW))
    assert unseen.status_code == 200
    assert unseen.json()["deleted"] is False
    assert (
        await client.post("/items", json={"id": "9"}, headers=versioned(OLD))
    ).status_code == 409
    assert (await client.get("/items")).json()["count"] == 1


async def test_bad_item_writes_get_400(client: httpx.AsyncClient) -> None:
    for body in ([1], {"name": "no id"}, {"id": ""}, {"id": "a/b"}, {"id": 7}):
        reply = await client.post("/items", json=body, headers=versioned(NEW))
        assert reply.status_code == 400, body
    assert (await client.post("/items", content=b"{nope")).status_code == 400
    bad_stamp = await client.post("/items", json={"id": "1"}, headers=versioned("yesterday"))
    assert bad_stamp.status_code == 400
    await client.post("/items", json={"id": "1"}, headers=versioned(NEW))
    assert (await client.patch("/items/1", json=[1])).status_code == 400
    assert (await client.get("/items")).json()["count"] == 1


async def test_items_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "configs.sqlite"
    async with ConfigStore(path) as store:
        await store.create_item("7", {"x": 1}, (OLD, "e"))
        await store.patch_item("7", {"y": 2})
    async with ConfigStore(path) as store:
        item = await store.get_item("7")
    assert item is not None
    assert item.fields == {"x": 1, "y": 2}
    assert item.version == (OLD, "e")
