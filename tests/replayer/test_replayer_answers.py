"""What the service said reaches the dead letter: a refused or failing replayed write is filed
with an excerpt of the service's answer (`Xr-Dlq-Error`, the `service_answer` log field), so
an operator reads why without calling the service again."""

from __future__ import annotations

import gzip
from collections.abc import MutableMapping
from typing import Any

import pytest
from nats.js import JetStreamContext
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from services.replayer.request import build_request
from services.replayer.service import Replayer
from services.replayer.upstream import Answer, Upstream
from services.xregion.ops.dlq import Selection, run_dlq
from shared.dlq import _ERROR_MAX
from shared.settings import ServiceSettings, Settings
from tests.harness.wait import wait_until
from tests.replayer.helpers import REGION, dead_letters, make_event, publish
from tests.replayer.recorder import Recorder

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

_JSON = {"Content-Type": "application/json"}


async def replay_all(settings: Settings) -> list[MutableMapping[str, Any]]:
    """Run a replayer until idle; the log lines about dead letters it wrote."""
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with Replayer(settings) as replayer:
            await replayer.run_until_idle()
    return [line for line in logs if line["event"] == "replayer.dead_lettered"]


async def test_a_422_body_is_in_the_dead_letter_and_its_log_line(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    recorder.script["/catalog/invalid"] = [422]
    recorder.bodies["/catalog/invalid"] = [(b'{"error":"field x is required"}\n', _JSON)]
    event = make_event("/catalog/invalid")
    await publish(js, event)
    [line] = await replay_all(settings)
    [letter] = await dead_letters(js)
    assert letter["Xr-Dlq-Reason"] == "http_422"
    assert letter["Xr-Dlq-Status"] == "422"
    assert letter["Xr-Dlq-Error"] == 'the service answered 422: {"error":"field x is required"}'
    assert line["service_answer"] == '{"error":"field x is required"}'
    assert line["error"] == "the service answered 422"
    assert (line["event_id"], line["status"]) == (event.event_id, 422)


async def test_a_long_body_is_cut_to_512_bytes_and_the_header_to_its_cap(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    body = b'{"error":"' + b"x" * 5000 + b'"}'
    recorder.script["/catalog/long"] = [400]
    recorder.bodies["/catalog/long"] = [(body, _JSON)]
    await publish(js, make_event("/catalog/long"))
    [line] = await replay_all(settings)
    [letter] = await dead_letters(js)
    assert line["service_answer"] == body[:512].decode()
    error = letter["Xr-Dlq-Error"]
    assert len(error) == _ERROR_MAX == 512
    assert error.startswith('the service answered 400: {"error":"xxx')
    assert error.endswith("x...")


async def test_gzip_and_binary_bodies_are_described_not_dumped(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    zipped = gzip.compress(b'{"error":"compressed"}' * 40)
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
    recorder.script["/catalog/gz"] = [400]
    recorder.bodies["/catalog/gz"] = [(zipped, {"Content-Encoding": "gzip", **_JSON})]
    recorder.script["/catalog/png"] = [415]
    recorder.bodies["/catalog/png"] = [(png, {"Content-Type": "image/png"})]
    gz_event, png_event = make_event("/catalog/gz"), make_event("/catalog/png")
    await publish(js, gz_event)
    await publish(js, png_event)
    lines = await replay_all(settings)
    errors = {letter["Xr-Event-Id"]: letter["Xr-Dlq-Error"] for letter in await dead_letters(js)}
    assert errors == {
        gz_event.event_id: f"the service answered 400: <{len(zipped)} bytes, gzip>",
        png_event.event_id: f"the service answered 415: <{len(png)} bytes, not text>",
    }
    said = {line["event_id"]: line["service_answer"] for line in lines}
    assert said[gz_event.event_id] == f"<{len(zipped)} bytes, gzip>"


async def test_5xx_until_retries_are_exhausted_files_the_last_answer(
    js: JetStreamContext, settings: Settings, recorder: Recorder
) -> None:
    """Two deliveries of three attempts each, every answer a 503 saying which attempt it
    was: the dead letter carries the sixth, and the retry lines what the service said."""
    short = settings.model_copy(
        update={"replayer": settings.replayer.model_copy(update={"max_deliveries": 2})}
    )
    recorder.script["/catalog/down"] = [503] * 6
    recorder.bodies["/catalog/down"] = [(b"database down (%d)" % n, {}) for n in range(1, 7)]
    event = make_event("/catalog/down")
    await publish(js, event)
    with capture_logs(processors=[merge_contextvars]) as logs:
        async with Replayer(short) as replayer:

            async def filed() -> list[dict[str, str]]:
                await replayer.run_until_idle()  # returns while a nak'ed event waits its delay
                return await dead_letters(js)

            [letter] = await wait_until(filed, 30, message="the dead letter")
    assert [c.status for c in recorder.calls_for("/catalog/down")] == [503] * 6
    assert letter["Xr-Dlq-Reason"] == "retries_exhausted"
    assert letter["Xr-Dlq-Status"] == "503"
    assert letter["Xr-Dlq-Attempts"] == "2"
    assert letter["Xr-Dlq-Error"] == "the service answered 503: database down (6)"
    [dead] = [e for e in logs if e["event"] == "replayer.dead_lettered"]
    assert dead["service_answer"] == "database down (6)"
    [retried] = [e for e in logs if e["event"] == "replayer.retried"]
    assert retried["service_answer"] == "database down (3)"
    upstream = [e["service_answer"] for e in logs if e["event"] == "replayer.upstream_retry"]
    assert upstream == [f"database down ({n})" for n in (1, 2, 4, 5)]


async def test_dlq_show_and_list_print_the_answer_readably(
    js: JetStreamContext, settings: Settings, recorder: Recorder, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pretty-printed, non-ASCII answer: one line in `show`, one table row in `list`."""
    recorder.script["/catalog/price"] = [422]
    body = '{\n  "error": "le champ « prix » est requis"\n}\n'.encode()
    recorder.bodies["/catalog/price"] = [(body, _JSON)]
    event = make_event("/catalog/price")
    await publish(js, event)
    await replay_all(settings)
    said = 'the service answered 422: { "error": "le champ « prix » est requis" }'

    assert await run_dlq(settings, "show", Selection(region=REGION), yes=False) == 0
    shown = capsys.readouterr().out.splitlines()
    assert f"  Xr-Dlq-Error: {said}" in shown

    assert await run_dlq(settings, "list", Selection(region=REGION), yes=False) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if event.event_id in line]
    assert row.endswith(f"{event.event_id}  {said[:80]}")


async def test_a_2xx_body_is_not_kept_and_an_error_body_is(settings: Settings) -> None:
    """The hot path keeps nothing: a 2xx answer is the one prebuilt `Answer` of its status."""
    bodies: dict[str, list[tuple[bytes, dict[str, str]]]] = {
        "/catalog/ok": [(b"created", {})] * 2,
        "/catalog/no": [(b"no such item", {})],
    }
    async with Recorder(script={"/catalog/no": [404]}, bodies=bodies) as service:
        services = {"catalog": ServiceSettings(upstream=service.url, routes=["/catalog"])}
        async with Upstream(settings.replayer) as up:
            ok = [await up.call(build_request(make_event("/catalog/ok"), services), "catalog")
                  for _ in range(2)]  # fmt: skip
            refused = await up.call(build_request(make_event("/catalog/no"), services), "catalog")
    assert ok[0] == Answer(200)
    assert ok[0] is ok[1]
    assert refused == Answer(404, "no such item")
