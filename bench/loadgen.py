"""Load for the chain benches: writes through a bridge, noting when each 2xx arrived.

    python bench/loadgen.py --url BRIDGE --prefix P --out FILE.json
        (--rate R --seconds S | --count N --concurrency C | --count N --gap-ms G)

Each write is a PUT of a small JSON document (about 256 bytes) to `/configs/bench/<P>-<i>`,
a key of its own, so every write is one replicated event and one replay call per target.

* `--rate R --seconds S`: open loop, R writes/s on a fixed schedule whatever the answers do
  (at most `--connections` open: a write that finds them all busy waits, and that wait
  counts in its latency);
* `--count N --concurrency C`: N writes as fast as C keep-alive connections go;
* `--count N --gap-ms G`: N writes one at a time, G ms apart (an idle system).

`FILE.json` gets `{"ok": {path: wall ns of its 2xx}, "errors": n, "seconds", "cpu_s",
"latency_ms": {"p50", "p99"}}`; `cpu_s` is this process's own CPU, the load's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import aiohttp
import uvloop

BODY = json.dumps({"value": "v" * 240}).encode()
_HEADERS = {"Content-Type": "application/json"}


class Load:
    def __init__(self, http: aiohttp.ClientSession, url: str, prefix: str) -> None:
        self.http = http
        self.url = url
        self.path = f"/configs/bench/{prefix}-"
        self.ok: dict[str, int] = {}
        self.latencies: list[float] = []
        self.errors = 0

    async def write(self, i: int) -> None:
        path = self.path + str(i)
        started = time.perf_counter()
        try:
            async with self.http.put(self.url + path, data=BODY, headers=_HEADERS) as reply:
                await reply.read()
                status = reply.status
        except aiohttp.ClientError:
            status = 0
        done_ns = time.time_ns()
        self.latencies.append(time.perf_counter() - started)
        if 200 <= status < 300:
            self.ok[path] = done_ns
        else:
            self.errors += 1


async def _paced(load: Load, rate: float, seconds: float) -> None:
    began = time.perf_counter()
    async with asyncio.TaskGroup() as tasks:
        for i in range(int(rate * seconds)):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.create_task(load.write(i))


async def _closed(load: Load, count: int, concurrency: int) -> None:
    numbers = iter(range(count))

    async def client() -> None:
        for i in numbers:
            await load.write(i)

    async with asyncio.TaskGroup() as tasks:
        for _ in range(concurrency):
            tasks.create_task(client())


async def _spaced(load: Load, count: int, gap_s: float) -> None:
    for i in range(count):
        await load.write(i)
        await asyncio.sleep(gap_s)


async def _run(args: argparse.Namespace) -> dict[str, object]:
    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        load = Load(http, args.url.rstrip("/"), args.prefix)
        cpu_before, began = time.process_time(), time.perf_counter()
        if args.rate is not None:
            await _paced(load, args.rate, args.seconds)
        elif args.gap_ms is not None:
            await _spaced(load, args.count, args.gap_ms / 1000)
        else:
            await _closed(load, args.count, args.concurrency)
        seconds = time.perf_counter() - began
        ordered = sorted(load.latencies) or [0.0]
        return {
            "ok": load.ok,
            "errors": load.errors,
            "seconds": round(seconds, 3),
            "cpu_s": round(time.process_time() - cpu_before, 3),
            "latency_ms": {
                "p50": round(statistics.median(ordered) * 1000, 3),
                "p99": round(ordered[int(0.99 * (len(ordered) - 1))] * 1000, 3),
            },
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the bridge, e.g. http://127.0.0.1:8080")
    parser.add_argument("--prefix", required=True, help="key prefix of this run's writes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rate", type=float, default=None, help="writes/s (open loop)")
    parser.add_argument("--seconds", type=float, default=5.0, help="with --rate")
    parser.add_argument("--count", type=int, default=1000, help="without --rate")
    parser.add_argument("--concurrency", type=int, default=32, help="closed loop")
    parser.add_argument("--gap-ms", type=float, default=None, help="one write at a time")
    parser.add_argument("--connections", type=int, default=64, help="at most this many open")
    args = parser.parse_args()
    result = uvloop.run(_run(args))
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
