"""The demo service (`xregion demo-service`) with a note of when it answered each write.

    python bench/recorder.py --listen 127.0.0.1:PORT --db FILE

The same application, store and settings as the demo service; one middleware notes, for
every PUT, POST, PATCH or DELETE, the wall clock (ns) at which its handler answered, by path
(the last answer of a path wins). `GET /_bench/answered` returns those notes as a JSON object
`{path: ns}` (with `?count`, `{"count": n}` only), `DELETE /_bench/answered` clears them. The
lag benches measure to that time: "the other region's service answering the replay".
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.demo_service.app import make_app
from services.demo_service.store import ConfigStore
from shared.lifecycle import until_signalled
from shared.netaddr import split_listen

_WRITES = frozenset({"PUT", "POST", "PATCH", "DELETE"})
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _note_answers(app: web.Application, answered: dict[str, int]) -> None:
    """Add the middleware that notes each write's answer time, and the routes that read it."""

    @web.middleware
    async def note(request: web.Request, handler: _Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.method in _WRITES:
            answered[request.path] = time.time_ns()
        return response

    async def read(request: web.Request) -> web.Response:
        if "count" in request.query:  # only how many: cheap to poll while a backlog drains
            return web.json_response({"count": len(answered)})
        return web.json_response(answered)

    async def clear(request: web.Request) -> web.Response:
        answered.clear()
        return web.json_response({})

    app.middlewares.append(note)
    app.router.add_get("/_bench/answered", read)
    app.router.add_delete("/_bench/answered", clear)


async def _serve(listen: str, db: Path) -> None:
    host, port = split_listen(listen)
    async with ConfigStore(db) as store:
        app = make_app(store)
        _note_answers(app, {})
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            await until_signalled(lambda stop: stop())
        finally:
            await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--db", type=Path, required=True)
    args = parser.parse_args()
    uvloop.run(_serve(args.listen, args.db))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
