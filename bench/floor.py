"""The lag bench's floor: the least any replicator must do between the origin's 2xx and the
target's service answering, done by the shortest program we could write.

    python bench/floor.py --origin REGION --origin-nats URL
                          --target REGION NATS_URL SERVICE_URL [--target ...]

By the time the bridge answers 2xx, the write is an event in the origin's events stream. From
there, for each target region, this process does what durable cross-region replay cannot do
without: read the event from the events stream (one pull consumer on the origin's server),
store it in the target region (an awaited JetStream publish into a stream placed there, both
targets at once), read it back there (one pull consumer on the target's server) and call the
target's service with the event's method, path and body (one pooled aiohttp client). Nothing
else: no policy, signature, version record, claim, retry, dead letter, metric or log line,
and no acks (the consumers are AckNone; an ack is sent after the call anyway, so it is not on
the lag path). Intake is `shared/puller.py`, the same as the broadcaster's and the replayer's.

Run by `bench/bench_lag.py` (phase `floor idle`, with the origin's broadcaster stopped so that
the target services answer only this process), which measures it exactly as it measures the
chain. Prints `ready` once it is; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

import aiohttp
import nats
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Placement, StreamConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.envelope import decode
from shared.lifecycle import until_signalled
from shared.puller import PENDING_BYTES, Puller
from shared.regions import events_stream, events_subject
from shared.tasks import TaskSet

_CONSUMER = "bench-floor"
_EXPIRES_S = 1.0


def _floor_stream(target: str) -> str:
    return f"BENCH_FLOOR_{target.upper().replace('-', '_')}"


def _floor_subject(target: str) -> str:
    return f"bench.floor.{target}"


async def _pull_forever(puller: Puller) -> None:
    await puller.start()
    while True:
        await puller.request(256, _EXPIRES_S)
        with contextlib.suppress(Exception):  # a floor: whatever failed, ask again
            await puller.wait_closed(_EXPIRES_S)


async def _consumer(nc: Client, stream: str, subject: str) -> None:
    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name=_CONSUMER, filter_subject=subject, ack_policy=AckPolicy.NONE,
        deliver_policy=DeliverPolicy.NEW,
    )  # fmt: skip
    await js.add_consumer(stream, config)


async def _serve(args: argparse.Namespace) -> None:
    origin = await nats.connect(args.origin_nats)
    targets: dict[str, Client] = {}
    tasks = TaskSet("bench-floor")
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    try:
        js = origin.jetstream()
        for target, nats_url, service_url in args.target:
            stream = _floor_stream(target)
            subject = _floor_subject(target)
            placed = Placement(cluster=target)
            await js.add_stream(StreamConfig(name=stream, subjects=[subject], placement=placed))
            nc = targets[target] = await nats.connect(nats_url)
            await _consumer(nc, stream, subject)
            replaying = _replaying(nc, stream, service_url, session, tasks)
            _ = tasks.spawn(_pull_forever(replaying))
        await _consumer(origin, events_stream(args.origin), events_subject(args.origin))

        async def carry(msg: Msg) -> None:
            stores = [js.publish(_floor_subject(t), msg.data, headers=msg.headers) for t in targets]
            await asyncio.gather(*stores)

        async def carried(msg: Msg) -> None:
            _ = tasks.spawn(carry(msg))

        intake = Puller(
            origin, stream=events_stream(args.origin), consumer=_CONSUMER, on_msg=carried,
            pending_bytes_limit=PENDING_BYTES,
        )  # fmt: skip
        _ = tasks.spawn(_pull_forever(intake))
        print("ready", flush=True)
        await until_signalled(lambda stopped: stopped())
    finally:
        await tasks.cancel("bench floor stopping")
        await session.close()
        for nc in (*targets.values(), origin):
            await nc.close()


def _replaying(
    nc: Client, stream: str, service_url: str, session: aiohttp.ClientSession, tasks: TaskSet,
) -> Puller:  # fmt: skip
    async def call(msg: Msg) -> None:
        event = decode(msg.headers, msg.data)
        content_type = dict(event.req_headers).get("content-type", "application/json")
        async with session.request(
            event.method, service_url + event.path, data=event.body,
            headers={"Content-Type": content_type},
        ) as response:  # fmt: skip
            await response.read()

    async def arrived(msg: Msg) -> None:
        _ = tasks.spawn(call(msg))

    return Puller(
        nc, stream=stream, consumer=_CONSUMER, on_msg=arrived, pending_bytes_limit=PENDING_BYTES
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--origin", required=True, help="the origin region's name")
    parser.add_argument("--origin-nats", required=True, help="a NATS URL of the origin region")
    parser.add_argument(
        "--target", nargs=3, action="append", required=True,
        metavar=("REGION", "NATS_URL", "SERVICE_URL"), help="a target region (repeatable)",
    )  # fmt: skip
    uvloop.run(_serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
