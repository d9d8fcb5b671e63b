"""Events that must never become a call: malformed, unsafe paths (SSRF corpus), unknown
services, disallowed methods → dead letters, no outbound connection. And `dlq replay`."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from services.replayer.service import Replayer
from services.xregion.errors import UsageError
from services.xregion.ops.dlq import Selection, run_dlq
from shared.envelope import encode
from shared.settings import Settings
from tests.replayer.helpers import (
    REGION,
    Trap,
    dead_letters,
    make_event,
    publish,
    publish_raw,
    region_toml,
)
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


def ssrf_paths(port: int) -> list[str]:
    return [
        f"//127.0.0.1:{port}/x",
        "/%2e%2e/admin",
        "/catalog/%252e%252e/%252e%252e/admin",
        f"http://127.0.0.1:{port}/",
        "/\\evil",
        "/catalog/%5c%5cevil",
        "/catalog/x%0d%0aHost:%20evil",
        f"/%2f127.0.0.1:{port}/x",
        "/catalog/..",
    ]


async def test_ssrf_corpus_is_dead_lettered_without_any_call(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    async with Trap() as trap:
        paths = ssrf_paths(trap.port)
        for path in paths:
            headers, payload = encode(make_event("/catalog/ok"))
            headers["Xr-Path"] = path  # bypass Event's own checks: a hostile producer
            await publish_raw(js, headers, payload)
        async with Replayer(settings) as replayer:
            await replayer.run_until_idle()
        assert trap.hits == 0
    assert recorder.calls == []
    letters = await dead_letters(js)
    assert len(letters) == len(paths)
    assert {letter["Xr-Dlq-Reason"] for letter in letters} <= {"malformed", "unsafe_path"}
    assert sum(letter["Xr-Dlq-Reason"] == "unsafe_path" for letter in letters) >= 5


async def test_malformed_unknown_service_and_method_are_dead_lettered(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    await publish_raw(js, {"Xr-Schema": "1", "Xr-Origin": "us-east"}, b"junk")
    await publish(js, make_event("/billing/1", service="billing"))
    await publish(js, make_event("/catalog/1", method="GET"))
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert recorder.calls == []
    reasons = sorted(letter["Xr-Dlq-Reason"] for letter in await dead_letters(js))
    assert reasons == ["malformed", "method_not_allowed", "unknown_service"]


async def test_dlq_replay_after_the_service_is_fixed_applies_once(
    js: JetStreamContext, settings: Settings, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    recorder.script["/catalog/fixme"] = [400]
    event = make_event("/catalog/fixme", body=b"v1")
    await publish(js, event)
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert event.event_id not in recorder.succeeded

    assert await run_dlq(settings, "list", Selection(region=REGION), yes=False) == 0
    listed = capsys.readouterr().out
    assert event.event_id in listed
    assert "http_400" in listed
    selection = Selection(region=REGION, service="catalog", reason="http_400")
    assert await run_dlq(settings, "replay", selection, yes=False) == 0
    assert await dead_letters(js) == []

    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert recorder.succeeded[event.event_id].body == b"v1"
    assert [c.status for c in recorder.calls] == [400, 200]
    assert recorder.repeats == []


async def test_dlq_show_and_purge_which_needs_yes(
    js: JetStreamContext, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    await publish(js, dataclasses.replace(make_event("/billing/2"), service="billing"))
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert len(await dead_letters(js)) == 1
    with pytest.raises(UsageError):
        await run_dlq(settings, "purge", Selection(region=REGION), yes=False)
    assert (
        await run_dlq(
            settings, "show", Selection(region=REGION, reason="unknown_service"), yes=False
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert "Xr-Dlq-Reason: unknown_service" in shown
    assert "body: '{}'" in shown
    assert await run_dlq(settings, "purge", Selection(region=REGION), yes=True) == 0
    assert await dead_letters(js) == []


async def test_dlq_list_command_line(
    js: JetStreamContext, settings: Settings, tmp_path: Path
) -> None:
    await publish(js, make_event("/billing/3", service="billing"))
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    exe = shutil.which("xregion", path=str(Path(sys.executable).parent))
    assert exe is not None
    config = region_toml(settings, tmp_path / "eu-west.toml")
    proc = await asyncio.create_subprocess_exec(
        exe, "dlq", "list", "--config", str(config), "--reason", "unknown_service",
        "--since", "10m", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert "unknown_service" in out.decode()
    assert "1 dead letter(s)" in err.decode()
