"""`xregion dlq replay` republishes with operator rights, so it replays only what a dead
letter's own subject vouches for: whoever may file under `xr.dlq.<region>.<origin>.>` cannot
steer a replay into another stream (a bridge's `publish_refused` or a broadcaster's
`forward_refused` claimed under another region's origin), nor replay an event of another
origin or service, nor one whose signature fails. Those letters stay, each with its reason;
a genuine letter is replayed."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from services.xregion.ops.dlq import Selection, run_dlq
from shared.dlq import FORWARD_REFUSED, PUBLISH_REFUSED, dead_letter
from shared.envelope import HDR_DLQ_TARGET, Event, encode
from shared.natsconn import NatsConnection
from shared.settings import Settings, SigningSettings
from shared.signing import load_signer
from tests.harness.keys import make_keys
from tests.harness.wait import wait_until
from tests.replayer.helpers import ORIGIN, REGION, SERVICE, dead_letters, make_event

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


MARKER = "xr.test-marker"


@dataclasses.dataclass
class Sniffer:
    """Every message published on an events or replay subject, as (subject, event id)."""

    conn: NatsConnection
    seen: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    marked: bool = False

    async def keep(self, msg: Msg) -> None:
        if msg.subject == MARKER:
            self.marked = True
        elif msg.subject.startswith(("xr.events.", "xr.replay.")):
            self.seen.append((msg.subject, (msg.headers or {}).get("Xr-Event-Id", "")))

    async def everything_so_far(self) -> list[tuple[str, str]]:
        """What was published before now: one subscription delivers in order, so once a
        marker published now has arrived, so has everything published before it."""
        await self.conn.nc.publish(MARKER, b"")
        await wait_until(lambda: self.marked, 10, message="the sniffer's marker")
        return self.seen


@pytest_asyncio.fixture(loop_scope="session")
async def sniffer(settings: Settings) -> AsyncIterator[Sniffer]:
    async with NatsConnection(settings.nats, service="test-sniffer") as conn:
        found = Sniffer(conn)
        await conn.nc.subscribe("xr.>", cb=found.keep)
        await conn.nc.flush()
        yield found


async def file_letter(
    js: JetStreamContext,
    event: Event,
    *,
    reason: str,
    origin: str = ORIGIN,
    target: str | None = None,
) -> None:
    """A dead letter in this region's DLQ, filed under `origin` as whoever may file there."""
    headers, payload = encode(event)
    subject, out, data = dead_letter(
        region=REGION, subject=f"xr.replay.{REGION}.{origin}.{SERVICE}", headers=headers,
        payload=payload, reason=reason, status=None, attempts=1, error=reason, now=NOW,
        # Not `dlq:<seq>`: the DLQ's duplicate window would drop later tests' real letters.
        msg_id=f"test:{event.event_id}",
    )  # fmt: skip
    if target is not None:
        out[HDR_DLQ_TARGET] = target
    await js.publish(subject, data, headers=out)


async def test_only_letters_their_subject_vouches_for_are_replayed(
    js: JetStreamContext,
    settings: Settings,
    tmp_path: Path,
    sniffer: Sniffer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    signing = SigningSettings(**make_keys(tmp_path))
    signer = load_signer(signing)
    assert signer is not None
    signed_settings = settings.model_copy(update={"signing": signing})

    genuine = signer.sign(make_event("/catalog/genuine"))
    # Filed under us-east by eu-west's replayer, claiming a bridge's or a broadcaster's reason:
    # a replay would put it into us-east's events stream, or into us-east's replay stream.
    as_bridge = signer.sign(make_event("/catalog/as-bridge"))
    as_broadcaster = signer.sign(make_event("/catalog/as-broadcaster"))
    # A replayer's letter naming a target.
    steered = signer.sign(make_event("/catalog/steered"))
    # An event of another service than its subject's.
    other_service = signer.sign(dataclasses.replace(make_event("/billing/x"), service="billing"))
    forged = make_event("/catalog/forged")  # unsigned
    tampered = dataclasses.replace(signer.sign(make_event("/catalog/t")), body=b"changed")

    await file_letter(js, genuine, reason="http_503")
    await file_letter(js, as_bridge, reason=PUBLISH_REFUSED)
    await file_letter(js, as_broadcaster, reason=FORWARD_REFUSED, target=ORIGIN)
    await file_letter(js, steered, reason="http_503", target=ORIGIN)
    await file_letter(js, other_service, reason="http_503")
    await file_letter(js, forged, reason="http_503")
    await file_letter(js, tampered, reason="http_503")

    code = await run_dlq(signed_settings, "replay", Selection(region=REGION), yes=False)
    err = capsys.readouterr().err
    assert code == 1, err
    assert await sniffer.everything_so_far() == [
        (f"xr.replay.{REGION}.{ORIGIN}.{SERVICE}", genuine.event_id)
    ], err
    kept = {letter["Xr-Event-Id"] for letter in await dead_letters(js)}
    refused = [as_bridge, as_broadcaster, steered, other_service, forged, tampered]
    assert kept == {e.event_id for e in refused}, err
    assert err.count("not replayed") == len(refused), err
    assert "signature fails (unsigned" in err, err
    assert "signature fails (bad_signature" in err, err
    assert "publish_refused letter is filed under its own region's origin" in err, err
