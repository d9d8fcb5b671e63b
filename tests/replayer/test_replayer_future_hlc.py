"""A validly signed event stamped far ahead of the replayer's clock (a stolen bridge key's
write from the future, which would win last-writer-wins for its key for good) is dead-lettered
as `future_hlc` and calls nobody; one within `replayer.max_event_ahead_s` (clocks of two
regions drift apart a little) is applied."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from shared.hlc import HlcStamp
from shared.settings import Settings, SigningSettings
from shared.signing import load_signer
from tests.harness.keys import make_keys
from tests.replayer.helpers import dead_letters, make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def _ahead(seconds: float) -> HlcStamp:
    return HlcStamp(time.time_ns() // 1_000_000 + int(seconds * 1000), 0)


async def test_an_event_from_the_future_is_dead_lettered(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    signing = SigningSettings(**make_keys(tmp_path))
    signed = settings.model_copy(update={"signing": signing})  # the default bound: 60 s
    signer = load_signer(signing)
    assert signer is not None
    near = signer.sign(dataclasses.replace(make_event("/catalog/near"), hlc=_ahead(5)))
    future = signer.sign(dataclasses.replace(make_event("/catalog/future"), hlc=_ahead(3600)))
    await publish(js, near)
    await publish(js, future)
    async with Replayer(signed) as replayer:
        await replayer.run_until_idle()

    assert [call.event_id for call in recorder.calls] == [near.event_id]
    [letter] = await dead_letters(js)
    assert letter["Xr-Event-Id"] == future.event_id
    assert letter["Xr-Dlq-Reason"] == "future_hlc"
    assert "replayer.max_event_ahead_s 60 s" in letter["Xr-Dlq-Error"]
