"""HTTP API of the configuration store (aiohttp).

    PUT    /configs/{service}/{property}   JSON body → 201 created, 200 updated, 409 stale
    GET    /configs/{service}/{property}   → 200 record, 404
    DELETE /configs/{service}/{property}   → 200 (a tombstone is kept, even for no record), 409
    GET    /configs?prefix=P               → 200 {"configs": [...], "count": N}
    POST   /items                          JSON object with "id" → 201 created (Location:
                                           /items/<id>), 200 the same create again, 409
                                           exists or stale (older than its delete), 400
    GET    /items                          → 200 {"items": [...], "count": N}
    GET    /items/{id}                     → 200 item, 404
    PATCH  /items/{id}                     JSON object → 200 fields merged, 404, 400
    DELETE /items/{id}                     → 200 (a tombstone is kept, even for no item), 409
    GET    /healthz                        → 200

The version of a write is its `Xr-Hlc` and `Xr-Event-Id` headers (sent by the bridge for a
client's write and by the replayer for a replayed one). A write older than the stored version
gets 409, which the replayer counts as `stale`: this is what makes every region converge on
the last writer. The same version again answers 200 without a change (a retried call).

Items have client-assigned ids (the `"id"` of the create's body), so one create makes the
same item in every region; an item answers as `{"id", "fields", "version"}`, the version
being its create's. A create and a delete are versioned like a config's writes; a
PATCH is not compared with anything: it merges its fields into the item, whatever order
two regions' patches arrive in (xregion's `apply` rule), and 404s when there is no item.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from services.demo_service.store import (
    ConfigStore,
    ItemExistsError,
    NoSuchItemError,
    StaleWriteError,
    Version,
)
from shared.envelope import HDR_EVENT_ID, HDR_HLC
from shared.hlc import HlcStamp, InvalidHlcError

__all__ = ["STORE_KEY", "make_app"]

STORE_KEY = web.AppKey("store", ConfigStore)
_ITEM = "/configs/{service}/{property}"
_ITEMS = "/items"
_ONE_ITEM = "/items/{id}"


def make_app(store: ConfigStore) -> web.Application:
    app = web.Application()
    app[STORE_KEY] = store
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/configs", _list)
    app.router.add_get(_ITEM, _get)
    app.router.add_put(_ITEM, _put)
    app.router.add_delete(_ITEM, _delete)
    app.router.add_post(_ITEMS, _create_item)
    app.router.add_get(_ITEMS, _list_items)
    app.router.add_get(_ONE_ITEM, _get_item)
    app.router.add_patch(_ONE_ITEM, _patch_item)
    app.router.add_delete(_ONE_ITEM, _delete_item)
    return app


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _version(request: web.Request) -> Version:
    hlc = request.headers.get(HDR_HLC, "")
    if hlc:
        try:
            HlcStamp.parse(hlc)
        except InvalidHlcError as exc:
            raise web.HTTPBadRequest(
                text=json.dumps({"error": f"bad {HDR_HLC}: {exc}"}), content_type="application/json"
            ) from None
    return (hlc, request.headers.get(HDR_EVENT_ID, "") if hlc else "")


def _stale(exc: StaleWriteError) -> web.Response:
    hlc, event_id = exc.stored
    return _error(409, "stale", stored_version={"hlc": hlc, "event_id": event_id})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _list(request: web.Request) -> web.Response:
    records = await request.app[STORE_KEY].scan(request.query.get("prefix", ""))
    return web.json_response({"configs": [r.as_json() for r in records], "count": len(records)})


async def _get(request: web.Request) -> web.Response:
    record = await request.app[STORE_KEY].get(
        request.match_info["service"], request.match_info["property"]
    )
    if record is None:
        return _error(404, "no such config")
    return web.json_response(record.as_json())


async def _put(request: web.Request) -> web.Response:
    version = _version(request)
    try:
        value = json.loads(await request.read())
    except ValueError as exc:
        return _error(400, f"the body is not JSON: {exc}")
    service, prop = request.match_info["service"], request.match_info["property"]
    try:
        result = await request.app[STORE_KEY].put(service, prop, value, version)
    except StaleWriteError as exc:
        return _stale(exc)
    body = {"service": service, "property": prop, "value": value}
    body["version"] = {"hlc": version[0], "event_id": version[1]}
    return web.json_response(body, status=201 if result.created else 200)


async def _delete(request: web.Request) -> web.Response:
    version = _version(request)
    service, prop = request.match_info["service"], request.match_info["property"]
    try:
        result = await request.app[STORE_KEY].delete(service, prop, version)
    except StaleWriteError as exc:
        return _stale(exc)
    # Deleting what is not there still answers 200: the tombstone must be kept everywhere,
    # and a 404 would send a replayed DELETE to the dead-letter queue.
    body = {"deleted": not result.created, "service": service, "property": prop}
    body["version"] = {"hlc": version[0], "event_id": version[1]}
    return web.json_response(body)


async def _json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The body as a JSON object, or the 400 to answer."""
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        return _error(400, f"the body is not JSON: {exc}")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    return body


async def _create_item(request: web.Request) -> web.Response:
    version = _version(request)
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    item_id = body.pop("id", None)
    if not isinstance(item_id, str) or not item_id or "/" in item_id:
        return _error(400, 'the body needs an "id": a non-empty string without "/"')
    try:
        item, result = await request.app[STORE_KEY].create_item(item_id, body, version)
    except StaleWriteError as exc:
        return _stale(exc)
    except ItemExistsError as exc:
        hlc, event_id = exc.stored
        return _error(409, "exists", stored_version={"hlc": hlc, "event_id": event_id})
    return web.json_response(
        item.as_json(),
        status=201 if result.changed else 200,
        headers={"Location": f"/items/{item_id}"},
    )


async def _list_items(request: web.Request) -> web.Response:
    items = await request.app[STORE_KEY].items()
    return web.json_response({"items": [i.as_json() for i in items], "count": len(items)})


async def _get_item(request: web.Request) -> web.Response:
    item = await request.app[STORE_KEY].get_item(request.match_info["id"])
    if item is None:
        return _error(404, "no such item")
    return web.json_response(item.as_json())


async def _patch_item(request: web.Request) -> web.Response:
    item_id = request.match_info["id"]
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    if body.pop("id", item_id) != item_id:
        return _error(400, "the body's \"id\" is not the item's")
    try:
        item = await request.app[STORE_KEY].patch_item(item_id, body)
    except NoSuchItemError:
        return _error(404, "no such item")
    return web.json_response(item.as_json())


async def _delete_item(request: web.Request) -> web.Response:
    version = _version(request)
    item_id = request.match_info["id"]
    try:
        result = await request.app[STORE_KEY].delete_item(item_id, version)
    except StaleWriteError as exc:
        return _stale(exc)
    # 200 even for no item, like a config's DELETE: a 404 would dead-letter a replayed one.
    body = {"deleted": not result.created, "id": item_id}
    body["version"] = {"hlc": version[0], "event_id": version[1]}
    return web.json_response(body)
