"""Benchmark: per-target forwarding rate of the broadcaster vs JetStream's own stream sourcing.

    .venv/bin/xregion bench broadcaster [--events 30000] [--hot-events N] [--delays 0,0.05]
                                        [--rounds 3] [--json bench/results/broadcaster.json]

One run boots a local 3-region NATS super-cluster (1 server per region, fault proxy on the
gateways), provisions every region with the default settings, and starts `xregion
broadcaster` for us-east as a separate process. For each injected one-way gateway delay
(us-east <-> eu-west and us-east <-> ap-south, both directions):

* native   — `--events` events are written into XR_EVENTS_US_EAST, then a stream placed in
             eu-west that *sources* them (filtered on their subject) is created: the server
             copies them across the gateway (the yardstick: design (b) of docs/DESIGN.md
             "Broadcaster data path");
* floor    — the same number of events forwarded to XR_REPLAY_EU_WEST by the cheapest loop
             nats-py allows, in this (uvloop) process: a callback pull subscription on a
             durable consumer, each message published unchanged (headers dict as received)
             with a reply inbox, acked when its PubAck comes back; as many in flight as the
             broadcaster's default `window_events`, no decoding, no policy, no retries, no
             timeouts. No Python broadcaster built on nats-py can beat it: the "Python floor";
* floor-both — the same loop publishing each event to eu-west and ap-south, acking it when
             both PubAcks came (the floor of `both`, which forwards to two targets from one
             process);
* one      — the same number of events is written while every path out of us-east is paused
             (`xregion pause`'s switch), then eu-west alone is resumed: the broadcaster drains
             the backlog into XR_REPLAY_EU_WEST;
* both     — the same, resuming eu-west and ap-south together (rate per target);
* hot-10   — one target, `--hot-events` events (default: `--events`) over only 10 keys;
* hot-1    — the same with one key for all of them (a counter, a feature flag).

Every mode forwards the same kind of events from the same stream between the same clusters.
For each delay, native runs once, then `--rounds` rounds of floor, floor-both, one, both,
hot-10 and hot-1 one after the other; the report takes medians over the rounds, of each ratio
within its round.
Rates are measured on the target stream between 10 % and 90 % of the events (start-up of
either mechanism excluded), polling the stream every 10 ms from the target's own region, so
the injected delay does not blur the clock. Events carry distinct keys and a 256-byte body
unless said otherwise. Each phase's service is configured to go only to the targets that
phase measures, so no phase leaves a backlog for a later one. CPU: seconds of the forwarding
process (the broadcaster; for the floor, this bench process) per 1,000 forwarded events,
read over the same 10-90 % span (all processes share the same cores).

Targets (issue 14), per target and delay: uniform keys (`one`, `both`) >= 0.8x the floor row
(`floor`, and for `both` `floor-both`, of the same round and target), one hot key (`hot-1`)
>= 0.8x of `one`. The report prints those ratios; `--json` (default
bench/results/broadcaster.json) gets the rows and the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    Placement,
    StorageType,
    StreamConfig,
    StreamSource,
)
from results import machine as results_machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from procs import cpu_seconds

from services.broadcaster.pause import set_pause
from services.xregion.local.supercluster import SuperCluster, with_free_ports
from services.xregion.natsconf import build_topology
from shared import provision
from shared.envelope import Event, encode, new_traceparent
from shared.hlc import Hlc
from shared.ids import uuid7_str
from shared.natsconn import NatsConnection
from shared.regions import (
    broadcast_consumer,
    events_stream,
    events_subject,
    replay_stream,
    replay_subject,
)
from shared.settings import (
    BroadcasterSettings,
    NatsSettings,
    ServiceSettings,
    Settings,
    SigningSettings,
)
from tests.harness.toml import toml_value

ORIGIN = "us-east"
REGIONS = ("us-east", "eu-west", "ap-south")
TARGETS = ("eu-west", "ap-south")
BODY = bytes(range(256))
XREGION = Path(sys.executable).parent / "xregion"
# Native- and floor-phase events are written into the same events stream; the broadcaster is
# told (service targets = the origin only) to skip them, so they do not compete with its phases.
NATIVE_SERVICE = "bench-native"
FLOOR_SERVICE = "bench-floor"
RESULTS = Path(__file__).resolve().parent / "results" / "broadcaster.json"


@dataclass
class Row:
    delay_ms: int
    mode: str  # native | floor | floor-both | one | both | hot-10 | hot-1
    round: int  # 1.. (modes are measured once per round, interleaved; native once)
    target: str
    events: int
    seconds: float
    events_per_s: float
    cpu_s_per_1k: float | None


def _phase_service(mode: str, delay: float, rnd: int) -> str:
    return f"bench-{mode}-{int(delay * 1000)}-r{rnd}"


def _services(delays: list[float], rounds: int) -> dict[str, ServiceSettings]:
    """Every phase's events go exactly where that phase measures them, so no phase leaves
    a backlog (for a target paused meanwhile) that a later phase would pay for."""
    skip = [ORIGIN]
    targets: dict[str, list[str] | Literal["all"]] = {NATIVE_SERVICE: skip, FLOOR_SERVICE: skip}
    for delay in delays:
        for rnd in range(1, rounds + 1):
            targets[_phase_service("one", delay, rnd)] = ["eu-west"]
            targets[_phase_service("both", delay, rnd)] = "all"
            targets[_phase_service("hot-10", delay, rnd)] = ["eu-west"]
            targets[_phase_service("hot-1", delay, rnd)] = ["eu-west"]
    return {
        name: ServiceSettings(upstream="http://127.0.0.1:9", routes=[f"/{name}"], targets=t)
        for name, t in targets.items()
    }


def _settings(
    cluster: SuperCluster, region: str, data: Path, delays: list[float], rounds: int
) -> Settings:
    return Settings(
        region=region,
        regions=list(REGIONS),
        data_dir=data,
        nats=NatsSettings(servers=cluster.client_urls(region)),
        signing=SigningSettings(mode="off"),
        broadcaster=BroadcasterSettings(admin_listen="127.0.0.1:0"),
        services=_services(delays, rounds),
    )


def _region_file(path: Path, settings: Settings) -> Path:
    data = settings.model_dump(mode="json")
    lines = [f"{k} = {toml_value(data[k])}" for k in ("region", "regions", "data_dir")]
    for section in ("nats", "signing", "broadcaster"):
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in data[section].items() if v is not None]
    for name, service in data["services"].items():
        lines.append(f"[services.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in service.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


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


@dataclass
class Span:
    """From 10 % to 90 % of a phase's events stored: wall clock and forwarder CPU seconds."""

    start: float
    end: float
    cpu_start: float
    cpu_end: float

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 1e-6)


async def _measure(
    js: JetStreamContext, stream: str, subject: str, total: int, cpu: Callable[[], float]
) -> Span:
    """The span between 10 % and 90 % of `total` stored in `stream` on `subject`; `cpu`
    reads the forwarding process's CPU seconds (so its other work is not counted)."""
    low, high = total // 10, total - total // 10
    start: tuple[float, float] | None = None
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        count = await _count(js, stream, subject)
        now = time.perf_counter()
        if start is None and count >= low:
            start = (now, cpu())
        if count >= high and start is not None:
            return Span(start[0], now, start[1], cpu())
        await asyncio.sleep(0.01)
    raise TimeoutError(f"{stream}/{subject}: stuck below {high} of {total}")


def _no_cpu() -> float:
    return 0.0


class FloorForwarder:
    """The cheapest forwarding loop nats-py allows (the "floor" mode of the module docstring).

    Pull requests are plain publishes to `$JS.API.CONSUMER.MSG.NEXT`; messages and PubAcks
    arrive through callback subscriptions (no per-message task, future or timer). It keeps
    no promise a broadcaster must keep: it is a yardstick, not a design.
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        subjects: Sequence[str],
        total: int,
        window: int = 1024,
    ) -> None:
        self._nc = nc
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._subjects = subjects
        self._total = total
        self._window = window
        self._batch = max(1, window // 4)
        self._asked = 0  # messages requested and not yet received
        self._held: dict[str, list[Any]] = {}  # token: [source, PubAcks still to come]
        self._seq = 0
        self._acked = 0
        self._prefix = ""
        self._inbox = ""
        self._done = asyncio.Event()

    async def run(self) -> None:
        nc = self._nc
        self._inbox = nc.new_inbox()
        self._prefix = nc.new_inbox() + "."
        subs = [
            await nc.subscribe(self._inbox, cb=self._on_msg),
            await nc.subscribe(self._prefix + "*", cb=self._on_reply),
        ]
        try:
            await self._pull()
            await asyncio.wait_for(self._done.wait(), 300)
        finally:
            for sub in subs:
                await sub.unsubscribe()

    async def _pull(self) -> None:
        room = self._window - len(self._held) - self._asked
        if room >= self._batch:
            self._asked += self._batch
            request = json.dumps({"batch": self._batch, "expires": 2_000_000_000}).encode()
            await self._nc.publish(self._next, request, reply=self._inbox)

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers is not None and "Status" in headers:  # 408 expired, 409, 100 heartbeat
            self._asked -= int(headers.get("Nats-Pending-Messages", "0"))
            await self._pull()
            return
        self._asked -= 1
        self._seq += 1
        token = str(self._seq)
        self._held[token] = [msg, len(self._subjects)]
        for n, subject in enumerate(self._subjects):
            reply = f"{self._prefix}{token}-{n}"
            await self._nc.publish(subject, msg.data, reply=reply, headers=headers)

    async def _on_reply(self, reply: Msg) -> None:
        token = reply.subject[len(self._prefix) :].partition("-")[0]
        if b'"error"' in reply.data or not reply.data:
            raise RuntimeError(f"floor publish failed: {reply.data!r} {reply.headers}")
        held = self._held[token]
        held[1] -= 1
        if held[1]:
            return
        del self._held[token]
        await held[0].ack()
        self._acked += 1
        if self._acked >= self._total:
            self._done.set()
        await self._pull()


class Bench:
    def __init__(
        self, cluster: SuperCluster, workdir: Path, events: int, hot_events: int, rounds: int
    ) -> None:
        self.cluster = cluster
        self.rounds = rounds
        self.rnd = 1
        self.workdir = workdir
        self.events = events
        self.hot_events = hot_events
        self.rows: list[Row] = []
        self.outcomes: dict[str, dict[str, float]] = {}  # target -> outcome -> events
        self.admin_url = ""
        self.pid = 0
        self.conns: dict[str, NatsConnection] = {}

    def _target_js(self, target: str) -> JetStreamContext:
        """JetStream in the target's own region, to watch its streams without the delay."""
        return self.conns[target].jetstream()

    async def run(self, delays: list[float]) -> list[Row]:
        settings = _settings(self.cluster, ORIGIN, self.workdir / "data", delays, self.rounds)
        for region in REGIONS:
            s = _settings(self.cluster, region, self.workdir / "data", delays, self.rounds)
            async with NatsConnection(s.nats, service="bench") as conn:
                await provision.apply(conn.jetstream(), provision.plan(s, 1))
        config = _region_file(self.workdir / "us-east.toml", settings)
        async with contextlib.AsyncExitStack() as stack:
            for region in REGIONS:
                s = _settings(self.cluster, region, self.workdir / "data", delays, self.rounds)
                conn = NatsConnection(s.nats, service=f"bench-{region}")
                self.conns[region] = await stack.enter_async_context(conn)
            origin = self.conns[ORIGIN].jetstream()
            await self._pause(origin, TARGETS, paused=True)
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
                    self.rnd = 1
                    await self._native(origin, delay)
                    for rnd in range(1, self.rounds + 1):
                        self.rnd = rnd
                        await self._floor(delay, ("eu-west",))
                        await self._floor(delay, TARGETS)
                        await self._broadcast(origin, delay, ("eu-west",), None)
                        await self._broadcast(origin, delay, TARGETS, None)
                        await self._broadcast(origin, delay, ("eu-west",), 10)
                        await self._broadcast(origin, delay, ("eu-west",), 1)
                self.outcomes = await self._outcomes()
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

    async def _outcomes(self) -> dict[str, dict[str, float]]:
        """The broadcaster's `xr_broadcaster_forwarded_total` over the whole run, per target
        and outcome (retried and duplicate say how often the window was re-sent)."""
        async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
            text = (await http.get(self.admin_url + "/metrics")).text
        found: dict[str, dict[str, float]] = {}
        for line in text.splitlines():
            if line.startswith("xr_broadcaster_forwarded_total{"):
                labels, value = line[len("xr_broadcaster_forwarded_total{") :].rsplit("} ", 1)
                pairs = dict(p.split("=", 1) for p in labels.split(","))
                target, outcome = pairs["target"].strip('"'), pairs["outcome"].strip('"')
                found.setdefault(target, {})[outcome] = float(value)
        return found

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

    async def _caught_up(self, js: JetStreamContext) -> None:
        """Let every forwarder work off what earlier phases left it (events to skip, the last
        10 % of a phase), then pause them all: a phase starts with nothing owed anywhere."""
        await self._pause(js, TARGETS, paused=False)
        for _ in range(6000):
            owed = 0
            for target in TARGETS:
                info = await js.consumer_info(events_stream(ORIGIN), broadcast_consumer(target))
                owed += (info.num_pending or 0) + (info.num_ack_pending or 0)
            if not owed:
                break
            await asyncio.sleep(0.05)
        else:
            raise TimeoutError("the broadcaster did not catch up between phases")
        await self._pause(js, TARGETS, paused=True)
        await self._paused_seen(TARGETS)

    async def _native(self, js: JetStreamContext, delay: float) -> None:
        js_eu = self._target_js("eu-west")
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
            span = await _measure(js_eu, name, subject, self.events, _no_cpu)
        finally:
            await js_eu.delete_stream(name)
        self._row(delay, "native", "eu-west", span.seconds, None)

    async def _floor(self, delay: float, targets: tuple[str, ...]) -> None:
        """The Python floor (module docstring): FloorForwarder over a consumer of its own."""
        origin = self.conns[ORIGIN]
        js = origin.jetstream()
        service = FLOOR_SERVICE
        mode = "floor" if len(targets) == 1 else "floor-both"
        first = (await js.stream_info(events_stream(ORIGIN))).state.last_seq + 1
        await _preload(js, service, self.events, None)
        durable = f"bench-{mode}-{int(delay * 1000)}-r{self.rnd}"
        await js.add_consumer(
            events_stream(ORIGIN),
            ConsumerConfig(
                durable_name=durable,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=first,
                filter_subject=events_subject(ORIGIN, service),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=30,
                max_ack_pending=20_000,
            ),
        )
        suffix = f"{mode}-{int(delay * 1000)}-r{self.rnd}"
        subjects = [replay_subject(t, ORIGIN, f"{service}-{suffix}") for t in targets]
        window = BroadcasterSettings().window_events  # the broadcaster's default, for parity
        floor = FloorForwarder(
            origin.nc, events_stream(ORIGIN), durable, subjects, self.events, window
        )
        try:
            run = asyncio.ensure_future(floor.run())
            waits = [
                _measure(
                    self._target_js(t), replay_stream(t), subject, self.events, time.process_time
                )
                for t, subject in zip(targets, subjects, strict=True)
            ]
            spans = await asyncio.gather(*waits)
            await asyncio.wait_for(run, 60)
        finally:
            await js.delete_consumer(events_stream(ORIGIN), durable)
        used = max(sp.cpu_end for sp in spans) - min(sp.cpu_start for sp in spans)
        cpu = used / (self.events * 8 / 10 * len(targets) / 1000)
        for target, sp in zip(targets, spans, strict=True):
            self._row(delay, mode, target, sp.seconds, cpu)

    async def _broadcast(
        self, js: JetStreamContext, delay: float, targets: tuple[str, ...], keys: int | None
    ) -> None:
        mode = f"hot-{keys}" if keys else ("one" if len(targets) == 1 else "both")
        service = _phase_service(mode, delay, self.rnd)
        count = self.hot_events if keys else self.events
        await self._caught_up(js)
        await _preload(js, service, count, keys)
        await self._pause(js, targets, paused=False)
        waits = [
            _measure(
                self._target_js(t),
                replay_stream(t),
                replay_subject(t, ORIGIN, service),
                count,
                lambda: cpu_seconds(self.pid),
            )
            for t in targets
        ]
        spans = await asyncio.gather(*waits)
        # From the first target's 10 % to the last one's 90 %, per event measured (an
        # overestimate by at most the other target's 20 % outside its span).
        used = max(sp.cpu_end for sp in spans) - min(sp.cpu_start for sp in spans)
        cpu = used / (count * 8 / 10 * len(targets) / 1000)
        await self._pause(js, targets, paused=True)
        for target, sp in zip(targets, spans, strict=True):
            self._row(delay, mode, target, sp.seconds, cpu, count)

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
            self.rnd,
            target,
            events,
            round(seconds, 3),
            round(events / seconds),
            None if cpu is None else round(cpu, 3),
        )
        self.rows.append(row)
        print(f"  {row}", file=sys.stderr, flush=True)


def _median_ratio(values: list[float], bases: list[float]) -> str:
    ratios = [v / b for v, b in zip(values, bases, strict=False) if b]
    return f"{statistics.median(ratios):.2f}" if ratios else "-"


def _report(rows: list[Row]) -> str:
    """One line per (delay, mode, target): the median over rounds of events/s and CPU, and of
    the issue's ratios taken within each round (side by side, so load that drifts between
    rounds cancels): x native (same delay), x floor (same round), x one (uniform keys, same
    round and target: for the hot-key modes)."""
    head = f"{'delay':>6} {'mode':<7} {'target':<9} {'events/s':>9} {'x native':>9} {'x floor':>8}"
    lines = [f"{head} {'x one':>6} {'cpu s/1k':>9} {'rounds':>6}"]
    rate = {(r.delay_ms, r.mode, r.target, r.round): r.events_per_s for r in rows}
    groups: dict[tuple[int, str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.delay_ms, r.mode, r.target), []).append(r)
    for (delay, mode, target), group in groups.items():
        values = [float(r.events_per_s) for r in group]
        native = [rate.get((delay, "native", "eu-west", 1), 0.0)] * len(group)
        base, on = ("floor-both", target) if "both" in mode else ("floor", "eu-west")
        floor = [rate.get((delay, base, on, r.round), 0.0) for r in group]
        one = [rate.get((delay, "one", target, r.round), 0.0) for r in group]
        cpus = [r.cpu_s_per_1k for r in group if r.cpu_s_per_1k is not None]
        cpu = f"{statistics.median(cpus):.3f}" if cpus else "-"
        hot = _median_ratio(values, one) if mode.startswith("hot") else "-"
        lines.append(
            f"{delay:>4}ms {mode:<7} {target:<9} {round(statistics.median(values)):>9} "
            f"{_median_ratio(values, native):>9} {_median_ratio(values, floor):>8} "
            f"{hot:>6} {cpu:>9} {len(group):>6}"
        )
    return "\n".join(lines)


async def _main(events: int, hot: int, delays: list[float], rounds: int, workdir: Path) -> Bench:
    topology = with_free_ports(build_topology(REGIONS))
    async with SuperCluster(topology, workdir / "nats", fault_proxy=True) as cluster:
        bench = Bench(cluster, workdir, events, hot, rounds)
        await bench.run(delays)
        return bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="per phase")
    parser.add_argument(
        "--hot-events", type=int, default=None, help="per hot-key phase (default: --events)"
    )
    parser.add_argument("--delays", default="0,0.05", help="one-way gateway delays, seconds")
    parser.add_argument(
        "--rounds", type=int, default=3, help="times each mode is measured, interleaved"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="write the figures here")
    args = parser.parse_args(argv)
    delays = [float(d) for d in args.delays.split(",")]
    hot = args.events if args.hot_events is None else args.hot_events
    machine = results_machine()
    with tempfile.TemporaryDirectory(prefix="xr-bench-bc-") as tmp:
        bench = uvloop.run(_main(args.events, hot, delays, args.rounds, Path(tmp)))
    rows = bench.rows
    report = _report(rows)
    print(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(["xregion bench broadcaster", *(argv or sys.argv[1:])]),
        "machine": machine,
        "rows": [asdict(r) for r in rows],
        "broadcaster_outcomes": bench.outcomes,
        "report": report.splitlines(),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
