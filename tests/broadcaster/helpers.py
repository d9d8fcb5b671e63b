"""Helpers for the broadcaster tests: settings and region files, events written straight into
the origin's events stream, reading what reached the replay streams, a broadcaster as a real
process."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from services.xregion.local.supercluster import SuperCluster
from shared.envelope import Event, encode, new_traceparent
from shared.hlc import Hlc
from shared.ids import uuid7_str
from shared.regions import events_subject, replay_stream, replay_subject
from shared.settings import (
    BroadcasterSettings,
    NatsSettings,
    ServiceSettings,
    Settings,
    SigningSettings,
)
from tests.harness.provisioning import provision_region
from tests.harness.toml import write_region_toml
from tests.harness.wait import wait_until

__all__ = [
    "JS_TRANSIENT",
    "ORIGIN",
    "REGIONS",
    "TARGETS",
    "TEST_BROADCASTER",
    "XREGION",
    "BroadcasterProcess",
    "Producer",
    "Stored",
    "bc_settings",
    "count_replay",
    "key_orders",
    "metric_value",
    "provision_all",
    "read_replay",
    "write_region_file",
]

REGIONS = ("us-east", "eu-west", "ap-south")
ORIGIN = "us-east"
TARGETS = ("eu-west", "ap-south")
XREGION = Path(sys.executable).parent / "xregion"
# Answers a JetStream API call can get for a moment in a super-cluster (docs/NATS.md §3.2).
JS_TRANSIENT = (NoStreamResponseError, ServiceUnavailableError, NatsTimeoutError)

# Short waits so failures, pauses and redeliveries show within seconds.
TEST_BROADCASTER: dict[str, Any] = {
    "admin_listen": "127.0.0.1:0",
    "fetch_timeout_s": 0.25,
    "publish_timeout_s": 1.0,
    "ack_wait_s": 3.0,
    "retry_base_s": 0.05,
    "retry_max_s": 0.5,
    "canary_interval_s": 1.0,
    "control_poll_s": 0.1,
    "metrics_poll_s": 0.25,
    "shutdown_timeout_s": 5.0,
}


def bc_settings(
    cluster: SuperCluster,
    region: str = ORIGIN,
    *,
    services: Mapping[str, Mapping[str, Any]] | None = None,
    **broadcaster: Any,
) -> Settings:
    return Settings(
        region=region,
        regions=list(REGIONS),
        data_dir=cluster.workdir / "data" / region,
        nats=NatsSettings(
            servers=cluster.client_urls(region),
            first_connect_timeout_s=10,
            reconnect_wait_s=0.1,
            reconnect_wait_max_s=0.5,
        ),
        signing=SigningSettings(mode="off"),
        broadcaster=BroadcasterSettings(**{**TEST_BROADCASTER, **broadcaster}),
        services={name: ServiceSettings(**s) for name, s in (services or {}).items()},
    )


def write_region_file(path: Path, settings: Settings) -> Path:
    """`settings` as a region TOML file (the tables the broadcaster tests use)."""
    data = settings.model_dump(mode="json")
    return write_region_toml(path, data, tables=("nats", "signing", "broadcaster"))


async def provision_all(cluster: SuperCluster) -> None:
    """Provision every region with the test settings (ack_wait as TEST_BROADCASTER)."""
    for region in REGIONS:
        await provision_region(bc_settings(cluster, region))


@dataclass(frozen=True)
class Sent:
    event_id: str
    key: str
    seq: int
    at: float  # wall time of the origin stream's ack


class Producer:
    """Writes events for one service straight into the origin's events stream, as the bridge
    would, and remembers them in order."""

    def __init__(self, js: JetStreamContext, service: str, *, keys: int = 1_000_000) -> None:
        self._js = js
        self.service = service
        self._keys = keys
        self._hlc = Hlc()
        self.sent: list[Sent] = []

    def event(self, n: int, *, targets: tuple[str, ...] | None = None) -> Event:
        return Event(
            event_id=uuid7_str(),
            origin=ORIGIN,
            service=self.service,
            method="PUT",
            path=f"/{self.service}/items/{n}?v=1",
            hlc=self._hlc.now(),
            key=f"/{self.service}/items/{n % self._keys}",
            body=json.dumps({"n": n}).encode(),
            trace=new_traceparent(),
            req_headers=(("content-type", "application/json"),),
            targets=targets,
        )

    async def send(self, count: int = 1, *, targets: tuple[str, ...] | None = None) -> None:
        for _ in range(count):
            await self.send_event(self.event(len(self.sent), targets=targets))

    async def send_event(self, event: Event) -> None:
        headers, payload = encode(event)
        ack = await self._js.publish(
            events_subject(ORIGIN, self.service), payload, headers=headers, timeout=5
        )
        self.sent.append(Sent(event.event_id, event.key, ack.seq, time.time()))

    async def run_for(self, seconds: float, rate_per_s: float) -> None:
        """Send at a steady rate for `seconds` (the pacing is the traffic, not a wait)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        while (elapsed := loop.time() - start) < seconds:
            due = int(elapsed * rate_per_s) + 1
            if due > sent:
                await self.send(due - sent)
                sent = due
            await asyncio.sleep(1 / rate_per_s)

    @property
    def ids(self) -> list[str]:
        return [s.event_id for s in self.sent]

    def key_orders(self) -> dict[str, list[str]]:
        return key_orders((s.key, s.event_id) for s in self.sent)


def key_orders(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """(key, event id) pairs in arrival order -> the event ids of each key, in that order."""
    order: dict[str, list[str]] = {}
    for key, event_id in pairs:
        order.setdefault(key, []).append(event_id)
    return order


@dataclass(frozen=True)
class Stored:
    subject: str
    headers: dict[str, str]
    data: bytes
    at: float  # wall time the replay stream stored it


async def count_replay(js: JetStreamContext, target: str, service: str) -> int:
    """Messages from ORIGIN for `service` in `target`'s replay stream."""
    subject = replay_subject(target, ORIGIN, service)

    async def count() -> tuple[int]:
        info = await js.stream_info(replay_stream(target), subjects_filter=subject)
        return (int((info.state.subjects or {}).get(subject, 0)),)

    (found,) = await wait_until(
        count,
        15,
        interval=0.1,
        ignore=JS_TRANSIENT,
        message=f"stream info of {replay_stream(target)}",
    )
    return found


async def read_replay(js: JetStreamContext, target: str, service: str) -> list[Stored]:
    """Every message from ORIGIN for `service` in `target`'s replay stream, in stream order."""
    expected = await count_replay(js, target, service)
    if expected == 0:
        return []

    async def read() -> list[Stored]:
        return await _read(js, target, service, expected)

    return await wait_until(
        read,
        30,
        interval=0.2,
        ignore=JS_TRANSIENT,
        message=f"{expected} messages read from {replay_stream(target)}",
    )


async def _read(js: JetStreamContext, target: str, service: str, expected: int) -> list[Stored]:
    config = ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=10
    )
    sub = await js.pull_subscribe(
        replay_subject(target, ORIGIN, service), stream=replay_stream(target), config=config
    )
    found: list[Stored] = []
    try:
        while len(found) < expected:
            for msg in await sub.fetch(min(1000, expected - len(found)), timeout=5):
                stored_at = msg.metadata.timestamp.timestamp()
                found.append(Stored(msg.subject, dict(msg.headers or {}), msg.data, stored_at))
    finally:
        await sub.unsubscribe()
    return found


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        sample, value = line.rsplit(" ", 1)
        sample_name, _, rest = sample.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample_name == name and got == wanted:
            return float(value)
    return 0.0


class BroadcasterProcess:
    """`xregion broadcaster --config F` as a real process; always stopped by its owner."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self._config = config
        self._log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.admin_url = ""

    def log_lines(self) -> list[dict[str, Any]]:
        if not self._log_path.exists():
            return []
        lines = []
        for raw in self._log_path.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                lines.append({"event": "(not json)", "raw": raw})
        return lines

    async def start(self, timeout_s: float = 60) -> None:
        with self._log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(XREGION),
                "--log-format",
                "json",
                "broadcaster",
                "--config",
                str(self._config),
                stdout=log,
                stderr=log,
            )
        await wait_until(self._ready, timeout_s, interval=0.1, message="broadcaster ready")

    def _started_line(self) -> dict[str, Any] | None:
        return next((e for e in self.log_lines() if e.get("event") == "broadcaster.started"), None)

    async def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            code = self.proc.returncode
            raise RuntimeError(f"broadcaster exited with {code}: {self.log_lines()}")
        started = self._started_line()
        if started is None:
            return False
        self.admin_url = started["admin_url"]
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            reply = await http.get(self.admin_url + "/readyz")
        return reply.status_code == 200 and reply.json()["status"] == "ok"

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as http:
            return (await http.get(self.admin_url + "/metrics")).text

    async def kill(self) -> None:
        """SIGKILL and reap: no shutdown code runs."""
        await self._signal(signal.SIGKILL)

    async def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM (graceful shutdown); the exit code."""
        return await self._signal(signal.SIGTERM, timeout_s)

    async def _signal(self, sig: signal.Signals, timeout_s: float = 10) -> int:
        proc = self.proc
        if proc is None:
            return 0
        if proc.returncode is None:
            proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
        assert proc.returncode is not None
        return proc.returncode

    async def stop(self) -> None:
        """Teardown: whatever state it is in, the process is gone afterwards."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
