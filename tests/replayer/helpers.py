"""Helpers of the replayer tests: region settings and files, events, publishing, what the
replayer recorded (outcome counters, dead letters), a socket that must never be dialled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from services.bridge.versions import LocalVersions
from shared.envelope import Event, encode, new_traceparent, req_headers_from
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.natsconn import NatsConnection
from shared.regions import dlq_stream, replay_subject
from shared.settings import ServiceSettings, Settings
from tests.harness.toml import write_region_toml

__all__ = [
    "ORIGIN",
    "REGION",
    "SERVICE",
    "Trap",
    "count",
    "dead_letters",
    "make_event",
    "make_settings",
    "publish",
    "publish_raw",
    "record_local_write",
    "region_toml",
]

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


def region_toml(
    settings: Settings,
    path: Path,
    *,
    replayer: Mapping[str, Any] | None = None,
    signing: Mapping[str, Any] | None = None,
) -> Path:
    """`settings` as the region file an `xregion replayer` process reads, written to `path`
    (data_dir: its directory). `replayer` and `signing` replace those tables (default: the
    process tests' replayer from `settings`, signing off)."""
    return write_region_toml(
        path,
        {
            "region": REGION,
            "regions": [REGION, ORIGIN],
            "data_dir": str(path.parent),
            "nats": {"servers": list(settings.nats.servers)},
            "signing": signing or {"mode": "off"},
            "replayer": replayer or _process_replayer(settings),
            "services": {
                SERVICE: {"upstream": settings.services[SERVICE].upstream, "routes": ["/catalog"]}
            },
        },
    )


def _process_replayer(settings: Settings) -> dict[str, Any]:
    r = settings.replayer
    return {
        "admin_listen": "127.0.0.1:0",
        "concurrency": 8,
        "fetch_timeout_s": 0.3,
        "ack_wait_s": r.ack_wait_s,
        "upstream_timeout_s": r.upstream_timeout_s,
        "retry_total_s": r.retry_total_s,
        "shutdown_timeout_s": 5.0,
    }


def count(outcome: str) -> float:
    """xr_replayer_events_total for ORIGIN/SERVICE and `outcome`, in this process."""
    value = REGISTRY.get_sample_value(
        "xr_replayer_events_total", {"origin": ORIGIN, "service": SERVICE, "outcome": outcome}
    )
    return value or 0.0


async def dead_letters(js: JetStreamContext) -> list[dict[str, str]]:
    """The headers of every dead letter of REGION, plus its subject as `_subject`."""
    found: list[dict[str, str]] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(dlq_stream(REGION), seq=seq, subject=f"xr.dlq.{REGION}.>",
                                   next=True)  # fmt: skip
        except NotFoundError:
            return found
        found.append({**(msg.headers or {}), "_subject": msg.subject or ""})
        seq = int(msg.seq or seq) + 1


class Trap:
    """A listening socket that must never be connected to."""

    def __init__(self) -> None:
        self.hits = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Trap:
        self._server = await asyncio.start_server(self._hit, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _hit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        writer.close()
