"""Benchmark: the same upstream called directly and through the bridge, side by side.

    .venv/bin/python bench/bench_bridge.py [--seconds 5] [--concurrency 32] [--rounds 1]
                                           [--json out.json]

One run boots a local 3-region NATS super-cluster (us-east provisioned), one aiohttp upstream
and two `xregion bridge` processes in front of it (the default configuration, and the same
with `record_local_versions = false`, to price the version records), then drives them from
this process with keep-alive clients:

* reads  (GET, small JSON answer) — direct vs through the bridge;
* writes (PUT of 256 bytes to 1,000 keys, replicated: each one waits for its JetStream ack,
  and raises its key's version record) — direct vs through the bridge (vs the bridge without
  version records);
* store writes: the same, but the upstream is the demo service (`xregion demo-service`: a
  JSON PUT stored in SQLite, WAL, synchronous=FULL, versioned by `Xr-Hlc`), a service that
  does the work a real write does; the direct writes carry their own `Xr-Hlc`/`Xr-Event-Id`
  (each one a new version, as through the bridge), every path writes its own 1,000 keys.

The echo upstream costs about 35 µs of CPU per request: against it the ratio prices the
bridge against nothing, the worst case for any proxy (one HTTP exchange becomes two, plus a
JetStream publish and a version record). The demo service prices it against a service.

Writes are also sent through a *floor* forwarder (`--serve-floor`, started by this script): the
least any bridge built on aiohttp and nats-py must do for a replicated write, and nothing
else. It reads the request, forwards it with its headers (minus Host and the framing ones)
through one pooled aiohttp client, reads the answer, and on a 2xx publishes the body to the
same events stream with a `Nats-Msg-Id` (a plain nats-py request: no event envelope, no
signing, no validation, no outbox, no version record, no metrics, no log line, no
`X-Forwarded-*`, no streaming) and awaits its ack before answering. Its row is what this
machine allows such a process: the bridge's figures are read against it as well as against
direct. "Half load" is half of the *bridge's* maximum; the floor is also driven at half of its
own maximum (mode `own`, with direct at the same rate), which is the target read for the floor
itself. The report also gives the share of one core the bridge's and the floor's process use
at the bridge's half load: a Python process spends much more CPU per request when it idles
between requests (cold caches, wake-ups) than when saturated, so half of the maximum rate is
far more than half of a core, and p50 grows with it.

Each target is warmed up (1 s, not counted), then driven closed-loop at `--concurrency`
(its maximum throughput), then open-loop (requests sent on a fixed schedule, whatever the
answers do) at half of the bridge's measured maximum for that kind, the same rate for every
target: "added p50 at half load" is the bridge's p50 minus the direct p50 at that rate
(`--rate R` drives those phases at R req/s instead, to compare two builds at the same load:
a build that raises the bridge's maximum also raises its half load). For
every phase: requests/s, p50/p99 latency, and CPU seconds per 1,000 requests of the bridge,
the upstream, nats-server and the load generator (all on the same machine, competing for the
same cores). Everything is repeated `--rounds` times; the verdict uses the median round.

Last, the machine itself: a JetStream publish round trip back to back, and after 1 ms of
idling each time. On this VM the second is about twice the first: waking an idle process costs
tens of µs, and at half load every process idles between requests. A write through the bridge
crosses 4 more process hand-offs than a direct one, so part of "added p50 at half load" is
that, not the bridge's own work (the canonical log line's `upstream_ms`/`publish_ms` tell the
rest).

Targets: replicated-write throughput >= 0.5x direct; added p50 <= 1 ms at half of
the maximum load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import nats
import uvloop
from aiohttp import web
from procs import cpu_seconds, pids_using, process, wait_http
from yarl import URL

REGION = "us-east"
REGIONS = ("us-east", "eu-west", "ap-south")
BODY = bytes(range(256))
STORE_BODY = json.dumps({"value": "v" * 240}).encode()
STORE_KINDS = ("store",)
_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_LABELS = {
    "reads": "reads (echo upstream)",
    "writes": "writes (echo upstream)",
    "store": "writes (demo service)",
}


# --------------------------------------------------------------------------- upstream


async def _serve_upstream(port: int) -> None:
    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok":true,"item":42}', content_type="application/json")

    await _serve_until_sigterm(handle, port)


async def _serve_until_sigterm(handle: _Handler, port: int) -> None:
    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# Hop-by-hop and framing headers the floor does not forward (aiohttp sets its own).
_FLOOR_DROP = frozenset({"host", "content-length", "connection", "keep-alive", "transfer-encoding"})


async def _serve_floor(port: int, nats_url: str, routes: list[tuple[str, str, str]]) -> None:
    """The floor forwarder: see the module docstring. `routes`: (prefix, service, upstream)."""
    nc = await nats.connect(nats_url)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=256),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )
    ids = itertools.count()
    prefix = f"floor-{time.time_ns()}-"

    async def handle(request: web.BaseRequest) -> web.Response:
        path = request.raw_path
        service, upstream = next((s, u) for p, s, u in routes if path.startswith(p))
        body = await request.read()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _FLOOR_DROP]
        url = URL(upstream + path, encoded=True)
        async with session.request(request.method, url, headers=headers, data=body) as reply:
            data = await reply.read()
            if request.method != "GET" and 200 <= reply.status < 300:
                ack = await nc.request(
                    f"xr.events.{REGION}.{service}",
                    body,
                    timeout=5,
                    headers={"Nats-Msg-Id": prefix + str(next(ids))},
                )
                if b'"error"' in ack.data:
                    return web.Response(status=503, body=ack.data)
            return web.Response(status=reply.status, body=data, content_type=reply.content_type)

    await _serve_until_sigterm(handle, port)
    await session.close()
    await nc.close()


# --------------------------------------------------------------------------- processes


@contextlib.asynccontextmanager
async def _process_pid(
    *argv: str, log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[int]:
    async with process(*argv, log=log, env=env, stop_timeout_s=20) as proc:
        yield proc.pid


def _region_file(
    path: Path,
    nats_url: str,
    upstream: str,
    store: str,
    listen: str,
    admin: str,
    *,
    versions: bool = True,
) -> None:
    path.write_text(
        f'region = "{REGION}"\n'
        f"regions = {json.dumps(list(REGIONS))}\n"
        f'data_dir = "{path.parent / "data"}"\n'
        f'[nats]\nservers = ["{nats_url}"]\n'
        '[signing]\nmode = "off"\n'
        f'[bridge]\nlisten = "{listen}"\nadmin_listen = "{admin}"\n'
        f"record_local_versions = {'true' if versions else 'false'}\n"
        f'[services.bench]\nupstream = "{upstream}"\nroutes = ["/bench"]\n'
        f'[services.configs]\nupstream = "{store}"\nroutes = ["/configs"]\n'
    )


async def _provision(config: Path) -> None:
    xregion = Path(sys.executable).parent / "xregion"
    proc = await asyncio.create_subprocess_exec(
        str(xregion),
        "provision",
        "--config",
        str(config),
        "--replicas",
        "1",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"provision failed: {err.decode()}")


# --------------------------------------------------------------------------- load


@dataclass
class Phase:
    round: int
    kind: str  # reads | writes
    path: str  # direct | bridge | bridge-nov (no version records) | floor
    mode: str  # max | half | own (the floor at half of its own maximum, and direct alike)
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_per_1k: dict[str, float]


Request = Callable[[aiohttp.ClientSession, int], Awaitable[int]]
Pids = dict[str, list[int]]


def _request(base: str, kind: str, path: str) -> Request:
    async def read(http: aiohttp.ClientSession, i: int) -> int:
        async with http.get(f"{base}/bench/items/{i % 1000}") as reply:
            await reply.read()
            return reply.status

    async def write(http: aiohttp.ClientSession, i: int) -> int:
        async with http.put(f"{base}/bench/items/{i % 1000}", data=BODY) as reply:
            await reply.read()
            return reply.status

    # Through the bridge, the bridge stamps the version; direct and through the floor, the
    # client does.
    stamped = path in ("direct", "floor")
    wall_ms = time.time_ns() // 1_000_000

    async def store(http: aiohttp.ClientSession, i: int) -> int:
        headers = {"Content-Type": "application/json"}
        if stamped:
            headers["Xr-Hlc"] = f"{wall_ms + i // 100_000:015d}-{i % 100_000:06d}"
            headers["Xr-Event-Id"] = f"direct-{i:012d}"
        url = f"{base}/configs/{path}/k{i % 1000}"
        async with http.put(url, data=STORE_BODY, headers=headers) as reply:
            await reply.read()
            return reply.status

    return {"reads": read, "writes": write, "store": store}[kind]


async def _closed_loop(
    send: Request, concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as http:
        stop_at = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                status = await send(http, next(counter))
                latencies.append(time.perf_counter() - started)
                errors += status >= 300

        began = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(client())
        return latencies, errors, time.perf_counter() - began


async def _open_loop(
    send: Request, rate: float, seconds: float, connections: int
) -> tuple[list[float], int, float]:
    """Requests on a fixed schedule, whatever the answers do. At most `connections` are open
    (as many as the closed loop used): a request that finds them all busy waits for one, and
    that wait counts in its latency. Unbounded, a hiccup on this shared machine makes the
    client open hundreds of new connections (and the bridge as many upstream), and the
    measurement becomes one of connection set-up."""
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(i: int) -> None:
            nonlocal errors
            started = time.perf_counter()
            status = await send(http, i)
            latencies.append(time.perf_counter() - started)
            errors += status >= 300

        began = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for i in range(total):
                due = began + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.create_task(one(i))
        return latencies, errors, time.perf_counter() - began


async def _phase(
    rnd: int,
    kind: str,
    path: str,
    mode: str,
    base: str,
    pids: dict[str, list[int]],
    run: Callable[[Request], Awaitable[tuple[list[float], int, float]]],
) -> Phase:
    before = {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    self_before = time.process_time()
    latencies, errors, seconds = await run(_request(base, kind, path))
    cpu = {name: sum(cpu_seconds(p) for p in ps) - before[name] for name, ps in pids.items()}
    cpu["loadgen"] = time.process_time() - self_before
    count = len(latencies)
    ordered = sorted(latencies)
    return Phase(
        round=rnd,
        kind=kind,
        path=path,
        mode=mode,
        requests=count,
        errors=errors,
        seconds=round(seconds, 2),
        rps=round(count / seconds, 1),
        p50_ms=round(statistics.median(ordered) * 1000, 3),
        p99_ms=round(ordered[int(0.99 * (count - 1))] * 1000, 3),
        cpu_per_1k={k: round(v * 1000 / max(count, 1), 3) for k, v in cpu.items()},
    )


@dataclass(frozen=True)
class Drive:
    """How each target is driven: phase length, connections, and the open-loop rate (None:
    half of the bridge's maximum for that kind)."""

    seconds: float
    concurrency: int
    rate: float | None = None


async def _bench(
    drive: Drive, rounds: int, workdir: Path, log_level: str = "info"
) -> tuple[list[Phase], Wakeup]:
    from services.xregion.local.supercluster import SuperCluster, free_ports, with_free_ports
    from services.xregion.natsconf import build_topology

    up_port, store_port, floor_port, *ports = free_ports(7)
    upstream = f"http://127.0.0.1:{up_port}"
    store = f"http://127.0.0.1:{store_port}"
    async with SuperCluster(with_free_ports(build_topology(REGIONS)), workdir / "nats") as nats:
        configs = {}
        for name, (listen, admin), versions in (
            ("bridge", ports[:2], True),
            ("bridge-nov", ports[2:], False),
        ):
            configs[name] = (workdir / f"{name}.toml", listen, admin)
            _region_file(
                configs[name][0],
                nats.client_urls(REGION)[0],
                upstream,
                store,
                f"127.0.0.1:{listen}",
                f"127.0.0.1:{admin}",
                versions=versions,
            )
        await _provision(configs["bridge"][0])
        xregion = str(Path(sys.executable).parent / "xregion")

        def bridge(name: str) -> contextlib.AbstractAsyncContextManager[int]:
            return _process_pid(
                xregion,
                "--log-level",
                log_level,
                "--log-format",
                "json",
                "bridge",
                "--config",
                str(configs[name][0]),
                log=workdir / f"{name}.log",
            )

        async with (
            _process_pid(
                sys.executable,
                __file__,
                "--serve-upstream",
                str(up_port),
                log=workdir / "upstream.log",
            ) as up_pid,
            _process_pid(
                xregion,
                "demo-service",
                "--listen",
                f"127.0.0.1:{store_port}",
                "--db",
                str(workdir / "store.db"),
                log=workdir / "store.log",
            ) as store_pid,
            bridge("bridge") as bridge_pid,
            bridge("bridge-nov") as nov_pid,
            _process_pid(
                sys.executable,
                __file__,
                "--serve-floor",
                str(floor_port),
                nats.client_urls(REGION)[0],
                upstream,
                store,
                log=workdir / "floor.log",
            ) as floor_pid,
        ):
            await wait_http(upstream + "/")
            await wait_http(store + "/healthz")
            await wait_http(f"http://127.0.0.1:{floor_port}/bench/")
            for _, _, admin in configs.values():
                await wait_http(f"http://127.0.0.1:{admin}/readyz")
            nats_pids = pids_using(str(workdir / "nats"))
            targets = {
                "direct": (upstream, up_pid),
                "bridge": (f"http://127.0.0.1:{configs['bridge'][1]}", bridge_pid),
                "bridge-nov": (f"http://127.0.0.1:{configs['bridge-nov'][1]}", nov_pid),
                "floor": (f"http://127.0.0.1:{floor_port}", floor_pid),
            }
            phases: list[Phase] = []
            for rnd in range(1, rounds + 1):
                phases += await _round(rnd, drive, targets, (up_pid, store, store_pid), nats_pids)
            wakeup = await _publish_round_trips(nats.client_urls(REGION)[0])
            return phases, wakeup


@dataclass
class Wakeup:
    """p50 of one JetStream publish round trip, back to back and after 1 ms of idling."""

    busy_ms: float
    idle_ms: float

    def report(self) -> str:
        per_wakeup = max(0.0, self.idle_ms - self.busy_ms) / 2
        return (
            f"this machine: a JetStream publish round trip takes {self.busy_ms:.3f} ms back to "
            f"back, {self.idle_ms:.3f} ms after 1 ms of idling (both ends idle: about "
            f"{per_wakeup:.3f} ms per wake-up of an idle process); a write through the bridge "
            "crosses 4 more process hand-offs than a direct one (to the bridge, to the upstream "
            "and back, to NATS and back, to the client: 6 against 2)"
        )


async def _publish_round_trips(nats_url: str, count: int = 1500) -> Wakeup:
    """What waking up an idle process costs on this machine, measured with the simplest
    round trip the bridge makes: a plain nats-py JetStream publish (request) and its ack."""
    nc = await nats.connect(nats_url)
    try:

        async def p50(gap_s: float) -> float:
            times = []
            for i in range(count):
                headers = {"Nats-Msg-Id": f"probe-{gap_s}-{i}-{time.time_ns()}"}
                started = time.perf_counter()
                await nc.request(f"xr.events.{REGION}.bench", BODY, timeout=5, headers=headers)
                times.append(time.perf_counter() - started)
                if gap_s:
                    await asyncio.sleep(gap_s)
            return statistics.median(times[count // 10 :]) * 1000

        return Wakeup(busy_ms=await p50(0.0), idle_ms=await p50(0.001))
    finally:
        await nc.close()


async def _round(
    rnd: int,
    drive: Drive,
    targets: dict[str, tuple[str, int]],
    upstreams: tuple[int, str, int],
    nats_pids: list[int],
) -> list[Phase]:
    """Reads and writes against the echo upstream, then writes against the demo service."""
    up_pid, store, store_pid = upstreams
    seconds, concurrency = drive.seconds, drive.concurrency
    phases: list[Phase] = []
    closed = functools.partial(_closed_loop, concurrency=concurrency, seconds=seconds)
    warm = functools.partial(_closed_loop, concurrency=concurrency, seconds=1.0)
    kinds = (("reads", ("direct", "bridge")), ("writes", tuple(targets)))
    for kind, paths in (*kinds, ("store", ("direct", "bridge", "floor"))):
        on_store = kind in STORE_KINDS

        def base(path: str, on_store: bool = on_store) -> str:
            return store if on_store and path == "direct" else targets[path][0]

        def pids(path: str, upstream_pid: int = store_pid if on_store else up_pid) -> Pids:
            return {
                "bridge": [] if path == "direct" else [targets[path][1]],
                "upstream": [upstream_pid],
                "nats": nats_pids,
            }

        for path in paths:
            await warm(_request(base(path), kind, path))
        maximum = {
            path: await _phase(rnd, kind, path, "max", base(path), pids(path), closed)
            for path in paths
        }
        phases += maximum.values()
        # Half of the bridge's maximum, the same for every path (or the rate asked for).
        half_rate = drive.rate or maximum["bridge"].rps / 2
        opened = functools.partial(
            _open_loop, rate=half_rate, seconds=seconds, connections=concurrency
        )
        phases += [
            await _phase(rnd, kind, path, "half", base(path), pids(path), opened) for path in paths
        ]
        if "floor" in paths:  # "half load" read for the floor itself: half of *its* maximum
            own = functools.partial(
                _open_loop,
                rate=maximum["floor"].rps / 2,
                seconds=seconds,
                connections=concurrency,
            )
            phases += [
                await _phase(rnd, kind, path, "own", base(path), pids(path), own)
                for path in ("direct", "floor")
            ]
    return phases


def _report(phases: list[Phase]) -> str:
    lines = [
        f"{'rnd':3} {'kind':6} {'path':10} {'load':4} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>8} "
        f"{'err':>3}  CPU s/1k req: bridge upstream nats loadgen",
    ]
    for p in phases:
        c = p.cpu_per_1k
        lines.append(
            f"{p.round:3d} {p.kind:6} {p.path:10} {p.mode:4} {p.rps:8.1f} {p.p50_ms:7.3f} "
            f"{p.p99_ms:8.3f} {p.errors:3d}  {c['bridge']:6.3f} {c['upstream']:8.3f} "
            f"{c['nats']:5.3f} {c['loadgen']:7.3f}"
        )
    lines.append("")
    rounds = sorted({p.round for p in phases})
    for kind in ("reads", "writes", "store"):
        ratios, added = [], []
        for rnd in rounds:
            by = {(p.path, p.mode): p for p in phases if p.kind == kind and p.round == rnd}
            ratios.append(by[("bridge", "max")].rps / by[("direct", "max")].rps)
            added.append(by[("bridge", "half")].p50_ms - by[("direct", "half")].p50_ms)
            if kind == "writes":
                lines.append(_versions_cost(rnd, by))
        lines.append(
            f"{_LABELS[kind]}: bridge/direct throughput {statistics.median(ratios):.2f}x "
            f"(rounds: {_listed(ratios, 2)}); added p50 at half load "
            f"{statistics.median(added):.3f} ms (rounds: {_listed(added, 3)})"
        )
        floor = _floor_line(kind, [p for p in phases if p.kind == kind], rounds)
        if floor:
            lines.append(floor)
    return "\n".join(lines)


def _floor_line(kind: str, phases: list[Phase], rounds: list[int]) -> str | None:
    """The floor forwarder against direct, and the bridge against the floor (medians)."""
    if not any(p.path == "floor" for p in phases):
        return None
    floor_ratio, floor_added, own_added, bridge_vs_floor = [], [], [], []
    busy: dict[str, list[float]] = {"bridge": [], "floor": []}
    for rnd in rounds:
        by = {(p.path, p.mode): p for p in phases if p.round == rnd}
        floor_max, direct_half = by[("floor", "max")], by[("direct", "half")]
        floor_ratio.append(floor_max.rps / by[("direct", "max")].rps)
        floor_added.append(by[("floor", "half")].p50_ms - direct_half.p50_ms)
        own_added.append(by[("floor", "own")].p50_ms - by[("direct", "own")].p50_ms)
        bridge_vs_floor.append(by[("bridge", "max")].rps / floor_max.rps)
        for path in busy:  # share of one core its process used at the bridge's half load
            half = by[(path, "half")]
            busy[path].append(half.rps * half.cpu_per_1k["bridge"] / 1000)
    return (
        f"  floor for {_LABELS[kind]} (bare aiohttp + nats-py forwarder): throughput "
        f"{statistics.median(floor_ratio):.2f}x direct (rounds: {_listed(floor_ratio, 2)}); "
        f"added p50 at the bridge's half load {statistics.median(floor_added):.3f} ms "
        f"(rounds: {_listed(floor_added, 3)}), at half of its own maximum "
        f"{statistics.median(own_added):.3f} ms (rounds: {_listed(own_added, 3)}); "
        f"bridge/floor throughput {statistics.median(bridge_vs_floor):.2f}x\n"
        f"  process busy at the bridge's half load (share of one core): bridge "
        f"{statistics.median(busy['bridge']):.0%}, floor {statistics.median(busy['floor']):.0%}"
    )


def _listed(values: list[float], digits: int) -> str:
    return ", ".join(f"{v:.{digits}f}" for v in values)


def _versions_cost(rnd: int, by: dict[tuple[str, str], Phase]) -> str:
    """What the version records cost: the two bridges of one round, side by side."""
    on, off = by[("bridge", "max")], by[("bridge-nov", "max")]
    cpu = (on.cpu_per_1k["bridge"] + on.cpu_per_1k["nats"]) - (
        off.cpu_per_1k["bridge"] + off.cpu_per_1k["nats"]
    )
    added = by[("bridge", "half")].p50_ms - by[("bridge-nov", "half")].p50_ms
    return (
        f"round {rnd} version records: throughput {on.rps:.0f} vs {off.rps:.0f} req/s without "
        f"({on.rps / off.rps:.2f}x); +{cpu:.3f} ms CPU per write (bridge + nats); "
        f"p50 at half load {added:+.3f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything N times")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="drive the 'half' phases at this many req/s instead of half of the bridge's "
        "maximum: compares two builds at the same load (a faster bridge raises its own half load)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--bridge-log-level",
        default="info",
        choices=["info", "warning"],
        help="info (default) includes the canonical line per request",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep logs and data here (default: a temp dir)"
    )
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_floor is not None:
        port, nats_url, echo, store = args.serve_floor
        routes = [("/bench", "bench", echo), ("/configs", "configs", store)]
        uvloop.run(_serve_floor(int(port), nats_url, routes))
        return 0
    if args.serve_upstream is not None:
        uvloop.run(_serve_upstream(args.serve_upstream))
        return 0
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="xr-bench-"))
        )
        workdir.mkdir(parents=True, exist_ok=True)
        phases, wakeup = uvloop.run(
            _bench(
                Drive(args.seconds, args.concurrency, args.rate),
                args.rounds,
                workdir,
                args.bridge_log_level,
            )
        )
    if args.rate is not None:
        print(f"'half' phases driven at {args.rate:g} req/s (--rate), not at half of a maximum")
    print(_report(phases))
    print(wakeup.report())
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(p) for p in phases], indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
