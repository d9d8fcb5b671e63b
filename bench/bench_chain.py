"""Benchmark: the whole chain of a `make up`-like deployment, lag and CPU per replicated write.

    .venv/bin/xregion bench chain [--rates 200,500] [--seconds 10]
                                  [--json bench/results/chain.json]

One run boots the chain as `xregion up` does (`bench/chain.py`: 3 regions, 1 nats-server
each, no fault proxy; per region bridge, broadcaster, replayer and the demo service, real
processes, signing on, default settings) and, for each rate in `--rates`, drives writes
through us-east's bridge at that rate for `--seconds` (open loop, `bench/loadgen.py`, a key
per write). Each write is replicated to eu-west and ap-south.

Reported per rate: lag (the client's 2xx to the other region's service answering the replay,
both targets together) p50 / p99 / max, and the CPU milliseconds per replicated write of
each process of the chain (from /proc/<pid>/stat, read before the load and after the last
replay was answered, divided by the writes): us-east's bridge and broadcaster, each target's
replayer and demo service, each region's nats-server, and their sum.

Target (issue 14): lag p99 <= 25 ms at 500 writes/s; the sum of CPU per write is what has to
roughly halve for it on 2 cores shared by all three regions.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chain import drive, machine, running_chain
from results import write_result

_WARMUP = ["--count", "500", "--concurrency", "8"]


def _line(row: dict[str, Any]) -> str:
    lag = row["lag"]["all"]
    parts = sorted(row["cpu_ms_per_write"].items(), key=lambda kv: -kv[1])
    per = ", ".join(f"{n} {v:.3f}" for n, v in parts if v >= 0.005)
    return (
        f"{row['rate']:>7.1f}/s lag p50 {lag['p50_ms']} p99 {lag['p99_ms']} max {lag['max_ms']}"
        f" ms; CPU ms/write {row['cpu_ms_per_write_total']:.3f}: {per}"
    )


async def _bench(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    async with running_chain(workdir, fault_proxy=False) as chain:
        await drive(chain, "warmup", _WARMUP)
        for rate in args.rates:
            load = ["--rate", str(rate), "--seconds", str(args.seconds)]
            row = {"target_rate": rate, **(await drive(chain, f"r{rate:g}", load)).summary()}
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="200,500", help="paced write rates, writes/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="per rate")
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/chain.json")
    args = parser.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",")]
    info = machine()
    with tempfile.TemporaryDirectory(prefix="xr-bench-chain-") as tmp:
        rows = uvloop.run(_bench(args, Path(tmp)))
    write_result("chain", argv, info, {"rows": rows}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
