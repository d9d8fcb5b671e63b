"""Helpers of the replayer tests: region settings, events, publishing."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from services.bridge.versions import LocalVersions
from shared.envelope import Event, encode, new_traceparent, req_headers_from
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.natsconn import NatsConnection
from shared.regions import replay_subject
from shared.settings import ServiceSettings, Settings

__all__ = ["ORIGIN", "REGION", "SERVICE", "make_event", "make_settings", "publish"]

REGION = "eu-west"
ORIGIN = "us-east"
SERVICE = "catalog"
# A minute ago, so lag and canary ages are positive; offsets order events in a test.
_BASE_MS = time.time_ns() // 1_000_000 - 60_000


def make_settings(
    nats_urls: Sequence[str], upstream: str, tmp_path: Path, **replayer: Any
) -> Settings:
    options: dict[str, Any] = {
        "admin_listen": "127.0.0.1:0",
        "concurrency": 16,
        "fetch_timeout_s": 0.3,
        "ack_wait_s": 4.0,
        "upstream_timeout_s": 1.0,
        "upstream_connect_timeout_s": 0.5,
        "retry_total_s": 0.5,
        "retry_attempts": 3,
        "nak_base_s": 0.1,
        "nak_max_s": 0.5,
        "claim_busy_delay_s": 0.05,
        "metrics_poll_s": 0.5,
        "shutdown_timeout_s": 5.0,
        **replayer,
    }
    return Settings(
        region=REGION,
        regions=[REGION, ORIGIN],
        data_dir=tmp_path,
        nats={"servers": list(nats_urls), "first_connect_timeout_s": 10.0},  # type: ignore[arg-type]
        replayer=options,  # type: ignore[arg-type]
        signing={"mode": "off"},  # type: ignore[arg-type]
        services={SERVICE: ServiceSettings(upstream=upstream, routes=["/catalog"])},
    )


def make_event(
    path: str,
    *,
    hlc_ms: int = 0,
    logical: int = 0,
    body: bytes = b"{}",
    method: str = "PUT",
    service: str = SERVICE,
    key: str | None = None,
    origin: str = ORIGIN,
) -> Event:
    return Event(
        event_id=uuid7_str(),
        origin=origin,
        service=service,
        method=method,
        path=path,
        hlc=HlcStamp(_BASE_MS + hlc_ms, logical),
        key=key or path.split("?", 1)[0],
        body=body,
        trace=new_traceparent(),
        req_headers=req_headers_from({"Content-Type": "application/json"}),
    )


async def publish(
    js: JetStreamContext,
    event: Event,
    *,
    msg_id: bool = True,
    extra: dict[str, str] | None = None,
) -> None:
    headers, payload = encode(event)
    if not msg_id:
        del headers["Nats-Msg-Id"]
    headers.update(extra or {})
    await js.publish(replay_subject(REGION, event.origin, event.service), payload, headers=headers)


async def publish_raw(
    js: JetStreamContext, headers: dict[str, str], payload: bytes, service: str = SERVICE
) -> None:
    await js.publish(replay_subject(REGION, ORIGIN, service), payload, headers=headers)


async def record_local_write(settings: Settings, event: Event) -> str:
    """What the region's bridge does after a local write of `event` succeeded: raise the key's
    version record (services/bridge/versions.py); its outcome."""
    async with NatsConnection(settings.nats, service="test-bridge") as conn:
        versions = LocalVersions(
            conn, region=settings.region, owner="bridge-test", timeout_s=5, max_inflight=1
        )
        async with versions:
            return await versions.record(
                event.service, event.key, str(event.hlc), event.event_id, trace_id="test"
            )
