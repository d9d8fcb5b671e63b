"""Trusted keys on a real `xregion bridge` process: a replay marker counts only when a
*replayer* key of this region signed it (the bridge's own key, which signs events, does not),
and SIGHUP re-reads the trusted-keys file without a restart, a bad file keeping the keys in
use. The same process has an admin token: its readiness probe needs none, `/metrics` does."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.js import JetStreamContext

from services.xregion.local.supercluster import SuperCluster, free_ports
from shared.ids import uuid7_str
from shared.signing import ReplayMarker, Signer, sign_replay_marker
from tests.bridge.helpers import (
    REGION,
    BridgeProcess,
    http_client,
    region_file,
    send,
    stored_events,
)
from tests.bridge.upstream_app import TestUpstream
from tests.harness.keys import private_pem, trusted_entry
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVICE = "rotated"
PATH = f"/{SERVICE}/k"
ADMIN_TOKEN = "admin-token-for-the-test"


def marker_headers(signer: Signer) -> dict[str, str]:
    """A replay marker for a PUT of `r` to PATH, signed by `signer`, valid for a minute."""
    event_id, hlc = uuid7_str(), "001700000000000-000001"
    marker = ReplayMarker("eu-west", event_id, hlc, "PUT", PATH, b"r")
    sig = sign_replay_marker(signer, marker, expires_at=int(time.time()) + 60)
    return {"Xr-Replayed-From": "eu-west", "Xr-Event-Id": event_id, "Xr-Hlc": hlc,
            "Xr-Replayed-Sig": sig}  # fmt: skip


def logged(bridge: BridgeProcess, event: str) -> list[dict[str, Any]]:
    found = []
    for line in bridge.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == event:
            found.append(entry)
    return found


async def test_markers_need_a_replayer_key_and_sighup_rotates_them(
    bridge_cluster: SuperCluster, upstream: TestUpstream, js: JetStreamContext, tmp_path: Path
) -> None:
    ours, replayer, rotated = (Ed25519PrivateKey.generate() for _ in range(3))
    trusted = tmp_path / "trusted.toml"
    base = trusted_entry("us-east-1", ours, REGION, "bridge") + trusted_entry(
        "us-east-replayer-1", replayer, REGION, "replayer"
    )
    trusted.write_text(base)
    config = tmp_path / "region.toml"
    config.write_text(
        region_file(
            nats_urls=bridge_cluster.client_urls(REGION),
            data_dir=tmp_path / "data",
            services={SERVICE: {"upstream": upstream.url, "routes": [f"/{SERVICE}"]}},
            signing={
                "mode": "ed25519",
                "key_id": "us-east-1",
                "private_key_file": str(private_pem(tmp_path / "us-east-1.pem", ours)),
                "trusted_keys_file": str(trusted),
            },
            bridge={"admin_token": ADMIN_TOKEN},
        )
    )
    port, admin = free_ports(2)
    bridge = BridgeProcess(
        config, listen=f"127.0.0.1:{port}", admin_listen=f"127.0.0.1:{admin}",
        log=tmp_path / "bridge.log",
    )  # fmt: skip
    new = Signer("us-east-replayer-2", rotated)
    try:
        await bridge.start()
        async with http_client() as http:

            async def replay(signer: Signer) -> tuple[int, str]:
                reply = await send(http, "PUT", bridge.url, PATH, headers=marker_headers(signer),
                                   data=b"r")  # fmt: skip
                return reply.status, reply.body.decode()

            assert (await replay(Signer("us-east-replayer-1", replayer)))[0] == 200
            status, body = await replay(Signer("us-east-1", ours))  # the bridge's own key
            assert (status, "wrong_role" in body) == (400, True), body
            status, body = await replay(new)
            assert (status, "unknown_key" in body) == (400, True), body

            trusted.write_text(base + trusted_entry("us-east-replayer-2", rotated, REGION,
                                                    "replayer"))  # fmt: skip
            assert bridge.proc is not None
            bridge.proc.send_signal(signal.SIGHUP)
            [reloaded] = await wait_until(lambda: logged(bridge, "signing.trusted_keys_reloaded"),
                                          20, message="reload logged")  # fmt: skip
            assert "us-east-replayer-2" in reloaded["key_ids"]
            assert (await replay(new))[0] == 200

            trusted.write_text('[keys."us-east-1"]\nregion = "us-east"\n')
            bridge.proc.send_signal(signal.SIGHUP)
            [failed] = await wait_until(
                lambda: logged(bridge, "signing.trusted_keys_reload_failed"), 20,
                message="failure logged",
            )  # fmt: skip
            assert failed["level"] == "error"
            assert "roles" in failed["error"]
            assert (await replay(new))[0] == 200
            # The admin token: readiness (what start() waited on) needs none, metrics do.
            async with httpx.AsyncClient(base_url=bridge.admin_url, timeout=2.0) as admin_http:
                assert (await admin_http.get("/metrics")).status_code == 401
                authorized = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
                metrics = await admin_http.get("/metrics", headers=authorized)
                assert 'xr_bridge_replay_markers_refused_total{reason="wrong_role"}' in metrics.text
        assert await bridge.terminate() == 0
    finally:
        await bridge.stop()
    assert await stored_events(js, SERVICE) == []  # replays are proxied, never published
