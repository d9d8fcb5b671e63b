"""Canaries are trusted only once verified where they are received: signed by their origin,
on their origin's replay subject, addressed to this region (by the signed path as well as
`Xr-Canary`), and their time capped at now. A forged canary cannot make a stalled path look
healthy; a real one is recorded and never called nor dead-lettered."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from services.replayer.service import Replayer
from shared.envelope import HDR_CANARY, Event, encode
from shared.hlc import HlcStamp
from shared.regions import replay_subject
from shared.settings import Settings, SigningSettings
from shared.signing import Signer, load_signer
from tests.harness.keys import make_keys
from tests.harness.wait import wait_until
from tests.replayer.helpers import ORIGIN, REGION, dead_letters, make_event
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CANARY = "xr-canary"
DAY_MS = 24 * 3600 * 1000


def age(target: str = REGION) -> float | None:
    return REGISTRY.get_sample_value(
        "xr_replication_canary_age_seconds", {"origin": ORIGIN, "target": target}
    )


def refused(reason: str) -> float:
    value = REGISTRY.get_sample_value("xr_replayer_canaries_refused_total", {"reason": reason})
    return value or 0.0


def canary(*, target: str = REGION, hlc_ms: int | None = None) -> Event:
    event = make_event(f"/{CANARY}/{target}", service=CANARY, method="POST", body=b"")
    if hlc_ms is None:
        return event
    return dataclasses.replace(event, hlc=HlcStamp(hlc_ms, 0))


async def send(
    js: JetStreamContext, event: Event, *, target: str = REGION, origin: str = ORIGIN
) -> None:
    headers, payload = encode(event)
    headers[HDR_CANARY] = target
    await js.publish(replay_subject(REGION, origin, CANARY), payload, headers=headers)


def signed_settings(settings: Settings, tmp_path: Path) -> tuple[Settings, Signer]:
    signing = SigningSettings(**make_keys(tmp_path))
    signer = load_signer(signing)
    assert signer is not None
    return settings.model_copy(update={"signing": signing}), signer


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.mark.parametrize(
    "forgery", ["unsigned_future", "signed_path_elsewhere", "other_origins_subject", "for_other"]
)
async def test_a_forged_canary_does_not_refresh_the_path(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path, forgery: str
) -> None:
    signed, signer = signed_settings(settings, tmp_path)
    # A real canary, a minute old: the path's last sign of life.
    await send(js, signer.sign(canary()))
    reason = {
        "unsigned_future": "unsigned",
        "signed_path_elsewhere": "not_a_canary",
        "other_origins_subject": "subject_mismatch",
        "for_other": "other_target",
    }[forgery]
    before = refused(reason)
    fresh = now_ms() + DAY_MS
    if forgery == "unsigned_future":
        await send(js, canary(hlc_ms=fresh))
    elif forgery == "signed_path_elsewhere":  # Xr-Canary is not signed; the path is
        await send(js, signer.sign(canary(target="ap-south", hlc_ms=fresh)))
    elif forgery == "other_origins_subject":
        await send(js, signer.sign(canary(hlc_ms=fresh)), origin="ap-south")
    else:  # a canary for another region, delivered here
        await send(js, signer.sign(canary(target="ap-south", hlc_ms=fresh)), target="ap-south")
    async with Replayer(signed) as replayer:
        await replayer.run_until_idle()

    assert recorder.calls == []
    assert await dead_letters(js) == []
    recorded = age()
    assert recorded is not None
    assert recorded >= 50, f"the forged canary refreshed the path (age {recorded:.1f} s)"
    assert age("ap-south") is None
    assert refused(reason) == before + 1


async def test_a_canary_time_is_capped_at_now(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    signed, signer = signed_settings(settings, tmp_path)
    await send(js, signer.sign(canary(hlc_ms=now_ms() + DAY_MS)))
    async with Replayer(signed) as replayer:
        await replayer.run_until_idle()

        def aged() -> bool:
            recorded = age()
            return recorded is not None and recorded > 0

        # Counted from when it arrived, so it ages like any canary instead of for a day.
        await wait_until(aged, 5, message="the future canary's age grows from its arrival")
    assert recorder.calls == []
