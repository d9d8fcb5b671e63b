"""Benchmark: end-to-end replication lag, the client's 2xx to the other region's service answer.

    .venv/bin/xregion bench lag [--delays 0,0.05] [--rates 100,1000] [--seconds 5]
                                [--idle-writes 50] [--json bench/results/lag.json]

One run boots the whole chain of a local deployment (`bench/chain.py`: 3 regions, 1
nats-server each, fault proxy on the gateways; per region bridge, broadcaster, replayer and
the demo service, real processes, signing on) and, for each one-way gateway delay (set on
every pair of regions), drives writes through us-east's bridge with `bench/loadgen.py`:

* idle  — `--idle-writes` single writes, 100 ms apart (nothing else in flight);
* R/s   — for each rate in `--rates`, open loop at R writes/s for `--seconds`.

Last, at 0 ms delay, the floor (`floor idle`): the same idle writes with the origin's
broadcaster stopped and `bench/floor.py` carrying the events instead, the least any durable
replicator must do between the 2xx and the target's answer (read the event, store it in the
target region, read it there, call the service), measured the same way.

Each write has a key of its own. Lag of a write in a target region (eu-west, ap-south) = the
wall time its service (bench/recorder.py) answered the replayed write minus the wall time the
load generator got its 2xx from the bridge (one machine, one clock). Reported per phase:
p50 / p99 / max over both targets (and per target in the JSON), and each process's CPU share
over the phase (CPU seconds / phase seconds, from /proc/<pid>/stat): the process nearest 1.0
is the one that saturates first (a Python process uses one core at most).

Targets (issue 14): idle p50 <= 3 ms at 0 ms delay; p99 <= delay + 25 ms at 100 writes/s;
at 1,000 writes/s, report and say what saturates first.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chain import ORIGIN, REGIONS, TARGETS, Chain, drive, machine, run_load, running_chain
from results import write_result

from services.xregion.local.supercluster import stop_process

_WARMUP = ["--count", "200", "--concurrency", "8"]
FLOOR_PROCESS = "floor (bench/floor.py)"


async def _set_delay(chain: Chain, seconds: float) -> None:
    for i, a in enumerate(REGIONS):
        for b in REGIONS[i + 1 :]:
            await chain.cluster.faults.set_latency(a, b, seconds)


def _line(delay_ms: int, phase: str, row: dict[str, Any]) -> str:
    lag = row["lag"]["all"]
    share = row["cpu_share"]
    busiest = sorted(share.items(), key=lambda kv: -kv[1])[:3]
    top = ", ".join(f"{n} {s:.2f}" for n, s in busiest)
    return (
        f"{delay_ms:>4} ms {phase:>7} {row['rate']:>8.1f}/s  lag p50 {lag['p50_ms']} "
        f"p99 {lag['p99_ms']} max {lag['max_ms']} ms  missing {sum(row['missing'].values())}  "
        f"busiest: {top}; load {row['loadgen_cpu_share']:.2f}"
    )


async def _service_alone(chain: Chain, rate: float, seconds: float) -> dict[str, Any]:
    """The origin's demo service driven directly at `rate`: what it can take without xregion
    (its writes are not replicated, so no lag)."""
    url = chain.stacks[ORIGIN].service_url
    load = await run_load(
        chain, f"direct-{rate:g}", ["--rate", str(rate), "--seconds", str(seconds)], url
    )
    row = {
        "delay_ms": None,
        "phase": f"service alone {rate:g}",
        "writes": len(load["ok"]),
        "errors": load["errors"],
        "rate": round(len(load["ok"]) / load["seconds"], 1),
        "client_p50_ms": load["latency_ms"]["p50"],
        "client_p99_ms": load["latency_ms"]["p99"],
    }
    print(
        f"us-east demo service alone at {rate:g}/s: {row['rate']}/s, "
        f"client p50 {row['client_p50_ms']} ms",
        flush=True,
    )
    return row


async def _bench(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with running_chain(workdir, fault_proxy=True) as chain:
        await drive(chain, "warmup", _WARMUP)
        for delay in args.delays:
            await _set_delay(chain, delay)
            delay_ms = round(delay * 1000)
            phases: list[tuple[str, list[str]]] = [
                ("idle", ["--count", str(args.idle_writes), "--gap-ms", "100"])
            ]
            phases += [
                (f"{rate:g}", ["--rate", str(rate), "--seconds", str(args.seconds)])
                for rate in args.rates
            ]
            for phase, load in phases:
                driven = await drive(chain, f"d{delay_ms}-{phase}", load)
                row = {"delay_ms": delay_ms, "phase": phase, **driven.summary()}
                rows.append(row)
                print(_line(delay_ms, phase, row), flush=True)
            if delay == args.delays[0]:
                rows.append(await _service_alone(chain, max(args.rates), args.seconds))
        await _set_delay(chain, 0)
        rows.append(await _floor(chain, workdir, args.idle_writes))
    return rows


async def _floor(chain: Chain, workdir: Path, idle_writes: int) -> dict[str, Any]:
    """The idle phase again, the events carried by `bench/floor.py` instead of the chain."""
    await chain.stop(ORIGIN, "broadcaster")
    argv = [sys.executable, str(Path(__file__).with_name("floor.py")), "--origin", ORIGIN]
    argv += ["--origin-nats", chain.cluster.client_urls(ORIGIN)[0]]
    for target in TARGETS:
        url = chain.cluster.client_urls(target)[0]
        argv += ["--target", target, url, chain.stacks[target].service_url]
    with (workdir / "logs" / "floor.log").open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=out
        )
    chain.procs[FLOOR_PROCESS] = proc
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            if await proc.stdout.readline() != b"ready\n":
                raise RuntimeError(f"bench/floor.py failed: see {workdir / 'logs' / 'floor.log'}")
        driven = await drive(chain, "floor-idle", ["--count", str(idle_writes), "--gap-ms", "100"])
    finally:
        await stop_process(chain.procs.pop(FLOOR_PROCESS), 10)
    row = {"delay_ms": 0, "phase": "floor idle", **driven.summary()}
    print(_line(0, "floor", row), flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delays", default="0,0.05", help="one-way gateway delays, seconds")
    parser.add_argument("--rates", default="100,1000", help="paced write rates, writes/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="per paced phase")
    parser.add_argument("--idle-writes", type=int, default=50)
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/lag.json")
    args = parser.parse_args(argv)
    args.delays = [float(d) for d in args.delays.split(",")]
    args.rates = [float(r) for r in args.rates.split(",")]
    info = machine()
    with tempfile.TemporaryDirectory(prefix="xr-bench-lag-") as tmp:
        rows = uvloop.run(_bench(args, Path(tmp)))
    write_result("lag", argv, info, {"origin": ORIGIN, "rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
