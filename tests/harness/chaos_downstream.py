"""The chaos suite's downstream service: a real process that records every call it gets.

Run it as `python -m tests.harness.chaos_downstream --listen 127.0.0.1:PORT`. It prints
`chaos_downstream listening on http://HOST:PORT` once it accepts connections and stops
cleanly on SIGTERM or SIGINT.

What it serves, in memory, as a replicated service should (docs/DESIGN.md §5b):

* `PUT /configs/{key}` (JSON body) and `DELETE /configs/{key}`: `replace` writes, versioned by
  (`Xr-Hlc`, `Xr-Event-Id`): an older write is answered 409, the same version again 200
  without a change, a DELETE keeps a tombstone and answers 200.
* `POST /items` (a JSON object with a string `"id"`): 201, or 409 if the id exists;
  `PATCH /items/{id}` (JSON object): fields merged, 200, or 404 if absent. `apply` writes.
* `Idempotency-Key`: a key answered before with an effect (applied, or refused for its
  version or an existing id) gets the same answer again
  without any effect; such a call is recorded with effect `duplicate_prevented`.

Every call outside `/_*` is recorded: arrival time, method, path, `Xr-Event-Id`, `Xr-Hlc`,
`Xr-Replayed-From` (absent for a client's write proxied by the local bridge), the
`Idempotency-Key`, the status and the effect. Test endpoints:

* `GET /_records?after=N`: records N+1... as `{"records": [...], "next": seq}`;
* `GET /_state`: `{"configs": {key: {"value", "hlc", "event_id", "deleted"}}, "items": {...}}`;
* `POST /_fault` `{"status": 503 | null, "delay_s": float}`: from now on answer every call
  with that status (recorded as effect `fault`), or delay every call by `delay_s`;
* `GET /_health`: 200.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.harness.collection_service import parse_listen

__all__ = ["Downstream", "build_app", "main"]

Handler = Callable[[web.Request], Awaitable[web.Response]]
Answer = tuple[int, dict[str, Any], str]  # status, JSON body, effect


@dataclass
class Fault:
    status: int | None = None
    delay_s: float = 0.0


@dataclass
class Downstream:
    """The store, the idempotency answers and the call records of one process."""

    configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)
    answered: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    fault: Fault = field(default_factory=Fault)

    def put_config(self, key: str, value: Any, hlc: str, event_id: str) -> Answer:
        stale = self._stale(key, hlc, event_id)
        if stale is not None:
            return stale
        self.configs[key] = {"value": value, "hlc": hlc, "event_id": event_id, "deleted": False}
        return 200, self.configs[key], "applied"

    def delete_config(self, key: str, hlc: str, event_id: str) -> Answer:
        stale = self._stale(key, hlc, event_id)
        if stale is not None:
            return stale
        self.configs[key] = {"value": None, "hlc": hlc, "event_id": event_id, "deleted": True}
        return 200, self.configs[key], "applied"

    def _stale(self, key: str, hlc: str, event_id: str) -> Answer | None:
        held = self.configs.get(key)
        if held is None:
            return None
        mine, theirs = (hlc, event_id), (held["hlc"], held["event_id"])
        if mine == theirs:
            return 200, held, "same_version"
        if mine < theirs:
            return 409, {"error": "stale", "held": held}, "stale"
        return None

    def create_item(self, body: dict[str, Any]) -> Answer:
        item_id = body.get("id")
        if not isinstance(item_id, str) or not item_id or "/" in item_id:
            return 400, {"error": "bad_id"}, "refused"
        if item_id in self.items:
            return 409, {"error": "exists"}, "exists"
        self.items[item_id] = dict(body)
        return 201, self.items[item_id], "applied"

    def patch_item(self, item_id: str, body: dict[str, Any]) -> Answer:
        if item_id not in self.items:
            return 404, {"error": "not_found"}, "not_found"
        self.items[item_id] = {**self.items[item_id], **body, "id": item_id}
        return 200, self.items[item_id], "applied"


# Answers a repeat of the same key gets again: the call had its effect (or was refused for
# its version). A 404 is not one: a patch may arrive before its create and be retried.
_FINAL = frozenset({"applied", "same_version", "stale", "exists"})
_STATE: web.AppKey[Downstream] = web.AppKey("downstream", Downstream)


def _record(request: web.Request, status: int, effect: str, key: str) -> None:
    h = request.headers
    request.app[_STATE].records.append(
        {
            "seq": len(request.app[_STATE].records) + 1,
            "at": time.time(),
            "method": request.method,
            "path": request.path,
            "key": key,
            "event_id": h.get("Xr-Event-Id", ""),
            "hlc": h.get("Xr-Hlc", ""),
            "origin": h.get("Xr-Replayed-From"),
            "idempotency_key": h.get("Idempotency-Key"),
            "status": status,
            "effect": effect,
        }
    )


def _key(request: web.Request, body: dict[str, Any] | None) -> str:
    """The resource a call writes: its path, or for a create the item it makes."""
    if request.method == "POST" and body is not None and isinstance(body.get("id"), str):
        return f"{request.path}/{body['id']}"
    return request.path


async def _body(request: web.Request) -> dict[str, Any] | None:
    if request.method not in ("PUT", "POST", "PATCH"):
        return {}
    try:
        body = json.loads(await request.read())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _decide(request: web.Request, body: dict[str, Any] | None) -> Answer:
    state = request.app[_STATE]
    parts = request.path.strip("/").split("/")
    hlc, event_id = request.headers.get("Xr-Hlc", ""), request.headers.get("Xr-Event-Id", "")
    if body is None:
        return 400, {"error": "bad_json"}, "refused"
    match request.method, parts:
        case "PUT", ["configs", key]:
            return state.put_config(key, body, hlc, event_id)
        case "DELETE", ["configs", key]:
            return state.delete_config(key, hlc, event_id)
        case "POST", ["items"]:
            return state.create_item(body)
        case "PATCH", ["items", item_id]:
            return state.patch_item(item_id, body)
    return 404, {"error": "no_such_route"}, "refused"


async def _write(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = await _body(request)
    key = _key(request, body)
    if state.fault.delay_s:
        await asyncio.sleep(state.fault.delay_s)  # the injected slowness itself
    if state.fault.status is not None:
        _record(request, state.fault.status, "fault", key)
        return web.json_response({"error": "injected"}, status=state.fault.status)
    idempotency_key = request.headers.get("Idempotency-Key")
    if idempotency_key is not None and idempotency_key in state.answered:
        status, answer = state.answered[idempotency_key]
        _record(request, status, "duplicate_prevented", key)
        return web.json_response(answer, status=status)
    status, answer, effect = _decide(request, body)
    if idempotency_key is not None and effect in _FINAL:
        state.answered[idempotency_key] = (status, answer)
    _record(request, status, effect, key)
    return web.json_response(answer, status=status)


async def _records(request: web.Request) -> web.Response:
    after = int(request.query.get("after", "0"))
    records = request.app[_STATE].records[after:]
    return web.json_response({"records": records, "next": after + len(records)})


async def _state(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    return web.json_response({"configs": state.configs, "items": state.items})


async def _set_fault(request: web.Request) -> web.Response:
    body = json.loads(await request.read() or b"{}")
    status = body.get("status")
    request.app[_STATE].fault = Fault(
        status=int(status) if status is not None else None,
        delay_s=float(body.get("delay_s", 0.0)),
    )
    return web.json_response({"status": status, "delay_s": request.app[_STATE].fault.delay_s})


async def _health(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app(state: Downstream | None = None) -> web.Application:
    app = web.Application()
    app[_STATE] = state if state is not None else Downstream()
    app.router.add_get("/_health", _health)
    app.router.add_get("/_records", _records)
    app.router.add_get("/_state", _state)
    app.router.add_post("/_fault", _set_fault)
    for method in ("PUT", "DELETE", "POST", "PATCH"):
        app.router.add_route(method, "/{tail:[^_].*}", _write)
    return app


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
        print(f"chaos_downstream listening on http://{bound_host}:{bound_port}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chaos_downstream", description=__doc__)
    parser.add_argument("--listen", type=parse_listen, required=True, help="host:port")
    args = parser.parse_args(argv)
    host, port = args.listen
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
