"""NATS trouble: a gateway link cut, a region partitioned, the origin's NATS stopped, a
server of the 3-server region (its streams' leader) SIGKILLed."""

from __future__ import annotations

import time

import pytest

from shared.natsconn import NatsConnection
from shared.regions import events_stream
from tests.chaos.conftest import MakeDeployment
from tests.harness.chaos_run import ChaosRun
from tests.harness.chaos_stack import BIG_REGION
from tests.harness.collection_stack import metric_total

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(480)]

WARMUP_S = 4.0
AFTER_S = 3.0
CUT_S = 30.0
PARTITION_S = 60.0
NATS_DOWN_S = 10.0
LEADER_DOWN_S = 6.0


async def test_gateway_cut_then_partition(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment()
    faults = deployment.cluster.faults
    run = ChaosRun(
        "gateway_cut_and_partition",
        f"us-east <-> eu-west gateway cut {CUT_S:g} s; ap-south partitioned {PARTITION_S:g} s",
        deployment,
    )
    await run.start_load()
    await run.load_for(WARMUP_S, writes=30)
    await faults.cut("us-east", "eu-west")
    await run.load_for(CUT_S)
    await faults.restore("us-east", "eu-west")
    run.facts["cut_time_to_recover_s"] = await run.recovered(time.time())
    await faults.cut("ap-south", "us-east")
    await faults.cut("ap-south", "eu-west")
    await run.load_for(PARTITION_S)
    await faults.heal_all()
    run.facts["partition_catch_up_s"] = await run.recovered(time.time())
    await run.load_for(AFTER_S)
    result = await run.finish()
    assert not result.problems, "\n".join(result.problems)


async def test_origin_nats_down_outbox_path(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment()
    origin = "ap-south"
    servers = [s.name for s in deployment.cluster.servers if s.cluster == origin]
    bridge = deployment.stacks[origin].bridge
    run = ChaosRun(
        "origin_nats_down",
        f"every nats-server of {origin} stopped {NATS_DOWN_S:g} s under load (outbox path)",
        deployment,
    )
    await run.start_load()
    await run.load_for(WARMUP_S, writes=30)
    for name in servers:
        await deployment.cluster.stop_server(name)
    down_at = time.time()
    await run.load_for(NATS_DOWN_S, writes=0)
    depth = metric_total(await bridge.metrics(deployment.http), "xr_bridge_outbox_depth", {})
    assert run.load is not None
    run.facts["accepted_while_down"] = run.load.accepted_since(down_at, origin)
    run.facts["outbox_depth_before_restart"] = depth
    for name in servers:
        await deployment.cluster.start_server(name)
    await deployment.cluster.wait_ready(90)
    run.facts["time_to_recover_s"] = await run.recovered(time.time())
    await run.load_for(AFTER_S)
    result = await run.finish()
    assert not result.problems, "\n".join(result.problems)
    assert depth > 0, "no write went through the outbox: the outage did not bite"


async def test_sigkill_stream_leader_of_the_r3_region(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment()
    run = ChaosRun(
        "sigkill_stream_leader",
        f"SIGKILL the nats-server leading {events_stream(BIG_REGION)} (R3), restart it",
        deployment,
        repeats_allowed=False,
    )
    await run.start_load()
    await run.load_for(WARMUP_S, writes=30)
    settings = deployment.stacks[BIG_REGION].settings
    async with NatsConnection(settings.nats, service="chaos-leader") as conn:
        info = await conn.jetstream().stream_info(events_stream(BIG_REGION))
    assert info.cluster is not None
    assert info.cluster.leader
    leader = info.cluster.leader
    run.facts["killed_server"] = leader
    run.facts["replicas"] = len(info.cluster.replicas or []) + 1
    await deployment.cluster.kill_server(leader)
    await run.load_for(LEADER_DOWN_S)
    await deployment.cluster.start_server(leader)
    await deployment.cluster.wait_ready(90)
    run.facts["time_to_recover_s"] = await run.recovered(time.time())
    await run.load_for(AFTER_S)
    result = await run.finish()
    assert not result.problems, "\n".join(result.problems)
