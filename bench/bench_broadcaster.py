"""Benchmark: per-target forwarding rate of the broadcaster vs JetStream's own stream sourcing.

    .venv/bin/python bench/bench_broadcaster.py [--events 20000] [--delays 0,0.05] [--json F]

One run boots a local 3-region NATS super-cluster (1 server per region, fault proxy on the
gateways), provisions every region with the default settings, and starts `xregion
broadcaster` for us-east as a separate process. For each injected one-way gateway delay
(us-east <-> eu-west and us-east <-> ap-south, both directions):

* native   — `--events` events are written into XR_EVENTS_US_EAST, then a stream placed in
             eu-west that *sources* them (filtered on their subject) is created: the server
             copies them across the gateway (the yardstick, NATS_NOTES §1.7);
* one      — the same number of events is written while every path out of us-east is paused
             (`xregion pause`'s switch), then eu-west alone is resumed: the broadcaster drains
             the backlog into XR_REPLAY_EU_WEST;
* both     — the same, resuming eu-west and ap-south together (rate per target);
* hot-10   — one target, 1/10 of the events spread over only 10 keys (each key is sent one
             event per round trip: the price of per-key order, forwarder.py).

Rates are measured on the target stream between 10 % and 90 % of the events (start-up of
either mechanism excluded), polling the stream from its own region. Events carry distinct
keys and a 256-byte body unless said otherwise. CPU: seconds of the broadcaster process per
1,000 forwarded events (all processes share the same cores).

Targets (issue 4): >= 1,000 events/s for one target with 50 ms one-way delay, and >= 0.5x the
native sourcing throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import uvloop
from nats.js import JetStreamContext
from nats.js.api import Placement, StorageType, StreamConfig, StreamSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.broadcaster.pause import set_pause
from services.xregion.natsconf import build_topology
from services.xregion.supercluster import SuperCluster, with_free_ports
from shared import provision
from shared.envelope import Event, encode, new_traceparent
from shared.hlc import Hlc
from shared.ids import uuid7_str
from shared.natsconn import NatsConnection
from shared.regions import events_stream, events_subject, replay_stream, replay_subject
from shared.settings import (
    BroadcasterSettings,
    NatsSettings,
    ServiceSettings,
    Settings,
    SigningSettings,
)

ORIGIN = "us-east"
REGIONS = ("us-east", "eu-west", "ap-south")
TARGETS = ("eu-west", "ap-south")
BODY = bytes(range(256))
XREGION = Path(sys.executable).parent / "xregion"
_TICKS = os.sysconf("SC_CLK_TCK")
# Native-phase events are written into the same events stream; the broadcaster is told
# (service targets = the origin only) to skip them, so they do not compete with its phases.
NATIVE_SERVICE = "bench-native"


@dataclass
class Row:
    delay_ms: int
    mode: str  # native | one | both | hot-10
    target: str
    events: int
    seconds: float
    events_per_s: float
    cpu_s_per_1k: float | None


def _settings(cluster: SuperCluster, region: str, data: Path) -> Settings:
    return Settings(
        region=region,
        regions=list(REGIONS),
        data_dir=data,
        nats=NatsSettings(servers=cluster.client_urls(region)),
        signing=SigningSettings(mode="off"),
        broadcaster=BroadcasterSettings(admin_listen="127.0.0.1:0"),
        services={
            NATIVE_SERVICE: ServiceSettings(
                upstream="http://127.0.0.1:9", routes=["/n"], targets=[ORIGIN]
            )
        },
    )


def _region_file(path: Path, settings: Settings) -> Path:
    data = settings.model_dump(mode="json")
    lines = [f"{k} = {json.dumps(data[k])}" for k in ("region", "regions", "data_dir")]
    for section in ("nats", "signing", "broadcaster"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in data[section].items() if v is not None]
    for name, service in data["services"].items():
        lines.append(f"[services.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in service.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


async def _preload(js: JetStreamContext, service: str, count: int, keys: int | None) -> None:
    """Write `count` events for `service` into the origin's events stream, pipelined."""
    hlc = Hlc()
    subject = events_subject(ORIGIN, service)
    pending: list[asyncio.Future[Any]] = []
    for n in range(count):
        event = Event(
            event_id=uuid7_str(),
            origin=ORIGIN,
            service=service,
            method="PUT",
            path=f"/{service}/{n}",
            hlc=hlc.now(),
            key=f"/{service}/{n if keys is None else n % keys}",
            body=BODY,
            trace=new_traceparent(),
        )
        headers, payload = encode(event)
        pending.append(await js.publish_async(subject, payload, headers=headers))
        if len(pending) >= 2000:
            await asyncio.gather(*(asyncio.wait_for(f, 30) for f in pending))
            pending.clear()
    await asyncio.gather(*(asyncio.wait_for(f, 30) for f in pending))


async def _count(js: JetStreamContext, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


async def _measure(js: JetStreamContext, stream: str, subject: str, total: int) -> float:
    """Seconds between 10 % and 90 % of `total` stored in `stream` on `subject`."""
    low, high = total // 10, total - total // 10
    t_low: float | None = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        count = await _count(js, stream, subject)
        now = time.perf_counter()
        if t_low is None and count >= low:
            t_low = now
        if count >= high and t_low is not None:
            return max(now - t_low, 1e-6)
        await asyncio.sleep(0.02)
    raise TimeoutError(f"{stream}/{subject}: stuck below {high} of {total}")


class Bench:
    def __init__(self, cluster: SuperCluster, workdir: Path, events: int) -> None:
        self.cluster = cluster
        self.workdir = workdir
        self.events = events
        self.rows: list[Row] = []
        self.admin_url = ""
        self.pid = 0

    async def run(self, delays: list[float]) -> list[Row]:
        settings = _settings(self.cluster, ORIGIN, self.workdir / "data")
        for region in REGIONS:
            s = _settings(self.cluster, region, self.workdir / "data")
            async with NatsConnection(s.nats, service="bench") as conn:
                await provision.apply(conn.jetstream(), provision.plan(s, 1))
        config = _region_file(self.workdir / "us-east.toml", settings)
        eu_settings = _settings(self.cluster, "eu-west", self.workdir / "data")
        async with (
            NatsConnection(settings.nats, service="bench") as origin,
            NatsConnection(eu_settings.nats, service="bench-eu") as eu_west,
        ):
            await self._pause(origin.jetstream(), TARGETS, paused=True)
            log = (self.workdir / "broadcaster.log").open("wb")
            proc = await asyncio.create_subprocess_exec(
                str(XREGION),
                "--log-level",
                "info",
                "--log-format",
                "json",
                "broadcaster",
                "--config",
                str(config),
                stdout=log,
                stderr=log,
            )
            try:
                self.pid = proc.pid
                await self._wait_started()
                for delay in delays:
                    await self._delay(delay)
                    await self._native(origin.jetstream(), eu_west.jetstream(), delay)
                    await self._broadcast(origin.jetstream(), delay, ("eu-west",), None)
                    await self._broadcast(origin.jetstream(), delay, TARGETS, None)
                    await self._broadcast(origin.jetstream(), delay, ("eu-west",), 10)
            finally:
                proc.terminate()
                await asyncio.wait_for(proc.wait(), 30)
                log.close()
        return self.rows

    async def _delay(self, seconds: float) -> None:
        await self.cluster.faults.heal_all()
        for target in TARGETS:
            await self.cluster.faults.set_latency(ORIGIN, target, seconds)

    async def _wait_started(self) -> None:
        log = self.workdir / "broadcaster.log"
        for _ in range(600):
            for line in log.read_text(errors="replace").splitlines():
                entry = json.loads(line) if line.startswith("{") else {}
                if entry.get("event") == "broadcaster.started":
                    self.admin_url = entry["admin_url"]
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError("broadcaster did not start: " + log.read_text()[-2000:])

    async def _pause(self, js: JetStreamContext, targets: tuple[str, ...], *, paused: bool) -> None:
        for target in targets:
            await set_pause(js, ORIGIN, target, paused=paused)

    async def _paused_seen(self, targets: tuple[str, ...]) -> None:
        """Wait until the broadcaster reports every target in `targets` paused."""
        wanted = "paused: " + ", ".join(sorted(targets))
        async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
            for _ in range(200):
                reply = (await http.get(self.admin_url + "/readyz")).json()
                if reply["checks"]["targets"]["detail"].startswith(wanted):
                    return
                await asyncio.sleep(0.05)
        raise TimeoutError(f"broadcaster never reported {wanted!r}")

    async def _native(self, js: JetStreamContext, js_eu: JetStreamContext, delay: float) -> None:
        service = NATIVE_SERVICE
        first = (await js.stream_info(events_stream(ORIGIN))).state.last_seq + 1
        await _preload(js, service, self.events, None)
        name = f"BENCH_NATIVE_{int(delay * 1000)}"
        subject = events_subject(ORIGIN, service)
        await js_eu.add_stream(
            StreamConfig(
                name=name,
                storage=StorageType.FILE,
                num_replicas=1,
                placement=Placement(cluster="eu-west"),
                sources=[
                    StreamSource(
                        name=events_stream(ORIGIN), opt_start_seq=first, filter_subject=subject
                    )
                ],
            )
        )
        try:
            seconds = await _measure(js_eu, name, subject, self.events)
        finally:
            await js_eu.delete_stream(name)
        self._row(delay, "native", "eu-west", seconds, None)

    async def _broadcast(
        self, js: JetStreamContext, delay: float, targets: tuple[str, ...], keys: int | None
    ) -> None:
        mode = "hot-10" if keys else ("one" if len(targets) == 1 else "both")
        service = f"bench-{mode}-{int(delay * 1000)}"
        count = self.events // 10 if keys else self.events
        await self._paused_seen(TARGETS)
        await _preload(js, service, count, keys)
        cpu_before = _cpu_seconds(self.pid)
        await self._pause(js, targets, paused=False)
        waits = [
            _measure(js, replay_stream(t), replay_subject(t, ORIGIN, service), count)
            for t in targets
        ]
        seconds = await asyncio.gather(*waits)
        cpu = (_cpu_seconds(self.pid) - cpu_before) / (count * len(targets) / 1000)
        await self._pause(js, targets, paused=True)
        for target, s in zip(targets, seconds, strict=True):
            self._row(delay, mode, target, s, cpu, count)

    def _row(
        self,
        delay: float,
        mode: str,
        target: str,
        seconds: float,
        cpu: float | None,
        count: int | None = None,
    ) -> None:
        events = (count or self.events) * 8 // 10
        row = Row(
            int(delay * 1000),
            mode,
            target,
            events,
            round(seconds, 3),
            round(events / seconds),
            None if cpu is None else round(cpu, 3),
        )
        self.rows.append(row)
        print(f"  {row}", file=sys.stderr, flush=True)


def _report(rows: list[Row]) -> str:
    lines = [
        f"{'delay':>6} {'mode':<7} {'target':<9} {'events/s':>9} {'x native':>9} {'cpu s/1k':>9}"
    ]
    native = {r.delay_ms: r.events_per_s for r in rows if r.mode == "native"}
    for r in rows:
        ratio = r.events_per_s / native[r.delay_ms] if native.get(r.delay_ms) else float("nan")
        cpu = "-" if r.cpu_s_per_1k is None else f"{r.cpu_s_per_1k:.3f}"
        lines.append(
            f"{r.delay_ms:>4}ms {r.mode:<7} {r.target:<9} {r.events_per_s:>9} "
            f"{ratio:>9.2f} {cpu:>9}"
        )
    return "\n".join(lines)


async def _main(events: int, delays: list[float], workdir: Path) -> list[Row]:
    topology = with_free_ports(build_topology(REGIONS))
    async with SuperCluster(topology, workdir / "nats", fault_proxy=True) as cluster:
        return await Bench(cluster, workdir, events).run(delays)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="per phase")
    parser.add_argument("--delays", default="0,0.05", help="one-way gateway delays, seconds")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    delays = [float(d) for d in args.delays.split(",")]
    with tempfile.TemporaryDirectory(prefix="xr-bench-bc-") as tmp:
        rows = uvloop.run(_main(args.events, delays, Path(tmp)))
    print(_report(rows))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
