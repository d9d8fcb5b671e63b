"""The demo service over real HTTP and a real SQLite file: versions, 409, tombstones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from services.configstore.app import make_app
from services.configstore.store import ConfigStore

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
