"""Non-ASCII paths: the service receives what the origin's service received. Percent-escapes
go out exactly as they are; raw non-ASCII characters go out as their UTF-8 percent-encoding
(a request line is ASCII: a strict HTTP parser, aiohttp's included, answers raw bytes 400).
Path safety applies to the decoded form either way."""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js import JetStreamContext

from services.replayer.pathsafe import UnsafePathError, check_path, percent_encode_non_ascii
from services.replayer.request import UnsafeRequestPathError, build_request
from services.replayer.service import Replayer
from shared.settings import ServiceSettings, Settings
from tests.replayer.helpers import dead_letters, make_event, publish
from tests.replayer.recorder import Recorder

SERVICES = {"catalog": ServiceSettings(upstream="http://10.0.0.1:7001", routes=["/catalog"])}

# Xr-Path → the request target the service must see (its `request.raw_path`).
SENT = [
    ("/catalog/café?x=ü", "/catalog/caf%C3%A9?x=%C3%BC"),
    ("/catalog/%C3%A9", "/catalog/%C3%A9"),
    ("/catalog/%c3%a9?q=%C3%BC&r=é", "/catalog/%c3%a9?q=%C3%BC&r=%C3%A9"),
    ("/catalog/日本/a%2Fb?k=%E2%82%AC€", "/catalog/%E6%97%A5%E6%9C%AC/a%2Fb?k=%E2%82%AC%E2%82%AC"),
]
UNSAFE = [
    "/catalog/é/../x", "/catalog/%C3%A9/%2e%2e/x", "/catalog/é/%252e%252e/x",
    "/catalog/%C2%85x", "/é\u00a0/../x", "/catalog/é/%2e%2e%2fadmin",
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_the_service_receives_the_origin_path_bytes(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    events = [make_event(path, key=f"/catalog/k{i}") for i, (path, _) in enumerate(SENT)]
    for event in events:
        await publish(js, event)
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    got = {c.event_id: c.raw_path for c in recorder.calls}
    assert [got.get(e.event_id) for e in events] == [wire for _, wire in SENT]
    assert await dead_letters(js) == []


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_unsafe_non_ascii_paths_are_dead_lettered_without_a_call(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    for i, path in enumerate(UNSAFE):
        await publish(js, make_event(path, key=f"/catalog/u{i}"))
    async with Replayer(settings) as replayer:
        await replayer.run_until_idle()
    assert recorder.calls == []
    letters = await dead_letters(js)
    assert [letter["Xr-Dlq-Reason"] for letter in letters] == ["unsafe_path"] * len(UNSAFE)


@pytest.mark.parametrize(("path", "wire"), SENT)
def test_the_request_url_carries_the_wire_form(path: str, wire: str) -> None:
    assert build_request(make_event(path), SERVICES).url == "http://10.0.0.1:7001" + wire


@pytest.mark.parametrize("path", UNSAFE)
def test_unsafe_non_ascii_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafeRequestPathError):
        build_request(make_event(path, key="/catalog/k"), SERVICES)


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=60))
def test_encoding_is_ascii_keeps_ascii_and_decodes_to_the_same_text(path: str) -> None:
    wire = percent_encode_non_ascii(path)
    assert wire.isascii()
    if path.isascii():
        assert wire == path
    assert unquote(wire, errors="replace") == unquote(path, errors="replace")


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=30))
def test_a_dot_segment_behind_non_ascii_is_still_found(middle: str) -> None:
    with pytest.raises(UnsafePathError):
        check_path(percent_encode_non_ascii(f"/é{middle}/../x"))
