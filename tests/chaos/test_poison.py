"""Poison on a replay stream: dead letters with precise reasons, no call, the consumer goes on."""

from __future__ import annotations

import pytest

from shared.natsconn import NatsConnection
from shared.settings import Settings
from shared.signing import load_signer
from tests.chaos.conftest import MakeDeployment
from tests.harness.chaos_poison import dead_letters, poison_messages, publish_raw_frame
from tests.harness.chaos_run import ChaosRun
from tests.harness.chaos_stack import SERVICE
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.timeout(420)]

TARGET, ORIGIN, OTHER = "eu-west", "us-east", "ap-south"
LOAD_S = 4.0


async def test_poison_is_dead_lettered_without_a_call(make_deployment: MakeDeployment) -> None:
    deployment = await make_deployment()
    target = deployment.stacks[TARGET].settings
    signer = load_signer(deployment.stacks[ORIGIN].settings.signing)
    other = load_signer(deployment.stacks[OTHER].settings.signing)
    assert signer is not None
    assert other is not None
    poisons = poison_messages(TARGET, ORIGIN, SERVICE, signer, other)
    run = ChaosRun(
        "poison", "Poison put straight onto a replay stream under load", deployment,
        expected_dead_letters={TARGET: len(poisons)},
    )  # fmt: skip
    await run.start_load()
    await run.load_for(LOAD_S, writes=30)
    async with NatsConnection(target.nats, service="chaos-poison") as conn:
        js = conn.jetstream()
        for poison in poisons:
            if poison.raw_utf8_flaw:
                await publish_raw_frame(target.nats.servers[0], poison)
            else:
                await js.publish(poison.subject, poison.payload, headers=poison.headers)
    letters = await wait_until(
        lambda: _all_there(target, len(poisons)), 60, interval=0.3,
        message=f"{len(poisons)} dead letters in {TARGET}",
    )  # fmt: skip
    await run.load_for(LOAD_S, writes=30)  # the consumer keeps going after the poison
    reasons = {
        letter.get("Xr-Event-Id", ""): (letter.get("Xr-Dlq-Reason"), letter.get("Xr-Dlq-Error"))
        for letter in letters
    }
    run.facts["dead_letters"] = {
        p.kind: {"reason": reasons.get(p.event_id, (None, None))[0],
                 "error": reasons.get(p.event_id, (None, None))[1]}
        for p in poisons
    }  # fmt: skip
    result = await run.finish()
    wrong = {
        p.kind: (p.reason, reasons.get(p.event_id))
        for p in poisons
        if reasons.get(p.event_id, (None,))[0] != p.reason
    }
    assert not wrong, f"dead-letter reasons (wanted, got): {wrong}"
    ids = {p.event_id for p in poisons}
    called = [r for recs in run.records.values() for r in recs if r["event_id"] in ids]
    assert called == [], f"poison reached a downstream: {called}"
    assert not result.problems, "\n".join(result.problems)


async def _all_there(settings: Settings, count: int) -> list[dict[str, str]]:
    """The DLQ's letters once there are `count` of them (else an empty list: not yet)."""
    letters = await dead_letters(settings)
    return letters if len(letters) >= count else []
