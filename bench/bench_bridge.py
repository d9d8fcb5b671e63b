"""Benchmark: the same upstream called directly and through the bridge, side by side.

    .venv/bin/python bench/bench_bridge.py [--seconds 5] [--concurrency 32] [--json out.json]

One run boots a local 3-region NATS super-cluster (us-east provisioned), an aiohttp upstream
and `xregion bridge` as separate processes, then drives them from this process with a fixed
number of concurrent keep-alive clients:

* reads  (GET, small JSON answer) — direct vs through the bridge;
* writes (PUT of 256 bytes, replicated: each one waits for its JetStream ack) — direct vs
  through the bridge;

first closed-loop at `--concurrency` (maximum throughput), then open-loop at half of the
bridge's maximum for that kind (latency at half load). For every phase: requests/s, p50/p99
latency, and CPU seconds per 1,000 requests of the bridge, the upstream, nats-server and the
load generator (all on the same machine, so they compete for the same cores).

Targets (issue 3): replicated-write throughput >= 0.5x direct; added p50 <= 1 ms at half of
the maximum load.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

REGION = "us-east"
REGIONS = ("us-east", "eu-west", "ap-south")
BODY = bytes(range(256))
_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- upstream


async def _serve_upstream(port: int) -> None:
    async def handle(request: web.BaseRequest) -> web.Response:
        await request.read()
        return web.Response(body=b'{"ok":true,"item":42}', content_type="application/json")

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await runner.cleanup()


# --------------------------------------------------------------------------- processes


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _pids_using(marker: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return found


@contextlib.asynccontextmanager
async def _process(*argv: str, log: Path, env: dict[str, str] | None = None) -> AsyncIterator[int]:
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=out, stderr=out, env=env)
    try:
        yield proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as reply:
                    if reply.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout_s} s")
            await asyncio.sleep(0.1)


def _region_file(path: Path, nats_url: str, upstream: str, listen: str, admin: str) -> None:
    path.write_text(
        f'region = "{REGION}"\n'
        f"regions = {json.dumps(list(REGIONS))}\n"
        f'data_dir = "{path.parent / "data"}"\n'
        f'[nats]\nservers = ["{nats_url}"]\n'
        '[signing]\nmode = "off"\n'
        f'[bridge]\nlisten = "{listen}"\nadmin_listen = "{admin}"\n'
        f'[services.bench]\nupstream = "{upstream}"\nroutes = ["/bench"]\n'
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
    kind: str  # reads | writes
    path: str  # direct | bridge
    mode: str  # max | half
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_per_1k: dict[str, float]


Request = Callable[[aiohttp.ClientSession, int], Awaitable[int]]


def _request(base: str, kind: str) -> Request:
    async def read(http: aiohttp.ClientSession, i: int) -> int:
        async with http.get(f"{base}/bench/items/{i % 1000}") as reply:
            await reply.read()
            return reply.status

    async def write(http: aiohttp.ClientSession, i: int) -> int:
        async with http.put(f"{base}/bench/items/{i % 1000}", data=BODY) as reply:
            await reply.read()
            return reply.status

    return read if kind == "reads" else write


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


async def _open_loop(send: Request, rate: float, seconds: float) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    connector = aiohttp.TCPConnector(limit=0)
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
    kind: str,
    path: str,
    mode: str,
    base: str,
    pids: dict[str, list[int]],
    run: Callable[[Request], Awaitable[tuple[list[float], int, float]]],
) -> Phase:
    before = {name: sum(_cpu_seconds(p) for p in ps) for name, ps in pids.items()}
    self_before = time.process_time()
    latencies, errors, seconds = await run(_request(base, kind))
    cpu = {name: sum(_cpu_seconds(p) for p in ps) - before[name] for name, ps in pids.items()}
    cpu["loadgen"] = time.process_time() - self_before
    count = len(latencies)
    ordered = sorted(latencies)
    return Phase(
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


async def _bench(
    seconds: float, concurrency: int, workdir: Path, log_level: str = "info"
) -> list[Phase]:
    from services.xregion.natsconf import build_topology
    from services.xregion.supercluster import SuperCluster, with_free_ports

    up_port, listen, admin = _free_ports(3)
    upstream = f"http://127.0.0.1:{up_port}"
    bridge = f"http://127.0.0.1:{listen}"
    async with SuperCluster(with_free_ports(build_topology(REGIONS)), workdir / "nats") as nats:
        config = workdir / "region.toml"
        _region_file(
            config,
            nats.client_urls(REGION)[0],
            upstream,
            f"127.0.0.1:{listen}",
            f"127.0.0.1:{admin}",
        )
        await _provision(config)
        xregion = str(Path(sys.executable).parent / "xregion")
        async with (
            _process(
                sys.executable,
                __file__,
                "--serve-upstream",
                str(up_port),
                log=workdir / "upstream.log",
            ) as up_pid,
            _process(
                xregion,
                "--log-level",
                log_level,
                "--log-format",
                "json",
                "bridge",
                "--config",
                str(config),
                log=workdir / "bridge.log",
            ) as bridge_pid,
        ):
            await _wait_http(upstream + "/")
            await _wait_http(f"http://127.0.0.1:{admin}/readyz")
            pids = {
                "bridge": [bridge_pid],
                "upstream": [up_pid],
                "nats": _pids_using(str(workdir / "nats")),
            }
            return await _phases(seconds, concurrency, upstream, bridge, pids)


async def _phases(
    seconds: float, concurrency: int, upstream: str, bridge: str, pids: dict[str, list[int]]
) -> list[Phase]:
    phases: list[Phase] = []
    targets = (("direct", upstream), ("bridge", bridge))
    for kind in ("reads", "writes"):
        closed = functools.partial(_closed_loop, concurrency=concurrency, seconds=seconds)
        maximum = [await _phase(kind, path, "max", base, pids, closed) for path, base in targets]
        phases += maximum
        half_rate = maximum[1].rps / 2  # half of the bridge's maximum, for both paths
        opened = functools.partial(_open_loop, rate=half_rate, seconds=seconds)
        phases += [await _phase(kind, path, "half", base, pids, opened) for path, base in targets]
    return phases


def _report(phases: list[Phase]) -> str:
    lines = [
        f"{'kind':7} {'path':7} {'load':5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'err':>4}  CPU s/1k req: bridge upstream nats loadgen",
    ]
    for p in phases:
        c = p.cpu_per_1k
        lines.append(
            f"{p.kind:7} {p.path:7} {p.mode:5} {p.rps:9.1f} {p.p50_ms:8.3f} {p.p99_ms:8.3f} "
            f"{p.errors:4d}  {c['bridge']:6.3f} {c['upstream']:8.3f} {c['nats']:5.3f} "
            f"{c['loadgen']:7.3f}"
        )
    lines.append("")
    for kind in ("reads", "writes"):
        by = {(p.path, p.mode): p for p in phases if p.kind == kind}
        ratio = by[("bridge", "max")].rps / by[("direct", "max")].rps
        added = by[("bridge", "half")].p50_ms - by[("direct", "half")].p50_ms
        lines.append(
            f"{kind}: bridge/direct throughput {ratio:.2f}x; added p50 at half load {added:.3f} ms"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--bridge-log-level",
        default="info",
        choices=["info", "warning"],
        help="info (default) includes the canonical line per request",
    )
    parser.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream is not None:
        uvloop.run(_serve_upstream(args.serve_upstream))
        return 0
    with tempfile.TemporaryDirectory(prefix="xr-bench-") as tmp:
        phases = uvloop.run(
            _bench(args.seconds, args.concurrency, Path(tmp), args.bridge_log_level)
        )
    print(_report(phases))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(p) for p in phases], indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
