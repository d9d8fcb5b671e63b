"""`xregion replayer` as a real process: SIGTERM under load loses and duplicates nothing."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from shared.settings import Settings
from tests.harness.wait import wait_until
from tests.replayer.helpers import make_event, publish, region_toml
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EVENTS = 300


async def test_sigterm_under_load_loses_and_duplicates_nothing(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    recorder.max_delay_s = 0.03
    events = [make_event(f"/catalog/p{i % 30}", hlc_ms=i, body=b"%d" % i) for i in range(EVENTS)]
    for event in events:
        await publish(js, event)
    exe = shutil.which("xregion", path=str(Path(sys.executable).parent))
    assert exe is not None
    config = region_toml(settings, tmp_path / "eu-west.toml")
    proc = await asyncio.create_subprocess_exec(
        exe, "--log-level", "warning", "replayer", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_until(lambda: len(recorder.calls) >= 40, 30, message="40 calls made")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await proc.communicate()
        assert proc.returncode == 0, stderr.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert len(recorder.succeeded) < EVENTS  # it really stopped mid-stream

    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert recorder.repeats == []
    assert sorted(recorder.succeeded) == sorted(e.event_id for e in events)
    assert len(recorder.calls) == EVENTS


async def test_sigkill_during_a_call_then_restart_applies_once(
    js: JetStreamContext, settings: Settings, recorder: Recorder, tmp_path: Path
) -> None:
    """The killed process's claim expires after ack_wait; the redelivered event is called again
    with the same Idempotency-Key, so the service applies it once."""
    recorder.delays["/catalog/kill"] = 0.8
    event = make_event("/catalog/kill", body=b"once")
    await publish(js, event)
    exe = shutil.which("xregion", path=str(Path(sys.executable).parent))
    assert exe is not None
    config = region_toml(settings, tmp_path / "eu-west.toml")
    proc = await asyncio.create_subprocess_exec(
        exe, "--log-level", "warning", "replayer", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await wait_until(lambda: "/catalog/kill" in recorder.in_flight_keys, 30,
                         message="the call is in flight")  # fmt: skip
        proc.kill()
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()

    async with Replayer(settings) as replayer:
        replayer.start_consuming()
        await wait_until(lambda: len(recorder.calls) >= 2, 20, message="the event redelivered")
    assert {c.event_id for c in recorder.calls} == {event.event_id}
    assert recorder.succeeded[event.event_id].body == b"once"
    assert recorder.values["/catalog/kill"] == (str(event.hlc), b"once")
    assert recorder.overlaps == 0
