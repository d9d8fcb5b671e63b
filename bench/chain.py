"""The whole replication chain of a local deployment, for the lag, chain and memory benches.

`running_chain()` boots what `xregion up` boots (a 3-region NATS super-cluster, 1 server per
region, every region provisioned with the default settings and signing on; per region a
bridge, a broadcaster, a replayer and the demo service, as separate processes) with two
differences: the super-cluster may have the fault proxy on its gateways (`fault_proxy=True`,
to inject a one-way delay), and each region's demo service runs inside `bench/recorder.py`,
which notes when it answered each write (the time the lag is measured to). The bench owns
every process (no supervisor restarting them), so it can stop and start one.

Writes are sent by `bench/loadgen.py` processes, which note when each 2xx arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from procs import cpu_seconds, pids_using, wait_http
from results import machine

from services.xregion.local.stack import RegionStack, plan_stacks, write_stack_files
from services.xregion.local.supercluster import SuperCluster, stop_process, with_free_ports
from services.xregion.natsconf import build_topology

__all__ = [
    "BENCH_PROCESS",
    "ORIGIN",
    "REGIONS",
    "TARGETS",
    "Chain",
    "Driven",
    "cpu_snapshot",
    "drive",
    "lag_stats",
    "machine",
    "rss_mb",
    "run_load",
    "running_chain",
]

ORIGIN = "us-east"
REGIONS = ("us-east", "eu-west", "ap-south")
TARGETS = ("eu-west", "ap-south")
ROLES = ("bridge", "broadcaster", "replayer")
BENCH_DIR = Path(__file__).resolve().parent
XREGION = (sys.executable, "-m", "services.xregion", "--log-format", "json")
_STOP_TIMEOUT_S = 20.0
# This process: with `fault_proxy=True` it relays every gateway byte (and polls the services).
BENCH_PROCESS = "bench (fault proxy)"
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Chain:
    """The running chain: its super-cluster, stacks and processes by name
    (`<region>-<role>`, `<region>-service`, `<region>-nats`)."""

    cluster: SuperCluster
    stacks: dict[str, RegionStack]
    workdir: Path
    log_level: str
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    nats_pids: dict[str, int] = field(default_factory=dict)

    def pids(self) -> dict[str, int]:
        live = {n: p.pid for n, p in self.procs.items() if p.returncode is None}
        return {**live, **self.nats_pids}

    async def start(self, region: str, role: str) -> None:
        """Start one process of a region's stack and wait until it is ready."""
        stack = self.stacks[region]
        name = f"{region}-{role}"
        if role == "service":
            argv: tuple[str, ...] = (
                sys.executable, str(BENCH_DIR / "recorder.py"),
                "--listen", f"127.0.0.1:{stack.ports.service}",
                "--db", str(stack.directory / "configs.sqlite"),
            )  # fmt: skip
            ready = f"{stack.service_url}/healthz"
        else:
            argv = (*XREGION, "--log-level", self.log_level, role, "--config", str(stack.config))
            ready = f"{stack.admin_urls()[role]}/readyz"
        log = self.workdir / "logs" / f"{name}.log"
        with log.open("ab") as out:
            self.procs[name] = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=_env()
            )
        try:
            await wait_http(ready, timeout_s=60)
        except TimeoutError:
            tail = " | ".join(log.read_text(errors="replace").splitlines()[-5:])
            raise RuntimeError(f"{name} not ready at {ready}: {tail}") from None

    async def stop(self, region: str, role: str) -> None:
        proc = self.procs.pop(f"{region}-{role}")
        await stop_process(proc, _STOP_TIMEOUT_S)

    async def stop_all(self) -> None:
        for role in ("bridge", "replayer", "broadcaster", "service"):  # `up`'s stop order
            for region in REGIONS:
                if f"{region}-{role}" in self.procs:
                    await self.stop(region, role)

    async def answered(self, region: str) -> dict[str, int]:
        """When the region's service answered each write so far (path -> wall ns)."""
        reply = await self._get(region, "")
        return {path: int(ns) for path, ns in reply.items()}

    async def answered_count(self, region: str) -> int:
        """How many distinct writes the region's service answered so far (cheap to poll)."""
        return int((await self._get(region, "?count"))["count"])

    async def _get(self, region: str, query: str) -> dict[str, Any]:
        url = self.stacks[region].service_url + "/_bench/answered" + query
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            reply = await http.get(url)
            reply.raise_for_status()
            found: dict[str, Any] = reply.json()
            return found

    async def forget(self) -> None:
        """Clear every service's notes (between phases)."""
        async with httpx.AsyncClient(timeout=30, trust_env=False) as http:
            for stack in self.stacks.values():
                (await http.delete(stack.service_url + "/_bench/answered")).raise_for_status()

    async def wait_counts(self, count: int, regions: Iterable[str], timeout_s: float) -> bool:
        """Until each region's service answered `count` writes since `forget()`; False at
        the deadline. Polls only counts: the fault proxy runs on this process's event loop,
        and decoding big answers here would delay the gateway traffic it relays."""
        deadline = time.monotonic() + timeout_s
        while True:
            counts = [await self.answered_count(r) for r in regions]
            if min(counts) >= count:
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.25)  # polling interval of the services' notes


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XR_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [env.get("PYTHONPATH"), str(BENCH_DIR.parent)])
    )
    return env


async def _provision(stack: RegionStack) -> None:
    proc = await asyncio.create_subprocess_exec(
        *XREGION, "provision", "--config", str(stack.config), "--replicas", "1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"provision {stack.region} failed: {err.decode()}")


def _nats_pids(workdir: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for pid in pids_using(str(workdir)):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"nats-server" not in argv[0]:
                continue
            conf = next(a.decode() for a in argv if a.endswith(b".conf"))
            region = next(r for r in REGIONS if r in Path(conf).name)
            found[f"{region}-nats"] = pid
    return found


@contextlib.asynccontextmanager
async def running_chain(
    workdir: Path, *, fault_proxy: bool, log_level: str = "info"
) -> AsyncIterator[Chain]:
    """The chain described in the module docstring, stopped at the end whatever happens."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    topology = with_free_ports(build_topology(list(REGIONS)))
    async with SuperCluster(topology, workdir / "nats", fault_proxy=fault_proxy) as cluster:
        planned = plan_stacks(
            REGIONS,
            base_port=0,
            workdir=workdir,
            nats={r: cluster.client_urls(r) for r in REGIONS},
            nats_monitor={r: cluster.monitor_urls(r) for r in REGIONS},
        )
        write_stack_files(planned, workdir)
        chain = Chain(cluster, {s.region: s for s in planned}, workdir, log_level)
        chain.nats_pids = _nats_pids(workdir / "nats")
        try:
            for stack in planned:
                await _provision(stack)
            for region in REGIONS:
                for role in ("service", *ROLES):
                    await chain.start(region, role)
            yield chain
        finally:
            await chain.stop_all()


# --------------------------------------------------------------------------- measuring


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process (absent when it has exited)."""
    found = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            found[name] = cpu_seconds(pid)
    return found


def machine_ticks() -> dict[str, int]:
    """The machine's CPU ticks so far (all cores): busy (user, nice, system, irq, softirq,
    steal), iowait, idle."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
    busy = user + nice + system + irq + softirq + steal
    return {"busy": busy, "iowait": iowait, "idle": idle}


def rss_mb(pid: int) -> float:
    """Resident set size of a live process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"no VmRSS for {pid}")


def lag_stats(lags_ms: list[float]) -> dict[str, Any]:
    """count, p50, p99 and max of a list of lags (ms)."""
    if not lags_ms:
        return {"count": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(lags_ms)
    return {
        "count": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(0.99 * (len(ordered) - 1))], 2),
        "max_ms": round(ordered[-1], 2),
    }


# --------------------------------------------------------------------------- driving


@dataclass
class Driven:
    """One load phase: what the load got, each target's lag, each process's CPU."""

    writes: int
    errors: int
    load_s: float
    span_s: float  # from the first write to the last replay answered in every target
    loadgen_cpu_s: float
    client_p50_ms: float
    lag: dict[str, dict[str, Any]]  # per target, and "all"
    missing: dict[str, int]  # writes never answered in that target before the deadline
    cpu_s: dict[str, float]  # per process over the span
    loadavg_1m: float  # of the machine at the end (other work shares it)
    machine_cores: dict[str, float]  # busy / iowait / idle, in cores, over the span

    def summary(self) -> dict[str, Any]:
        per_write = {n: round(c / max(self.writes, 1) * 1000, 3) for n, c in self.cpu_s.items()}
        share = {n: round(c / self.span_s, 2) for n, c in self.cpu_s.items()}
        return {
            "writes": self.writes,
            "errors": self.errors,
            "load_s": self.load_s,
            "span_s": round(self.span_s, 3),
            "rate": round(self.writes / self.load_s, 1),
            "client_p50_ms": self.client_p50_ms,
            "lag": self.lag,
            "missing": self.missing,
            "loadgen_cpu_share": round(self.loadgen_cpu_s / self.load_s, 2),
            "cpu_ms_per_write": per_write,
            "cpu_share": share,
            "cpu_ms_per_write_total": round(sum(per_write.values()), 3),
            "loadavg_1m": self.loadavg_1m,
            "machine_cores": self.machine_cores,
        }


async def run_load(
    chain: Chain, prefix: str, load_args: list[str], url: str | None = None
) -> dict[str, Any]:
    """One `bench/loadgen.py` process against `url` (default: the origin's bridge); its
    JSON result."""
    out = chain.workdir / f"load-{prefix}.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(BENCH_DIR / "loadgen.py"),
        "--url", url or chain.stacks[ORIGIN].bridge_url, "--prefix", prefix, "--out", str(out),
        *load_args,
    )  # fmt: skip
    if await proc.wait() != 0:
        raise RuntimeError(f"loadgen {prefix} exited with {proc.returncode}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


async def drive(
    chain: Chain, prefix: str, load_args: list[str], *, drain_timeout_s: float = 60
) -> Driven:
    """Run one load phase and wait until every target's service answered every write."""
    await chain.forget()
    pids = chain.pids()
    before = {**cpu_snapshot(pids), BENCH_PROCESS: time.process_time()}
    ticks = machine_ticks()
    began = time.monotonic()
    load = await run_load(chain, prefix, load_args)
    sent: dict[str, int] = load["ok"]
    await chain.wait_counts(len(sent), TARGETS, drain_timeout_s)
    span = time.monotonic() - began
    after = {**cpu_snapshot(pids), BENCH_PROCESS: time.process_time()}
    used = {k: (v - ticks[k]) / _TICKS / span for k, v in machine_ticks().items()}
    seen = {target: await chain.answered(target) for target in TARGETS}
    lags: dict[str, list[float]] = {t: [] for t in TARGETS}
    for target in TARGETS:
        answered = seen[target]
        lags[target] = [(answered[p] - ns) / 1e6 for p, ns in sent.items() if p in answered]
    stats = {t: lag_stats(v) for t, v in lags.items()}
    stats["all"] = lag_stats([x for v in lags.values() for x in v])
    return Driven(
        writes=len(sent),
        errors=int(load["errors"]),
        load_s=float(load["seconds"]),
        span_s=span,
        loadgen_cpu_s=float(load["cpu_s"]),
        client_p50_ms=float(load["latency_ms"]["p50"]),
        lag=stats,
        missing={t: len(sent) - len(lags[t]) for t in TARGETS},
        cpu_s={n: round(after[n] - before[n], 3) for n in before if n in after},
        loadavg_1m=round(os.getloadavg()[0], 2),
        machine_cores={k: round(v, 2) for k, v in used.items()},
    )
