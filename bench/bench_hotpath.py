"""Benchmark: two per-message steps of the hot path, each against what it replaced, side by
side in one process and one run.

    xregion bench hotpath [--rounds 7] [--records 5000] [--json out.json]

* `headers`: parsing one received event's header block (an event as the bridge encodes it,
  signature included): nats-py 2.16's `Client._parse_header_lines` against
  `shared.frames.parse_header_lines`, which every service's client uses. Microseconds per
  block, `timeit`, best of each round.
* `records`: the bridge's version record of a key it remembers (the common case), through
  `LocalVersions.start` against a real nats-server (3-region super-cluster, 1 server each,
  the us-east bucket): the queued compare-and-set settled in a callback (`quick`) against
  the same record through `LocalVersions.record` as a task (`task`, the path every record
  took before). 32 writers, `--records` records over 1,000 keys per round, 5 ms coalescing
  (the bridge's default). CPU microseconds of this process per record (utime+stime; the
  server's CPU is the same for both: one compare-and-set each).

Rounds alternate the two sides; the table gives the median of the rounds and the ratio of
the medians. This machine's noise is large (docs/PERFORMANCE.md): compare the two columns
of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import timeit
from pathlib import Path

import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import machine as results_machine

from services.bridge.versions import LocalVersions
from services.xregion.local.supercluster import SuperCluster, with_free_ports
from services.xregion.natsconf import build_topology
from shared.envelope import Event, encode, new_traceparent
from shared.frames import header_block, parse_header_lines
from shared.hlc import Hlc
from shared.ids import uuid7_str
from shared.logs import configure_logging
from shared.natsconn import NatsConnection
from shared.provision import versions_bucket
from shared.settings import NatsSettings
from shared.signing import Signer
from shared.tasks import TaskSet

RESULTS = Path(__file__).parent / "results" / "hotpath.json"
REGION = "us-east"
WRITERS = 32
KEYS = 1000


def _header_block() -> bytes:
    """The header lines of a signed event, as a received HMSG carries them."""
    event = Event(
        event_id=uuid7_str(),
        origin=REGION,
        service="configs",
        method="PUT",
        path="/configs/flags/checkout",
        hlc=Hlc().now(),
        key="/configs/flags/checkout",
        body=b'{"enabled": true}',
        trace=new_traceparent(),
        req_headers=(("content-type", "application/json"),),
    )
    signer = Signer(f"{REGION}-bridge-1", Ed25519PrivateKey.generate())
    headers, _ = encode(signer.sign(event))
    return header_block(headers)[len(b"NATS/1.0\r\n") :]


def _headers_round(raw: bytes) -> dict[str, float]:
    assert parse_header_lines(raw) == Client._parse_header_lines(raw)
    out = {}
    for side, parse in (("nats-py", Client._parse_header_lines), ("ours", parse_header_lines)):
        best = min(timeit.repeat(lambda p=parse: p(raw), number=2000, repeat=5))  # type: ignore[misc]
        out[side] = best / 2000 * 1e6
    return out


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _TaskOnly(LocalVersions):
    """Every record through `record` as a task: the path before the queued compare-and-set."""

    def _quick_record(self, tasks: TaskSet, args: tuple[str, str, str, str, str, int]) -> None:
        return None


async def _records_round(versions: LocalVersions, side: str, count: int, hlc: Hlc) -> float:
    """CPU microseconds per record of `count` records by `WRITERS` writers, over `KEYS` keys
    of the service `bench-<side>`."""
    service = f"bench-{side}"
    tasks = TaskSet(service)
    numbers = iter(range(count))

    async def writer() -> None:
        for n in numbers:
            key = f"/{service}/{n % KEYS}"
            outcome = await versions.start(tasks, service, key, str(hlc.now()), uuid7_str(),
                                           trace_id="bench")  # fmt: skip
            if outcome != "recorded":
                raise RuntimeError(f"record {n} of {side}: {outcome}")

    started = _cpu_s()
    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return (_cpu_s() - started) / count * 1e6


async def _records(rounds: int, count: int, workdir: Path) -> dict[str, list[float]]:
    topology = with_free_ports(build_topology((REGION, "eu-west", "ap-south")))
    sides: dict[str, type[LocalVersions]] = {"task": _TaskOnly, "quick": LocalVersions}
    out: dict[str, list[float]] = {kind: [] for kind in sides}
    hlc = Hlc()
    async with SuperCluster(topology, workdir / "nats") as cluster:
        settings = NatsSettings(servers=cluster.client_urls(REGION), first_connect_timeout_s=10)
        async with NatsConnection(settings, service="bench-hotpath") as conn:
            await conn.jetstream().create_key_value(bucket=versions_bucket(REGION), history=1)
            async with contextlib.AsyncExitStack() as stack:
                opened = {}
                for kind, cls in sides.items():
                    versions = cls(
                        conn, region=REGION, owner=f"bench-{kind}", timeout_s=5,
                        max_inflight=1024, coalesce_s=0.005,
                    )  # fmt: skip
                    opened[kind] = await stack.enter_async_context(versions)
                    await _records_round(opened[kind], kind, KEYS, hlc)  # creates every key
                    await _records_round(opened[kind], kind, count // 5, hlc)  # warm-up
                for rnd in range(1, rounds + 1):
                    for kind, versions in opened.items():
                        us = await _records_round(versions, kind, count, hlc)
                        out[kind].append(us)
                        print(f"round {rnd} records {kind}: {us:.1f} CPU us/record", flush=True)
    return out


def _table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["step     before (what it replaced)   after (ours)   after/before"]
    for step, (before, after, unit) in (
        ("headers", (rows["headers"]["nats-py"], rows["headers"]["ours"], "us/block")),
        ("records", (rows["records"]["task"], rows["records"]["quick"], "CPU us/record")),
    ):
        lines.append(f"{step:8} {before:10.1f} {unit:16} {after:10.1f}     {after / before:6.2f}x")
    return "\n".join(lines)


async def _main(args: argparse.Namespace) -> int:
    configure_logging("warning", json=True)
    raw = _header_block()
    parsed: dict[str, list[float]] = {"nats-py": [], "ours": []}
    for _ in range(args.rounds):
        for side, us in _headers_round(raw).items():
            parsed[side].append(us)
    with tempfile.TemporaryDirectory(prefix="xr-bench-hotpath-") as tmp:
        records = await _records(args.rounds, args.records, Path(tmp))
    medians = {
        "headers": {side: statistics.median(v) for side, v in parsed.items()},
        "records": {side: statistics.median(v) for side, v in records.items()},
    }
    print(_table(medians))
    result = {
        "command": "xregion bench hotpath",
        "machine": results_machine(),
        "rounds": args.rounds,
        "header_block_bytes": len(raw),
        "headers_us": parsed,
        "records_cpu_us": records,
        "medians": medians,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"figures written to {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds per step")
    parser.add_argument("--records", type=int, default=5000, help="records per round and side")
    parser.add_argument("--json", type=Path, default=RESULTS, help="write the figures here")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return uvloop.run(_main(args))
    return 130


if __name__ == "__main__":
    sys.exit(main())
