"""Benchmark: resident memory of every service at rest, under load and with a backlog waiting.

    .venv/bin/xregion bench memory [--backlog 100000] [--rate 500] [--seconds 10]
                                   [--json bench/results/memory.json]

One run boots the chain of a local deployment (`bench/chain.py`: 3 regions, no fault proxy,
real processes, default settings, signing on) and reads each process's VmRSS from
/proc/<pid>/status:

* rest     — after a warm-up of 500 writes, nothing in flight;
* load     — the largest value seen (sampled every 0.5 s) while us-east's bridge takes
             `--rate` writes/s for `--seconds`;
* backlog  — eu-west's replayer is stopped and the broadcaster's path to ap-south paused
             (`xregion pause`'s switch), then `--backlog` writes go through the bridge (32
             connections, 2 load processes): the events wait in eu-west's replay stream and in
             the broadcaster's consumer for ap-south. RSS with that backlog waiting (the
             bridge and broadcaster having carried it), then the largest value seen while
             the replayer is started again and ap-south resumed, until both services have
             answered every write (`drain`).

Target (issue 14): each service < 150 MB in every state.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from chain import ORIGIN, TARGETS, Chain, drive, machine, rss_mb, run_load, running_chain
from results import write_result

from services.broadcaster.pause import set_pause
from shared.natsconn import NatsConnection
from shared.settings import NatsSettings

LIMIT_MB = 150.0
_SAMPLE_S = 0.5


def _rss(chain: Chain) -> dict[str, float]:
    found = {}
    for name, pid in chain.pids().items():
        with contextlib.suppress(OSError):
            found[name] = round(rss_mb(pid), 1)
    return found


@contextlib.asynccontextmanager
async def _peak(chain: Chain) -> AsyncIterator[dict[str, float]]:
    """The largest RSS of each process while the body runs (sampled)."""
    peak: dict[str, float] = {}

    async def sample() -> None:
        while True:
            for name, mb in _rss(chain).items():
                peak[name] = max(peak.get(name, 0.0), mb)
            await asyncio.sleep(_SAMPLE_S)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for name, mb in _rss(chain).items():
            peak[name] = max(peak.get(name, 0.0), mb)


async def _pause_seen(chain: Chain, target: str, *, paused: bool) -> None:
    """Set the origin's pause switch for `target` and wait until the broadcaster reports it."""
    settings = NatsSettings(servers=chain.cluster.client_urls(ORIGIN))
    async with NatsConnection(settings, service="bench") as conn:
        await set_pause(conn.jetstream(), ORIGIN, target, paused=paused)
    url = chain.stacks[ORIGIN].admin_urls()["broadcaster"] + "/readyz"
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(timeout=2, trust_env=False) as http:
        while time.monotonic() < deadline:
            detail = (await http.get(url)).json()["checks"]["targets"]["detail"]
            if (f"paused: {target}" in detail) == paused:
                return
            await asyncio.sleep(0.1)  # polling interval of the readiness answer
    raise TimeoutError(f"broadcaster never reported {target} paused={paused}")


async def _backlog(chain: Chain, count: int) -> dict[str, Any]:
    await chain.forget()
    await chain.stop("eu-west", "replayer")
    await _pause_seen(chain, "ap-south", paused=True)
    began = time.monotonic()
    half = count // 2
    async with _peak(chain) as while_writing:
        loads = await asyncio.gather(
            *(
                run_load(chain, f"backlog{i}", ["--count", str(n), "--concurrency", "16"])
                for i, n in enumerate((half, count - half))
            )
        )
    writes = sum(len(load["ok"]) for load in loads)
    written_s = time.monotonic() - began
    await asyncio.sleep(2)  # let the broadcaster settle what it forwarded to eu-west
    waiting = _rss(chain)
    began = time.monotonic()
    async with _peak(chain) as while_draining:
        await chain.start("eu-west", "replayer")
        await _pause_seen(chain, "ap-south", paused=False)
        drained = await chain.wait_counts(writes, TARGETS, timeout_s=600)
    return {
        "writes": writes,
        "errors": sum(int(load["errors"]) for load in loads),
        "write_s": round(written_s, 1),
        "drain_s": round(time.monotonic() - began, 1),
        "drained": drained,
        "while_writing": while_writing,
        "waiting": waiting,
        "draining": while_draining,
    }


async def _bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    async with running_chain(workdir, fault_proxy=False, log_level="warning") as chain:
        await drive(chain, "warmup", ["--count", "500", "--concurrency", "8"])
        rest = _rss(chain)
        print(f"rest: {rest}", flush=True)
        async with _peak(chain) as load:
            await drive(chain, "load", ["--rate", str(args.rate), "--seconds", str(args.seconds)])
        print(f"load: {load}", flush=True)
        backlog = await _backlog(chain, args.backlog)
        print(f"backlog: {backlog}", flush=True)
        return {"rest": rest, "load": load, "backlog": backlog}


def _verdict(states: dict[str, dict[str, float]]) -> dict[str, Any]:
    worst: dict[str, float] = {}
    for values in states.values():
        for name, mb in values.items():
            worst[name] = max(worst.get(name, 0.0), mb)
    over = {n: mb for n, mb in worst.items() if mb >= LIMIT_MB and not n.endswith("nats")}
    return {"limit_mb": LIMIT_MB, "worst_mb": worst, "over_limit": over}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=100_000, help="writes held back")
    parser.add_argument("--rate", type=float, default=500.0, help="writes/s of the load phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="of the load phase")
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/memory.json")
    args = parser.parse_args(argv)
    info = machine()
    with tempfile.TemporaryDirectory(prefix="xr-bench-mem-") as tmp:
        found = uvloop.run(_bench(args, Path(tmp)))
    backlog = found["backlog"]
    states = {
        "rest": found["rest"],
        "load": found["load"],
        "backlog writing": backlog["while_writing"],
        "backlog waiting": backlog["waiting"],
        "backlog draining": backlog["draining"],
    }
    verdict = _verdict(states)
    print(f"worst RSS MB: {verdict['worst_mb']}; over {LIMIT_MB:g} MB: {verdict['over_limit']}")
    figures = {"states": states, "backlog": backlog, "verdict": verdict}
    write_result("memory", argv, info, figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
