"""Benchmark: replicated writes through the bridge against direct and a bare floor, with wrk.

    .venv/bin/xregion bench bridge [--seconds 5] [--connections 32] [--rounds 2]
                                   [--rate 1000] [--profile DIR] [--json PATH]

Needs wrk (Debian: `apt-get install wrk`), the load generator of the throughput phases: a C
program, so the load costs little CPU (its share of a core is reported). One run boots a
local 3-region NATS super-cluster (us-east provisioned), a fast aiohttp echo upstream (it
reads the body and answers a small JSON), the demo service (`xregion demo-service`: a JSON
PUT stored in SQLite, WAL, synchronous=FULL, versioned by `Xr-Hlc`), two `xregion bridge`
processes in front of both (the default configuration, and the same with
`record_local_versions = false`, to price the version records) and the *floor*:

* floor — the least any bridge built on aiohttp and nats-py must do for a replicated write,
  and nothing else (`--serve-floor`, started by this script): an aiohttp server that reads
  the request, forwards it with its headers (minus Host and the framing ones) through one
  pooled aiohttp client, reads the answer, and on a 2xx publishes the body to the same events
  stream with a `Nats-Msg-Id` (one awaited JetStream publish: no envelope, no signing, no
  validation, no outbox, no version record, no metrics, no log line) before answering.

Per round, for each kind of write:

* writes (512-byte PUTs to 1,000 keys of the echo upstream): `direct` (to the upstream),
  `floor`, `bridge`, `bridge-nov` — each driven by `wrk -t1 -c<connections>` for
  `--seconds` after 1 s of warm-up (closed loop: its maximum), then `direct`, `floor` and
  `bridge` at a fixed `--rate` writes/s. wrk cannot pace (Debian's wrk has no `-R`, that is
  wrk2), so the fixed-rate phases use this script's open-loop aiohttp generator: requests on
  a fixed schedule, at most `--connections` open; its CPU is reported too. "Added p50" is a
  path's p50 minus direct's at that rate.
* store (512-byte JSON PUTs of the demo service, 1,000 keys per path): `direct` (each write
  carries its own `Xr-Hlc`/`Xr-Event-Id`, a new version as through the bridge), `floor`,
  `bridge`, by wrk.

For every phase: writes/s, p50/p99 latency (wrk's own for wrk phases), errors (non-2xx), and
CPU ms per 1,000 writes of the bridge (or floor) process, the upstream, nats-server and the
load generator (all on the same cores), and the load generator's share of one core.
`--profile DIR` ends the run with py-spy (`py-spy record --pid`, raw format) on the bridge
and on the floor, each under wrk for 10 s: DIR/bridge.txt, DIR/floor.txt.

Targets (issue 14): bridge >= 0.9x direct against the demo service; >= 0.8x the floor
against the echo upstream; added p50 at 1,000 writes/s within 0.2 ms of the floor's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import re
import resource
import shutil
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
from results import machine as results_machine
from yarl import URL

REGION = "us-east"
REGIONS = ("us-east", "eu-west", "ap-south")
BODY_BYTES = 512
BODY = b"x" * BODY_BYTES
STORE_BODY = b'{"value":"' + b"v" * (BODY_BYTES - 12) + b'"}'
RESULTS = Path(__file__).resolve().parent / "results" / "bridge.json"
_Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
_PROFILE_S = 10

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

# Each request a PUT to PREFIX<n % 1000>; "stamp" adds a new Xr-Hlc/Xr-Event-Id per request
# (one wrk thread: the counter is unique).
_WRK_SCRIPT = """
local counter, prefix, body, stamp, base_ms = 0, "", "", false, 0
local content_type = "application/octet-stream"
function init(args)
  prefix = args[1]
  if args[2] == "json" then
    body = '{"value":"' .. string.rep("v", tonumber(args[3]) - 12) .. '"}'
    content_type = "application/json"
  else
    body = string.rep("x", tonumber(args[3]))
  end
  stamp = args[4] == "stamp"
  base_ms = tonumber(args[5])
end
function request()
  counter = counter + 1
  local headers = {["Content-Type"] = content_type}
  if stamp then
    headers["Xr-Hlc"] = string.format("%015d-%06d", base_ms + math.floor(counter / 100000),
                                      counter % 100000)
    headers["Xr-Event-Id"] = string.format("direct-%012d", counter)
  end
  return wrk.format("PUT", prefix .. (counter % 1000), headers, body)
end
"""


@dataclass
class Phase:
    round: int
    kind: str  # writes (echo upstream) | store (demo service)
    path: str  # direct | floor | bridge | bridge-nov
    mode: str  # max (wrk, closed loop) | rate (fixed writes/s, open loop)
    loadgen: str  # wrk | python
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_per_1k: dict[str, float]  # CPU seconds per 1,000 writes (ms per write), by process
    loadgen_share: float  # of one core


@dataclass(frozen=True)
class Target:
    """Where a path's writes go, and the processes whose CPU its phases read."""

    base: str
    prefix: str
    stamp: bool
    pids: dict[str, list[int]]


class WrkMissingError(RuntimeError):
    pass


def _wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissingError(
            "bench bridge needs wrk, the C load generator: apt-get install wrk (Debian)"
        )
    return found


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_figures(out: str) -> tuple[int, int, float, float, float]:
    """requests, errors, seconds, p50 ms, p99 ms from wrk --latency output."""
    done = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    if done is None:
        raise RuntimeError(f"wrk printed no totals: {out}")
    seconds = float(done[2]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[done[3]]
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    pct = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+(?:us|ms|s))$", out, re.M))
    if "50" not in pct:
        raise RuntimeError(f"wrk printed no latency distribution: {out}")

    def ms(text: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
        return float(number) * _UNITS[unit]

    return int(done[1]), errors, seconds, ms(pct["50"]), ms(pct["99"])


async def _run_wrk(
    target: Target, kind: str, seconds: float, connections: int, script: Path
) -> tuple[int, int, float, float, float, float]:
    """One wrk run; its figures and its own CPU seconds (from the reaped child's rusage)."""
    body_kind = "json" if kind == "store" else "raw"
    argv = [
        _wrk(), "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
        target.base, "--", target.prefix, body_kind, str(BODY_BYTES),
        "stamp" if target.stamp else "-", str(time.time_ns() // 1_000_000),
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await proc.communicate()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited with {proc.returncode}: {out.decode()}")
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return (*_wrk_figures(out.decode()), cpu)


def _paced_request(
    target: Target, kind: str
) -> Callable[[aiohttp.ClientSession, int], Awaitable[int]]:
    wall_ms = time.time_ns() // 1_000_000
    body = STORE_BODY if kind == "store" else BODY
    content_type = "application/json" if kind == "store" else "application/octet-stream"

    async def send(http: aiohttp.ClientSession, i: int) -> int:
        headers = {"Content-Type": content_type}
        if target.stamp and kind == "store":
            headers["Xr-Hlc"] = f"{wall_ms + i // 100_000:015d}-{i % 100_000:06d}"
            headers["Xr-Event-Id"] = f"paced-{i:012d}"
        url = f"{target.base}{target.prefix}{i % 1000}"
        async with http.put(url, data=body, headers=headers) as reply:
            await reply.read()
            return reply.status

    return send


async def _open_loop(
    send: Callable[[aiohttp.ClientSession, int], Awaitable[int]],
    rate: float,
    seconds: float,
    connections: int,
) -> tuple[list[float], int, float]:
    """Requests on a fixed schedule, whatever the answers do. At most `connections` are open:
    a request that finds them all busy waits for one, and that wait counts in its latency."""
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
            errors += not 200 <= status < 300

        began = time.perf_counter()
        async with asyncio.TaskGroup() as tasks:
            for i in range(total):
                delay = began + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.create_task(one(i))
        return latencies, errors, time.perf_counter() - began


def _cpu(pids: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(cpu_seconds(p) for p in ps) for name, ps in pids.items()}


async def _max_phase(
    rnd: int, kind: str, path: str, target: Target, drive: Drive, script: Path
) -> Phase:
    await _run_wrk(target, kind, 1.0, drive.connections, script)  # warm-up, not counted
    before = _cpu(target.pids)
    count, errors, seconds, p50, p99, wrk_cpu = await _run_wrk(
        target, kind, drive.seconds, drive.connections, script
    )
    used = {n: c - before[n] for n, c in _cpu(target.pids).items()}
    used["loadgen"] = wrk_cpu
    return _phase(rnd, kind, path, "max", "wrk", count, errors, seconds, p50, p99, used)


async def _rate_phase(rnd: int, kind: str, path: str, target: Target, drive: Drive) -> Phase:
    before = _cpu(target.pids)
    own = time.process_time()
    latencies, errors, seconds = await _open_loop(
        _paced_request(target, kind), drive.rate, drive.seconds, drive.connections
    )
    used = {n: c - before[n] for n, c in _cpu(target.pids).items()}
    used["loadgen"] = time.process_time() - own
    ordered = sorted(latencies)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[int(0.99 * (len(ordered) - 1))] * 1000
    return _phase(rnd, kind, path, "rate", "python", len(ordered), errors, seconds, p50, p99, used)


def _phase(
    rnd: int, kind: str, path: str, mode: str, loadgen: str, count: int, errors: int,
    seconds: float, p50: float, p99: float, used: dict[str, float],
) -> Phase:  # fmt: skip
    phase = Phase(
        round=rnd,
        kind=kind,
        path=path,
        mode=mode,
        loadgen=loadgen,
        requests=count,
        errors=errors,
        seconds=round(seconds, 2),
        rps=round(count / seconds, 1),
        p50_ms=round(p50, 3),
        p99_ms=round(p99, 3),
        cpu_per_1k={k: round(v * 1000 / max(count, 1), 3) for k, v in used.items()},
        loadgen_share=round(used["loadgen"] / seconds, 2),
    )
    print(f"  {phase}", file=sys.stderr, flush=True)
    return phase


@dataclass(frozen=True)
class Drive:
    """How each target is driven: phase length, connections, and the fixed rate."""

    seconds: float
    connections: int
    rate: float


async def _bench(
    drive: Drive, rounds: int, workdir: Path, profile: Path | None
) -> tuple[list[Phase], Wakeup]:
    from services.xregion.local.supercluster import SuperCluster, free_ports, with_free_ports
    from services.xregion.natsconf import build_topology

    _wrk()  # before booting anything
    script = workdir / "put.lua"
    script.write_text(_WRK_SCRIPT)
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
                xregion, "--log-format", "json", "bridge", "--config", str(configs[name][0]),
                log=workdir / f"{name}.log",
            )  # fmt: skip

        async with (
            _process_pid(
                sys.executable, __file__, "--serve-upstream", str(up_port),
                log=workdir / "upstream.log",
            ) as up_pid,
            _process_pid(
                xregion, "demo-service", "--listen", f"127.0.0.1:{store_port}",
                "--db", str(workdir / "store.db"), log=workdir / "store.log",
            ) as store_pid,
            bridge("bridge") as bridge_pid,
            bridge("bridge-nov") as nov_pid,
            _process_pid(
                sys.executable, __file__, "--serve-floor", str(floor_port),
                nats.client_urls(REGION)[0], upstream, store, log=workdir / "floor.log",
            ) as floor_pid,
        ):  # fmt: skip
            await wait_http(upstream + "/")
            await wait_http(store + "/healthz")
            await wait_http(f"http://127.0.0.1:{floor_port}/bench/")
            for _, _, admin in configs.values():
                await wait_http(f"http://127.0.0.1:{admin}/readyz")
            nats_pids = pids_using(str(workdir / "nats"))
            front = {
                "floor": (f"http://127.0.0.1:{floor_port}", floor_pid),
                "bridge": (f"http://127.0.0.1:{configs['bridge'][1]}", bridge_pid),
                "bridge-nov": (f"http://127.0.0.1:{configs['bridge-nov'][1]}", nov_pid),
            }

            def target(kind: str, path: str) -> Target:
                on_store = kind == "store"
                upstream_pid = store_pid if on_store else up_pid
                prefix = f"/configs/{path}/k" if on_store else "/bench/items/"
                base, pid = (
                    (store if on_store else upstream, None) if path == "direct" else front[path]
                )
                pids = {"bridge": [] if pid is None else [pid], "upstream": [upstream_pid]}
                return Target(
                    base, prefix, on_store and path == "direct", {**pids, "nats": nats_pids}
                )

            phases: list[Phase] = []
            for rnd in range(1, rounds + 1):
                phases += await _round(rnd, drive, target, script)
            if profile is not None:
                await _profile(profile, drive, target, script)
            wakeup = await _publish_round_trips(nats.client_urls(REGION)[0])
            return phases, wakeup


async def _round(
    rnd: int, drive: Drive, target: Callable[[str, str], Target], script: Path
) -> list[Phase]:
    """Echo writes at the maximum (wrk) and at the fixed rate, then demo-service writes."""
    phases = [
        await _max_phase(rnd, "writes", path, target("writes", path), drive, script)
        for path in ("direct", "floor", "bridge", "bridge-nov")
    ]
    phases += [
        await _rate_phase(rnd, "writes", path, target("writes", path), drive)
        for path in ("direct", "floor", "bridge")
    ]
    phases += [
        await _max_phase(rnd, "store", path, target("store", path), drive, script)
        for path in ("direct", "floor", "bridge")
    ]
    return phases


async def _profile(
    directory: Path, drive: Drive, target: Callable[[str, str], Target], script: Path
) -> None:
    """py-spy on the bridge and on the floor, each under wrk at its maximum."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    for path in ("bridge", "floor"):
        chosen = target("writes", path)
        out = directory / f"{path}.txt"
        spy = await asyncio.create_subprocess_exec(
            py_spy, "record", "--pid", str(chosen.pids["bridge"][0]), "--format", "raw",
            "--rate", "250", "--duration", str(_PROFILE_S), "--nonblocking", "-o", str(out),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        await _run_wrk(chosen, "writes", _PROFILE_S + 1, drive.connections, script)
        await spy.wait()
        print(f"profile of the {path} under wrk: {out}", flush=True)


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


def _report(phases: list[Phase]) -> tuple[str, dict[str, float]]:
    """The table of phases and the verdict lines; the verdict's medians over rounds."""
    lines = [
        f"{'rnd':3} {'kind':6} {'path':10} {'mode':4} {'load':6} {'req/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>8} {'err':>3}  CPU s/1k: bridge upstream nats load | load share"
    ]
    for p in phases:
        c = p.cpu_per_1k
        lines.append(
            f"{p.round:3d} {p.kind:6} {p.path:10} {p.mode:4} {p.loadgen:6} {p.rps:8.1f} "
            f"{p.p50_ms:7.3f} {p.p99_ms:8.3f} {p.errors:3d}  {c['bridge']:6.3f} "
            f"{c['upstream']:8.3f} {c['nats']:5.3f} {c['loadgen']:5.3f} | {p.loadgen_share:.2f}"
        )
    rounds = sorted({p.round for p in phases})
    by = [{(p.kind, p.path, p.mode): p for p in phases if p.round == r} for r in rounds]

    def ratio(kind: str, path: str, base: str) -> float:
        return round(
            statistics.median(r[kind, path, "max"].rps / r[kind, base, "max"].rps for r in by), 3
        )

    def added(path: str) -> float:
        return round(
            statistics.median(
                r["writes", path, "rate"].p50_ms - r["writes", "direct", "rate"].p50_ms for r in by
            ),
            3,
        )

    verdict = {
        "bridge_x_floor": ratio("writes", "bridge", "floor"),
        "floor_x_direct": ratio("writes", "floor", "direct"),
        "bridge_x_direct": ratio("writes", "bridge", "direct"),
        "versions_x": ratio("writes", "bridge", "bridge-nov"),
        "added_p50_bridge_ms": added("bridge"),
        "added_p50_floor_ms": added("floor"),
        "store_bridge_x_direct": ratio("store", "bridge", "direct"),
        "store_floor_x_direct": ratio("store", "floor", "direct"),
        "wrk_share_max": max(p.loadgen_share for p in phases if p.loadgen == "wrk"),
    }
    verdict["added_p50_beyond_floor_ms"] = round(
        verdict["added_p50_bridge_ms"] - verdict["added_p50_floor_ms"], 3
    )
    lines += [
        "",
        f"echo writes: bridge/floor {verdict['bridge_x_floor']:.2f}x (target >= 0.8), "
        f"floor/direct {verdict['floor_x_direct']:.2f}x, bridge/direct "
        f"{verdict['bridge_x_direct']:.2f}x; version records: bridge/bridge-nov "
        f"{verdict['versions_x']:.2f}x",
        f"added p50 at the fixed rate: bridge {verdict['added_p50_bridge_ms']:.3f} ms, floor "
        f"{verdict['added_p50_floor_ms']:.3f} ms: bridge beyond floor "
        f"{verdict['added_p50_beyond_floor_ms']:.3f} ms (target <= 0.2)",
        f"demo service writes: bridge/direct {verdict['store_bridge_x_direct']:.2f}x (target "
        f">= 0.9), floor/direct {verdict['store_floor_x_direct']:.2f}x",
        f"wrk used at most {verdict['wrk_share_max']:.0%} of one core (medians over "
        f"{len(rounds)} round(s))",
    ]
    return "\n".join(lines), verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c, and the paced cap")
    parser.add_argument("--rounds", type=int, default=2, help="repeat everything N times")
    parser.add_argument(
        "--rate", type=float, default=1000.0, help="writes/s of the fixed-rate phases"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy profiles into this directory"
    )
    parser.add_argument("--json", type=Path, default=RESULTS, help="write the figures here")
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
    machine = results_machine()
    try:
        with contextlib.ExitStack() as stack:
            workdir = args.workdir or Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="xr-bench-"))
            )
            workdir.mkdir(parents=True, exist_ok=True)
            drive = Drive(args.seconds, args.connections, args.rate)
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
            phases, wakeup = uvloop.run(_bench(drive, args.rounds, workdir, args.profile))
    except WrkMissingError as exc:
        print(f"bench_bridge.py: {exc}", file=sys.stderr)
        return 2
    report, verdict = _report(phases)
    print(report)
    print(wakeup.report())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(["xregion bench bridge", *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine,
        "rows": [asdict(p) for p in phases],
        "verdict": verdict,
        "wakeup": asdict(wakeup),
        "report": report.splitlines(),
    }
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
