"""With signing on: unsigned, forged or tampered events are dead-lettered without a call;
signed ones are applied, and the call carries a verifiable replay marker."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from shared.settings import Settings, SigningSettings
from shared.signing import ReplayMarker, load_signer, load_verifier, verify_replay_marker
from tests.harness.keys import make_keys
from tests.replayer.helpers import dead_letters, make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


async def test_signatures_are_verified_before_any_call(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    signing = SigningSettings(**make_keys(tmp_path))
    signed_settings = settings.model_copy(update={"signing": signing})
    signer = load_signer(signing)
    assert signer is not None
    good = signer.sign(make_event("/catalog/signed", body=b"ok"))
    tampered = dataclasses.replace(signer.sign(make_event("/catalog/t")), body=b"changed")
    await publish(js, good)
    await publish(js, make_event("/catalog/unsigned"))
    await publish(js, tampered)
    async with Replayer(signed_settings) as replayer:
        await replayer.run_until_idle()

    [call] = recorder.calls
    assert call.event_id == good.event_id
    verifier = load_verifier(signing)
    assert verifier is not None
    marker = ReplayMarker(
        origin=good.origin, event_id=good.event_id, hlc=str(good.hlc), method=good.method,
        path=good.path, body=good.body,
    )  # fmt: skip
    # The test's replayer holds the us-east key, so its marker speaks for us-east.
    marked = verify_replay_marker(
        verifier, call.headers["Xr-Replayed-Sig"], marker, region="us-east", now=time.time()
    )
    assert marked == signing.key_id
    letters = await dead_letters(js)
    assert [letter["Xr-Dlq-Reason"] for letter in letters] == ["bad_signature"] * 2


async def test_the_replay_marker_covers_the_request_target_as_sent(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    """A bridge checks the marker against the path it received: for a raw non-ASCII event
    path that is the percent-encoded target, not the event's text."""
    signing = SigningSettings(**make_keys(tmp_path))
    signer, verifier = load_signer(signing), load_verifier(signing)
    assert signer is not None
    assert verifier is not None
    event = signer.sign(make_event("/catalog/café?x=ü", body=b"ok"))
    await publish(js, event)
    async with Replayer(settings.model_copy(update={"signing": signing})) as replayer:  # fmt: skip
        await replayer.run_until_idle()
    [call] = recorder.calls
    assert call.raw_path == "/catalog/caf%C3%A9?x=%C3%BC"
    marker = ReplayMarker(
        origin=event.origin, event_id=event.event_id, hlc=str(event.hlc), method=event.method,
        path=call.raw_path, body=event.body,
    )  # fmt: skip
    marked = verify_replay_marker(
        verifier, call.headers["Xr-Replayed-Sig"], marker, region="us-east", now=time.time()
    )
    assert marked == signing.key_id
