"""HTTP API of the configuration store (aiohttp).

    PUT    /configs/{service}/{property}   JSON body → 201 created, 200 updated, 409 stale
    GET    /configs/{service}/{property}   → 200 record, 404
    DELETE /configs/{service}/{property}   → 200 (a tombstone is kept, even for no record), 409
    GET    /configs?prefix=P               → 200 {"configs": [...], "count": N}
    GET    /healthz                        → 200

The version of a write is its `Xr-Hlc` and `Xr-Event-Id` headers (sent by the bridge for a
client's write and by the replayer for a replayed one). A write older than the stored version
gets 409, which the replayer counts as `stale`: this is what makes every region converge on
the last writer. The same version again answers 200 without a change (a retried call).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from services.configstore.store import ConfigStore, StaleWriteError, Version
from shared.envelope import HDR_EVENT_ID, HDR_HLC
from shared.hlc import HlcStamp, InvalidHlcError

__all__ = ["STORE_KEY", "make_app"]

STORE_KEY = web.AppKey("store", ConfigStore)
_ITEM = "/configs/{service}/{property}"


def make_app(store: ConfigStore) -> web.Application:
    app = web.Application()
    app[STORE_KEY] = store
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/configs", _list)
    app.router.add_get(_ITEM, _get)
    app.router.add_put(_ITEM, _put)
    app.router.add_delete(_ITEM, _delete)
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
