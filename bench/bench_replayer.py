"""Benchmark: drain rate of a replay backlog with 1 and 2 replayer processes.

    .venv/bin/python bench/bench_replayer.py [--events 50000] [--keys 5000] [--runs 1,2]
        [--log-level info|warning] [--json out.json] [--keep DIR] [--profile DIR]

One run boots a local 3-region NATS super-cluster (1 server per region), provisions eu-west
with the default settings, and starts a fast aiohttp service in its own process (it answers
200 at once and counts calls per `Idempotency-Key`). For each instance count in `--runs`:

* `--events` events (`--keys` distinct keys, 256-byte body, stream order = HLC order; a
  share `--apply-share`, default half, are `apply` PATCHes on keys of their own, the rest
  `replace` PUTs; with `--creates` every event is an `apply` POST to one collection key) are
  published into XR_REPLAY_EU_WEST with publish_async windows, under a service name of their
  own (`bench-<n>`), so every run starts from fresh version records;
* that many `xregion replayer --config` processes are started (real processes: per-process
  CPU; each gets its own admin port through `XR_REPLAYER__ADMIN_LISTEN`) and drain the
  backlog until the consumer has nothing pending or unacked.

Rates are measured between 10 % and 90 % of the backlog acked (start-up and tail
excluded); CPU seconds per 1,000 events (utime+stime from /proc) over the same window, for
the replayer processes together, the nats-server processes and the service. An event is
acked `applied` or `stale` (with 2 instances one key's events are split between processes,
and an event that finds a newer version already claimed is superseded, by design). Checks,
from the service and each replayer's /metrics: no event id called twice, each key's calls in
strictly increasing HLC order, the newest event of every key applied, applied + stale =
events, applied = distinct event ids called, nothing dead-lettered; a failed check makes the
exit status 1. `--profile DIR` runs the replayers under cProfile (DIR/<run>-<n>.prof).

All processes share this machine's cores: with 2 replayers, nats-server and the service on
2 cores, the per-process rate is bounded by the CPU per event of all of them together.

Targets: >= 3,000 events/s per replayer process with half the events `apply`; >= 2,000
creates/s into one collection through one replayer (`--creates --runs 1`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web
from procs import cpu_seconds, pids_using, process, wait_http
from results import machine, write_result

REGION = "eu-west"
ORIGIN = "us-east"
REGIONS = ("us-east", "eu-west", "ap-south")
BODY = bytes(range(256))
TARGET_PER_PROCESS = 3000.0
XREGION = Path(sys.executable).parent / "xregion"


# --------------------------------------------------------------------------- the service


class _Counts:
    """Calls per Idempotency-Key and per-key HLC order, as seen by the service."""

    def __init__(self) -> None:
        self.calls = 0
        self.seen: set[str] = set()
        self.repeats = 0
        self.out_of_order = 0
        self.newest: dict[str, str] = {}  # path -> newest Xr-Hlc called
        self.newest_id: dict[str, str] = {}  # path -> its Idempotency-Key

    def record(self, path: str, event_id: str, hlc: str) -> None:
        self.calls += 1
        if event_id in self.seen:
            self.repeats += 1
        self.seen.add(event_id)
        if "/notes/" in path:
            return  # `apply` events: applied once each, in any order across instances
        if hlc <= self.newest.get(path, ""):
            self.out_of_order += 1
        else:
            self.newest[path] = hlc
            self.newest_id[path] = event_id

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "distinct": len(self.seen),
            "repeats": self.repeats,
            "out_of_order": self.out_of_order,
            "newest": self.newest_id,
        }


async def _serve(port: int) -> None:
    counts: dict[str, _Counts] = {}  # by service: the first path segment

    async def handle(request: web.BaseRequest) -> web.Response:
        if request.method == "GET" and request.path == "/_stats":
            service = request.query.get("service", "")
            return web.json_response(counts.get(service, _Counts()).stats())
        await request.read()
        h = request.headers
        service = request.path.split("/", 2)[1]
        tally = counts.get(service) or counts.setdefault(service, _Counts())
        tally.record(request.path, h.get("Idempotency-Key", ""), h.get("Xr-Hlc", ""))
        return web.Response(status=200)

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# --------------------------------------------------------------------------- processes


def _region_file(path: Path, nats_urls: list[str], upstream: str, services: list[str]) -> Path:
    lines = [
        f'region = "{REGION}"',
        f"regions = {json.dumps(list(REGIONS))}",
        f'data_dir = "{path.parent / "data"}"',
        "[nats]",
        f"servers = {json.dumps(nats_urls)}",
        "[signing]",
        'mode = "off"',
        "[replayer]",
        'admin_listen = "127.0.0.1:0"',
    ]
    for name in services:
        lines += [f"[services.{name}]", f'upstream = "{upstream}"', f'routes = ["/{name}"]']
    path.write_text("\n".join(lines) + "\n")
    return path


async def _started(admin_url: str, proc: asyncio.subprocess.Process) -> None:
    """Wait until the replayer answers /readyz (or exits)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(admin_url + "/readyz") as reply:
                    if reply.status == 200:
                        return
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
    raise RuntimeError(f"replayer pid {proc.pid} did not become ready")


async def _outcomes(http: aiohttp.ClientSession, admin_url: str, service: str) -> dict[str, float]:
    async with http.get(admin_url + "/metrics") as reply:
        text = await reply.text()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("xr_replayer_events_total{") and f'service="{service}"' in line:
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            found[outcome] = found.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    instances: int
    events: int
    keys: int
    publish_s: float
    drain_s: float  # first process start to nothing pending or unacked
    window_events: int  # 10 % .. 90 %
    window_s: float
    events_per_s: float
    per_process: float
    cpu_s_per_1k: float  # the replayer processes together
    nats_cpu_s_per_1k: float  # the nats-server processes (all three regions)
    service_cpu_s_per_1k: float
    cpu_per_process: list[float] = field(default_factory=list)
    outcomes: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


class Bench:
    def __init__(
        self,
        workdir: Path,
        events: int,
        keys: int,
        log_level: str,
        profile: Path | None,
        *,
        apply_share: float = 0.5,
        creates: bool = False,
    ) -> None:
        self.apply_share = apply_share
        self.creates = creates
        self.workdir = workdir
        self.events = events
        self.keys = keys
        self.log_level = log_level
        self.profile = profile
        self.others: dict[str, list[int]] = {}  # nats, service: CPU measured alongside

    def _profiled(self, name: str) -> tuple[str, ...]:
        """With --profile DIR: run the replayer under cProfile, stats in DIR/<name>.prof."""
        if self.profile is None:
            return ()
        return (sys.executable, "-m", "cProfile", "-o", str(self.profile / f"{name}.prof"))

    async def run(self, runs: list[int]) -> list[Run]:
        from services.xregion.local.supercluster import SuperCluster, free_ports, with_free_ports
        from services.xregion.natsconf import build_topology
        from shared.natsconn import NatsConnection
        from shared.settings import load_settings

        [port] = free_ports(1)
        upstream = f"http://127.0.0.1:{port}"
        services = [f"bench-{i}" for i in range(len(runs))]
        topology = with_free_ports(build_topology(REGIONS))
        async with (
            SuperCluster(topology, self.workdir / "nats") as cluster,
            process(sys.executable, __file__, "--serve", str(port),
                     log=self.workdir / "service.log") as service_proc,
        ):  # fmt: skip
            self.others = {
                "nats": pids_using(str(self.workdir / "nats")),
                "service": [service_proc.pid],
            }
            config = _region_file(
                self.workdir / "eu-west.toml", cluster.client_urls(REGION), upstream, services
            )
            settings = load_settings(config)
            await wait_http(f"{upstream}/_stats")
            async with NatsConnection(settings.nats, service="bench") as conn:
                js = conn.jetstream()
                await self._provision(js, settings)
                results = []
                for service, instances in zip(services, runs, strict=True):
                    results.append(
                        await self._one(js, settings, config, upstream, service, instances)
                    )
                return results

    async def _provision(self, js: Any, settings: Any) -> None:
        from shared import provision

        await provision.apply(js, provision.plan(settings, 1))

    async def _one(
        self, js: Any, settings: Any, config: Path, upstream: str, service: str, instances: int
    ) -> Run:
        from services.xregion.local.supercluster import free_ports

        publish_s = await self._publish(js, service)
        print(f"  {instances} instance(s): {self.events} events published in "
              f"{publish_s:.1f} s; draining", file=sys.stderr, flush=True)  # fmt: skip
        async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as http:
            began = time.perf_counter()
            procs = []
            for n in range(instances):
                log = self.workdir / f"{service}-replayer-{n}.log"
                argv = (*self._profiled(f"{service}-{n}"), str(XREGION), "--log-level",
                        self.log_level, "--log-format", "json", "replayer", "--config",
                        str(config))  # fmt: skip
                [admin_port] = free_ports(1)
                admin = f"127.0.0.1:{admin_port}"
                env = {**os.environ, "XR_REPLAYER__ADMIN_LISTEN": admin}
                proc = await stack.enter_async_context(process(*argv, log=log, env=env))
                procs.append((proc, f"http://{admin}"))
            for proc, admin_url in procs:
                await _started(admin_url, proc)
            admins = [admin_url for _, admin_url in procs]
            pids = [proc.pid for proc, _ in procs]
            window = await self._window(js, pids, service)
            drain_s = time.perf_counter() - began
            outcomes: dict[str, float] = {}
            for admin in admins:
                for k, v in (await _outcomes(http, admin, service)).items():
                    outcomes[k] = outcomes.get(k, 0.0) + v
            async with http.get(f"{upstream}/_stats", params={"service": service}) as reply:
                stats = await reply.json()
        events, seconds, cpu, other = window
        rate = events / seconds
        return Run(
            instances=instances, events=self.events, keys=self.keys,
            publish_s=round(publish_s, 2), drain_s=round(drain_s, 2), window_events=events,
            window_s=round(seconds, 2), events_per_s=round(rate),
            per_process=round(rate / instances),
            cpu_s_per_1k=round(sum(cpu) * 1000 / events, 3),
            nats_cpu_s_per_1k=round(other["nats"] * 1000 / events, 3),
            service_cpu_s_per_1k=round(other["service"] * 1000 / events, 3),
            cpu_per_process=[round(c, 2) for c in cpu], outcomes=outcomes,
            problems=self._problems(stats, outcomes, service),
        )  # fmt: skip

    async def _publish(self, js: Any, service: str) -> float:
        from shared.envelope import Event, encode, new_traceparent
        from shared.hlc import Hlc
        from shared.ids import uuid7_str
        from shared.regions import replay_subject

        subject = replay_subject(REGION, ORIGIN, service)
        hlc = Hlc()
        self.newest: dict[str, str] = {}
        pending: list[asyncio.Future[Any]] = []
        started = time.perf_counter()
        for n in range(self.events):
            applies = self.creates or (n % 1000) < self.apply_share * 1000
            kind, method = ("notes", "PATCH") if applies else ("items", "PUT")
            path = f"/{service}/{kind}/{n % self.keys}"
            if self.creates:  # every event a create into one collection: one key
                method, path = "POST", f"/{service}/notes/all"
            event = Event(
                event_id=uuid7_str(), origin=ORIGIN, service=service, method=method, path=path,
                hlc=hlc.now(), key=path, body=BODY, trace=new_traceparent(),
                rule="apply" if applies else "replace",
            )  # fmt: skip
            if not applies:
                self.newest[path] = event.event_id
            headers, payload = encode(event)
            pending.append(await js.publish_async(subject, payload, headers=headers))
            if len(pending) >= 2000:
                await asyncio.gather(*(asyncio.wait_for(f, 30) for f in pending))
                pending.clear()
        await asyncio.gather(*(asyncio.wait_for(f, 30) for f in pending))
        return time.perf_counter() - started

    async def _window(
        self, js: Any, pids: list[int], service: str
    ) -> tuple[int, float, list[float], dict[str, float]]:
        """(events, seconds, CPU seconds per replayer, CPU seconds of the others) between
        10 % and 90 % settled; then waits until the consumer has nothing pending or unacked."""
        from shared.regions import replay_consumer, replay_stream

        low, high = self.events // 10, self.events - self.events // 10
        mark: tuple[int, float, list[float], dict[str, float]] | None = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            info = await js.consumer_info(replay_stream(REGION), replay_consumer())
            # Settled = acked (this run's backlog is all the consumer has left).
            settled = self.events - int(info.num_pending) - int(info.num_ack_pending)
            now, cpu = time.perf_counter(), [cpu_seconds(p) for p in pids]
            other = {k: sum(cpu_seconds(p) for p in ps) for k, ps in self.others.items()}
            if mark is None and settled >= low:
                mark = (settled, now, cpu, other)
            elif mark is not None and settled >= high:
                used = [c - b for c, b in zip(cpu, mark[2], strict=True)]
                used_other = {k: v - mark[3][k] for k, v in other.items()}
                await self._drained(js)
                return settled - mark[0], now - mark[1], used, used_other
            await asyncio.sleep(0.05)
        raise TimeoutError(f"backlog of {service} not drained")

    async def _drained(self, js: Any) -> None:
        from shared.regions import replay_consumer, replay_stream

        for _ in range(6000):
            info = await js.consumer_info(replay_stream(REGION), replay_consumer())
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("backlog not drained")

    def _problems(
        self, stats: dict[str, Any], outcomes: dict[str, float], service: str
    ) -> list[str]:
        problems = []
        if stats["repeats"]:
            problems.append(f"{stats['repeats']} event ids called more than once")
        if stats["out_of_order"]:
            problems.append(f"{stats['out_of_order']} calls out of per-key HLC order")
        missing = sum(stats["newest"].get(p) != i for p, i in self.newest.items())
        if missing:
            problems.append(f"the newest event of {missing} keys was not applied")
        settled = outcomes.get("applied", 0) + outcomes.get("stale", 0)
        if settled != self.events:
            problems.append(f"applied + stale = {settled:.0f}, not {self.events}")
        if outcomes.get("applied", 0) != stats["distinct"]:
            problems.append(f"applied {outcomes.get('applied', 0):.0f} != {stats['distinct']} "
                            "distinct event ids called")  # fmt: skip
        if outcomes.get("dead_lettered", 0):
            problems.append(f"{outcomes['dead_lettered']:.0f} dead-lettered")
        return problems


# --------------------------------------------------------------------------- report


def _report(runs: list[Run]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="replayer: drain of an XR_REPLAY_EU_WEST backlog into a fast local service")
    columns = (
        "procs",
        "events",
        "keys",
        "drain s",
        "events/s",
        "ev/s per proc",
        "target",
        "CPU s/1k replayer",
        "nats",
        "service",
        "applied",
        "stale",
        "retried",
        "checks",
    )
    for name in columns:
        table.add_column(name, justify="right")
    for r in runs:
        ok = "[green]ok" if not r.problems else "[red]" + "; ".join(r.problems)
        meets = "[green]" if r.per_process >= TARGET_PER_PROCESS else "[red]"
        table.add_row(
            str(r.instances), f"{r.events:,}", f"{r.keys:,}", f"{r.drain_s:.1f}",
            f"{r.events_per_s:,.0f}", f"{meets}{r.per_process:,.0f}",
            f">= {TARGET_PER_PROCESS:,.0f}", f"{r.cpu_s_per_1k:.3f}",
            f"{r.nats_cpu_s_per_1k:.3f}", f"{r.service_cpu_s_per_1k:.3f}",
            f"{r.outcomes.get('applied', 0):,.0f}", f"{r.outcomes.get('stale', 0):,.0f}",
            f"{r.outcomes.get('retried', 0):,.0f}", ok,
        )  # fmt: skip
    Console(width=160).print(table)
    print(
        "events/s and CPU between 10 % and 90 % of the backlog settled (acked); drain s: first "
        "process start to nothing pending or unacked; CPU s/1k: utime+stime per 1,000 events "
        "(all processes share this machine's cores)"
    )


async def _main(args: argparse.Namespace, workdir: Path) -> list[Run]:
    runs = [int(n) for n in args.runs.split(",")]
    bench = Bench(
        workdir, args.events, args.keys, args.log_level, args.profile,
        apply_share=args.apply_share, creates=args.creates,
    )  # fmt: skip
    return await bench.run(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000, help="backlog per run")
    parser.add_argument("--keys", type=int, default=5_000, help="distinct keys per run")
    parser.add_argument("--runs", default="1,2", help="replayer processes per run")
    parser.add_argument(
        "--apply-share", type=float, default=0.5,
        help="share of the events that are `apply` PATCHes (on keys of their own)",
    )  # fmt: skip
    parser.add_argument(
        "--creates", action="store_true",
        help="every event a create (`apply` POST) into one collection: one key",
    )  # fmt: skip
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["info", "warning"],
        help="replayers' log level (info: one canonical line per event)",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="default bench/results/replayer.json"
    )
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (logs)")
    parser.add_argument(
        "--profile", type=Path, default=None, help="run the replayers under cProfile, into DIR"
    )
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        uvloop.run(_serve(args.serve))
        return 0
    info = machine()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = uvloop.run(_main(args, args.keep))
    else:
        with tempfile.TemporaryDirectory(prefix="xr-bench-rp-") as tmp:
            results = uvloop.run(_main(args, Path(tmp)))
    _report(results)
    write_result("replayer", argv, info, {"rows": [asdict(r) for r in results]}, args.json)
    failed = any(r.problems for r in results)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
