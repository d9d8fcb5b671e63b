"""A validly signed event is applied only where and when it was meant to be: on the replay
subject of its own (signed) origin and service, in a region among its targets, and while its
key's version record is still kept. Each refusal is dead-lettered with its own reason and
calls nobody."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from services.replayer.service import Replayer, max_event_age_s
from shared.envelope import encode
from shared.hlc import HlcStamp
from shared.regions import replay_subject
from shared.settings import Settings, SigningSettings
from shared.signing import load_signer
from tests.harness.keys import make_keys
from tests.replayer.helpers import ORIGIN, REGION, SERVICE, dead_letters, make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

DAY_S = 24 * 3600


async def test_an_event_is_refused_off_its_subject_targets_or_age(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    signing = SigningSettings(**make_keys(tmp_path))
    signed_settings = settings.model_copy(update={"signing": signing})
    signer = load_signer(signing)
    assert signer is not None
    good = signer.sign(make_event("/catalog/good"))
    # Copied by another region's broadcaster onto its own path, or onto another service's.
    other_origin = signer.sign(make_event("/catalog/moved"))
    other_service = signer.sign(make_event("/catalog/renamed"))
    # Meant for another region only.
    elsewhere = signer.sign(
        dataclasses.replace(make_event("/catalog/elsewhere"), targets=("ap-south",))
    )
    # Captured and re-published after its key's version record has expired.
    old_ms = time.time_ns() // 1_000_000 - 8 * DAY_S * 1000
    expired = signer.sign(dataclasses.replace(make_event("/catalog/old"), hlc=HlcStamp(old_ms, 0)))

    await publish(js, good)
    for event, subject in (
        (other_origin, replay_subject(REGION, "ap-south", SERVICE)),
        (other_service, replay_subject(REGION, ORIGIN, "billing")),
    ):
        headers, payload = encode(event)
        await js.publish(subject, payload, headers=headers)
    await publish(js, elsewhere)
    await publish(js, expired)
    async with Replayer(signed_settings) as replayer:
        await replayer.run_until_idle()

    assert [call.event_id for call in recorder.calls] == [good.event_id]
    letters = await dead_letters(js)
    reasons = {letter["Xr-Event-Id"]: letter["Xr-Dlq-Reason"] for letter in letters}
    assert reasons == {
        other_origin.event_id: "subject_mismatch",
        other_service.event_id: "subject_mismatch",
        elsewhere.event_id: "not_a_target",
        expired.event_id: "expired",
    }
    by_id = {letter["Xr-Event-Id"]: letter for letter in letters}
    assert "replayer.max_event_age_s" in by_id[expired.event_id]["Xr-Dlq-Error"]


async def test_an_event_of_the_region_itself_is_never_replayed_there(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    own = make_event("/catalog/own", origin=REGION)
    await publish(js, own)
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert recorder.calls == []
    assert Counter(letter["Xr-Dlq-Reason"] for letter in await dead_letters(js)) == {
        "not_a_target": 1
    }


async def test_the_age_limit_is_a_setting_tied_to_the_version_records_ttl(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    # By default 90 % of the streams' age limit, which is the versions bucket's TTL.
    assert max_event_age_s(settings) == pytest.approx(0.9 * settings.streams.max_age_s)
    strict = settings.model_copy(
        update={"replayer": settings.replayer.model_copy(update={"max_event_age_s": 30.0})}
    )
    assert max_event_age_s(strict) == 30.0
    minute_old = make_event("/catalog/minute-old", hlc_ms=-1000)  # over a minute ago
    await publish(js, minute_old)
    async with Replayer(strict) as replayer:
        await replayer.run_until_idle()
    assert recorder.calls == []
    [letter] = await dead_letters(js)
    assert letter["Xr-Dlq-Reason"] == "expired"
