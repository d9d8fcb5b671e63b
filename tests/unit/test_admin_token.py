"""The admin port's optional bearer token, on a real aiohttp server: `/metrics` needs it,
`/readyz` without it says only ready or not (probes carry no secret), `/healthz` is open;
the operator tools' client sends `$XREGION_ADMIN_TOKEN`."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from services.xregion.ops.deployment import AdminEndpoint
from services.xregion.ops.scrape import ADMIN_TOKEN_ENV, admin_client, scrape_one
from shared.admin import AdminServer, CheckResult, Health
from shared.settings import BridgeSettings, BroadcasterSettings, ReplayerSettings

TOKEN = "s3cret-admin-token"


def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("xr_test_things_total", "things", registry=reg).inc()
    return reg


async def test_metrics_need_the_token_and_probes_do_not() -> None:
    state = {"outbox": CheckResult(Health.OK, "empty")}
    async with AdminServer(
        "127.0.0.1:0", service="xr-t", registry=registry(), token=TOKEN
    ) as admin:
        admin.add_check("outbox", lambda: state["outbox"])
        async with httpx.AsyncClient(base_url=admin.url) as http:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                refused = await http.get("/metrics", headers=headers)
                assert refused.status_code == 401
                assert refused.headers["WWW-Authenticate"].startswith("Bearer")
                assert "xr_test" not in refused.text
            good = {"Authorization": f"Bearer {TOKEN}"}
            assert "xr_test_things_total 1.0" in (await http.get("/metrics", headers=good)).text
            assert (await http.get("/healthz")).status_code == 200

            assert (await http.get("/readyz")).json() == {"status": "ok"}
            assert (await http.get("/readyz", headers=good)).json()["checks"]["outbox"] == {
                "status": "ok", "detail": "empty"
            }  # fmt: skip
            state["outbox"] = CheckResult(Health.DOWN, "disk full")
            down = await http.get("/readyz")
            assert (down.status_code, down.json()) == (503, {"status": "down"})


async def test_without_a_token_everything_is_open() -> None:
    admin = AdminServer("127.0.0.1:0", service="xr-t", registry=registry())
    async with admin, httpx.AsyncClient(base_url=admin.url) as http:
        assert (await http.get("/metrics")).status_code == 200
        assert "checks" in (await http.get("/readyz")).json()


async def test_the_operator_client_sends_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    async with AdminServer(
        "127.0.0.1:0", service="xr-t", registry=registry(), token=TOKEN
    ) as admin:
        endpoint = AdminEndpoint("us-east", "bridge", admin.url)
        monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
        async with admin_client(2.0) as client:
            without = await scrape_one(client, endpoint)
        assert (without.up, without.error, without.ready) == (False, "/metrics answered 401", "ok")
        monkeypatch.setenv(ADMIN_TOKEN_ENV, TOKEN)
        async with admin_client(2.0) as client:
            scraped = await scrape_one(client, endpoint)
        assert scraped.up
        assert scraped.samples("xr_test_things_total")[0].value == 1.0


def test_the_token_is_a_secret_in_the_settings() -> None:
    bridge = BridgeSettings.model_validate({"admin_token": TOKEN})
    assert bridge.admin_token is not None
    assert bridge.admin_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(bridge)
    assert TOKEN not in bridge.model_dump_json()
    assert ReplayerSettings().admin_token is None


def test_every_service_takes_an_admin_token() -> None:
    for section in (BridgeSettings, BroadcasterSettings, ReplayerSettings):
        token = section.model_validate({"admin_token": TOKEN}).admin_token
        assert token is not None
        assert token.get_secret_value() == TOKEN
