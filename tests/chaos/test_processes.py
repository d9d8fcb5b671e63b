"""Service processes die under load: SIGKILL (a crash) and SIGTERM (the graceful path)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaos.conftest import MakeDeployment
from tests.harness.chaos_run import ChaosRun
from tests.harness.chaos_stack import ChaosDeployment, ChaosProcess

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(420)]

WARMUP_S = 4.0
DOWN_S = 3.0
AFTER_S = 3.0
# One kill per service type, each in another region (the big region's replayer).
KILLS = (("eu-west", "bridge"), ("ap-south", "broadcaster"), ("us-east", "replayer"))


async def restart(deployment: ChaosDeployment, process: ChaosProcess) -> None:
    await process.wait_dead()
    await deployment.spawn(process)
    await deployment.wait_ready()


async def test_sigkill_each_service_type_then_restart(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment()
    run = ChaosRun(
        "sigkill_services",
        "SIGKILL a bridge, a broadcaster and a replayer mid-load, restart each",
        deployment,
        repeats_allowed=True,
        local_only_allowed=True,
    )
    await run.start_load()
    await run.load_for(WARMUP_S, writes=30)
    for region, service in KILLS:
        process = deployment.stacks[region].processes[service]
        process.kill()
        await run.load_for(DOWN_S, writes=0)
        await restart(deployment, process)
        run.facts[f"killed_{region}_{service}"] = time.time()
    healed = time.time()
    await run.load_for(AFTER_S)
    run.facts["time_to_recover_s"] = await run.recovered(healed)
    result = await run.finish()
    assert not result.problems, "\n".join(result.problems)


async def test_sigterm_every_service_then_restart(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment()
    run = ChaosRun(
        "sigterm_all", "SIGTERM every xregion process under load, restart them", deployment
    )
    await run.start_load()
    await run.load_for(WARMUP_S, writes=30)
    processes = deployment.processes()
    for process in processes:
        process.terminate()
    await asyncio.gather(*(p.wait_dead() for p in processes))
    run.facts["exit_codes"] = {
        f"{p.log_path.stem}": p.proc.returncode if p.proc else None for p in processes
    }
    await run.load_for(DOWN_S, writes=0)
    for process in processes:
        await deployment.spawn(process)
    await deployment.wait_ready()
    restarted = time.time()
    await run.load_for(AFTER_S)
    run.facts["time_to_recover_s"] = await run.recovered(restarted)
    result = await run.finish()
    assert not result.problems, "\n".join(result.problems)
    assert set(run.facts["exit_codes"].values()) == {0}, run.facts["exit_codes"]
