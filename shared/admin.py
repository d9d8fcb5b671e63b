"""The admin HTTP port every process serves (docs/DESIGN.md §8).

* `/metrics` — the Prometheus registry in text format;
* `/healthz` — the process is alive (the event loop answers);
* `/readyz` — the worst of the registered readiness checks: `ok` and `degraded` (amber) answer
  200, `down` answers 503. The JSON body lists every check, so an operator sees why.

With a `token`, `/metrics` answers 401 unless the request carries `Authorization: Bearer
<token>`, and `/readyz` without it answers only its status (same code, no checks): probes need
no secret and learn nothing but ready or not. `/healthz` is always open (a liveness probe, and
it says nothing but "alive").

Checks are plain synchronous callables reading state the service already keeps (connection
up, consumers bound, outbox depth); the admin port never does I/O on a probe's behalf.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Self

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from shared.lifecycle import Closeable
from shared.netaddr import split_listen

__all__ = ["AdminServer", "CheckResult", "Health", "ReadinessCheck"]


class Health(enum.IntEnum):
    """Ordered so that `max()` of several results is the worst one."""

    OK = 0
    DEGRADED = 1
    DOWN = 2

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: Health
    detail: str = ""


ReadinessCheck = Callable[[], CheckResult]


class AdminServer(Closeable):
    """An aiohttp server for the admin endpoints; an async context manager."""

    def __init__(
        self,
        listen: str,
        *,
        service: str,
        registry: CollectorRegistry = REGISTRY,
        checks: Mapping[str, ReadinessCheck] | None = None,
        token: str | None = None,
    ) -> None:
        self._host, self._port = split_listen(listen)
        self._token = f"Bearer {token}".encode() if token else None
        self._service = service
        self._registry = registry
        self._checks: dict[str, ReadinessCheck] = dict(checks or {})
        self._runner: web.AppRunner | None = None
        self.port = self._port

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        self._checks[name] = check

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = _bound_port(runner, self._port)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    def _authorized(self, request: web.Request) -> bool:
        if self._token is None:
            return True
        sent = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(sent, self._token)  # constant time: no length-by-length probe

    async def _metrics(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <admin token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="xregion-admin"'},
            )
        body = generate_latest(self._registry)
        response = web.Response(body=body)
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": self._service})

    async def _readyz(self, request: web.Request) -> web.Response:
        results = {name: check() for name, check in self._checks.items()}
        worst = max((r.status for r in results.values()), default=Health.OK)
        status = 503 if worst is Health.DOWN else 200
        if not self._authorized(request):
            return web.json_response({"status": worst.label}, status=status)
        body = {
            "status": worst.label,
            "service": self._service,
            "checks": {
                n: {"status": r.status.label, "detail": r.detail} for n, r in results.items()
            },
        }
        return web.json_response(body, status=status)


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    """The port actually bound (differs from the requested one when that was 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested
