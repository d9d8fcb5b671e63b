"""A plain REST collection server for process-level tests; it knows nothing of xregion.

Run it as `python -m tests.harness.collection_service --listen 127.0.0.1:PORT` (port 0 picks
a free one). It prints one line, `collection_service listening on http://HOST:PORT`, once it
accepts connections, and stops cleanly on SIGTERM or SIGINT (exit 0).

Every top-level path segment not starting with `_` is a collection (`/items`, `/widgets`),
kept in memory, with client-assigned string ids:

* `POST /{c}` with a JSON object holding `"id"` (a non-empty string without `/`): 201, the
  item as JSON, `Location: /{c}/<id>`; 409 if the id exists; 400 on bad JSON or a bad id.
* `GET /{c}`: 200, a JSON list of the items sorted by id. `GET /{c}/{id}`: 200 or 404.
* `PATCH /{c}/{id}` with a JSON object: its fields merged into the item, 200; 404 if missing.
* `PUT /{c}/{id}` with a JSON object: the item replaced (created if missing), 200.
* `DELETE /{c}/{id}`: 204, or 404 if missing.

A body's `"id"`, when present in a PATCH or PUT, must be the path's id (else 400). Nothing
else is checked: no versions are kept and every `Xr-*` header is ignored, as a service that
was never told about replication would.

Every request outside `/_*` is counted by its `Idempotency-Key` header (when present) and by
`"<METHOD> <path>"`: `GET /_calls` answers
`{"by_idempotency_key": {key: count}, "by_request": {"POST /items": n, ...}}`.
`GET /_health` answers 200 `{"status": "ok"}`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import web

__all__ = ["CollectionStore", "build_app", "main", "parse_listen"]

Item = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LISTEN_RE = re.compile(r"(?P<host>[^:\s]+):(?P<port>\d{1,5})")
_COLLECTION = r"{collection:[^_/][^/]*}"
_ITEM = _COLLECTION + r"/{item_id:[^/]+}"


class CollectionStore:
    """The collections and the request counts; one per process, never persisted."""

    def __init__(self) -> None:
        self.collections: dict[str, dict[str, Item]] = {}
        self.by_idempotency_key: Counter[str] = Counter()
        self.by_request: Counter[str] = Counter()

    def collection(self, name: str) -> dict[str, Item]:
        return self.collections.setdefault(name, {})


_STORE: web.AppKey[CollectionStore] = web.AppKey("store", CollectionStore)


def _error(status: int, error: str, detail: str = "") -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


async def _json_object(request: web.Request) -> Item | web.Response:
    """The request body as a JSON object, or the 400 to answer."""
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(400, "bad_json", str(exc))
    if not isinstance(body, dict):
        return _error(400, "bad_json", "expected a JSON object")
    return body


def _path_id_conflict(body: Item, item_id: str) -> web.Response | None:
    if "id" in body and body["id"] != item_id:
        return _error(400, "id_mismatch", f"body id {body['id']!r} is not {item_id!r}")
    return None


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/_"):
        store = request.app[_STORE]
        store.by_request[f"{request.method} {request.path}"] += 1
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            store.by_idempotency_key[key] += 1
    return await handler(request)


async def _create(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    item_id = body.get("id")
    if not isinstance(item_id, str) or not item_id or "/" in item_id:
        return _error(400, "bad_id", "a non-empty string id without '/' is required")
    name = request.match_info["collection"]
    items = request.app[_STORE].collection(name)
    if item_id in items:
        return _error(409, "exists", f"/{name}/{item_id} exists")
    items[item_id] = body
    return web.json_response(body, status=201, headers={"Location": f"/{name}/{item_id}"})


async def _list(request: web.Request) -> web.Response:
    items = request.app[_STORE].collection(request.match_info["collection"])
    return web.json_response([items[k] for k in sorted(items)])


async def _get(request: web.Request) -> web.Response:
    items = request.app[_STORE].collection(request.match_info["collection"])
    item = items.get(request.match_info["item_id"])
    return _error(404, "not_found") if item is None else web.json_response(item)


async def _patch(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    item_id = request.match_info["item_id"]
    items = request.app[_STORE].collection(request.match_info["collection"])
    refused = _path_id_conflict(body, item_id)
    if refused is not None:
        return refused
    if item_id not in items:
        return _error(404, "not_found")
    items[item_id] = {**items[item_id], **body, "id": item_id}
    return web.json_response(items[item_id])


async def _put(request: web.Request) -> web.Response:
    body = await _json_object(request)
    if isinstance(body, web.Response):
        return body
    item_id = request.match_info["item_id"]
    refused = _path_id_conflict(body, item_id)
    if refused is not None:
        return refused
    items = request.app[_STORE].collection(request.match_info["collection"])
    items[item_id] = {**body, "id": item_id}
    return web.json_response(items[item_id])


async def _delete(request: web.Request) -> web.Response:
    items = request.app[_STORE].collection(request.match_info["collection"])
    if items.pop(request.match_info["item_id"], None) is None:
        return _error(404, "not_found")
    return web.Response(status=204)


async def _calls(request: web.Request) -> web.Response:
    store = request.app[_STORE]
    return web.json_response(
        {
            "by_idempotency_key": dict(store.by_idempotency_key),
            "by_request": dict(store.by_request),
        }
    )


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(store: CollectionStore | None = None) -> web.Application:
    app = web.Application(middlewares=[_count])
    app[_STORE] = store if store is not None else CollectionStore()
    app.router.add_get("/_health", _health)
    app.router.add_get("/_calls", _calls)
    app.router.add_post("/" + _COLLECTION, _create)
    app.router.add_get("/" + _COLLECTION, _list, allow_head=False)
    app.router.add_get("/" + _ITEM, _get, allow_head=False)
    app.router.add_patch("/" + _ITEM, _patch)
    app.router.add_put("/" + _ITEM, _put)
    app.router.add_delete("/" + _ITEM, _delete)
    return app


def parse_listen(value: str) -> tuple[str, int]:
    match = _LISTEN_RE.fullmatch(value)
    if match is None or not 0 <= int(match["port"]) <= 65535:
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}")
    return match["host"], int(match["port"])


async def _serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"collection_service listening on http://{bound_host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="collection_service", description="a plain REST collection server"
    )
    parser.add_argument("--listen", type=parse_listen, required=True, help="host:port")
    args = parser.parse_args(argv)
    host, port = args.listen
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
