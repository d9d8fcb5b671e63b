"""The admin port: real aiohttp server on a free loopback port, real HTTP requests."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, Counter

from shared.admin import AdminServer, CheckResult, Health


async def test_metrics_healthz_and_readyz() -> None:
    registry = CollectorRegistry()
    Counter("xr_test_things_total", "things", registry=registry).inc(3)
    state = {"outbox": CheckResult(Health.OK)}
    async with AdminServer("127.0.0.1:0", service="xr-test", registry=registry) as admin:
        admin.add_check("nats", lambda: CheckResult(Health.OK, "connected"))
        admin.add_check("outbox", lambda: state["outbox"])
        assert admin.port != 0
        async with httpx.AsyncClient(base_url=admin.url) as http:
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert "xr_test_things_total 3.0" in metrics.text

            assert (await http.get("/healthz")).json() == {"status": "ok", "service": "xr-test"}

            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json()["status"] == "ok"

            state["outbox"] = CheckResult(Health.DEGRADED, "12 events spooled")
            amber = await http.get("/readyz")
            assert amber.status_code == 200
            assert amber.json()["status"] == "degraded"
            assert amber.json()["checks"]["outbox"]["detail"] == "12 events spooled"

            state["outbox"] = CheckResult(Health.DOWN, "disk full")
            down = await http.get("/readyz")
            assert down.status_code == 503
            assert down.json()["status"] == "down"


async def test_close_is_idempotent_and_frees_the_port() -> None:
    admin = AdminServer("127.0.0.1:0", service="xr-test")
    await admin.start()
    port = admin.port
    await admin.aclose()
    await admin.aclose()
    again = AdminServer(f"127.0.0.1:{port}", service="xr-test")
    await again.start()
    await again.aclose()
