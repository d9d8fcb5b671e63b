"""The downstream service fails: 503 for a while, then slow (2 s per call) for a while."""

from __future__ import annotations

import time

import pytest

from tests.chaos.conftest import MakeDeployment
from tests.harness.chaos_run import ChaosRun

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(420)]

REGION = "eu-west"
WARMUP_S = 4.0
UNAVAILABLE_S = 10.0
BETWEEN_S = 4.0
SLOW_S = 20.0
SLOW_CALL_S = 2.0


async def test_downstream_503_then_slow(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment()
    downstream = deployment.stacks[REGION].downstream
    run = ChaosRun(
        "downstream_503_then_slow",
        f"{REGION}'s service answers 503 for {UNAVAILABLE_S:g} s, later takes "
        f"{SLOW_CALL_S:g} s per call for {SLOW_S:g} s",
        deployment,
    )
    await run.start_load()
    await run.load_for(WARMUP_S, writes=30)
    await downstream.set_fault(deployment.http, status=503)
    await run.load_for(UNAVAILABLE_S, writes=0)
    await downstream.set_fault(deployment.http)
    healed = time.time()
    run.facts["503_time_to_recover_s"] = await run.recovered(healed)
    await run.load_for(BETWEEN_S)
    await downstream.set_fault(deployment.http, delay_s=SLOW_CALL_S)
    await run.load_for(SLOW_S, writes=0)
    await downstream.set_fault(deployment.http)
    healed = time.time()
    run.facts["slow_time_to_recover_s"] = await run.recovered(healed)
    result = await run.finish()
    assert not result.problems, "\n".join(result.problems)
    assert result.retried_attempts > 0, "the 503s were never seen: the fault did not bite"
