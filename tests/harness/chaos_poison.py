"""Poison put straight onto a region's replay stream, as a hostile or broken producer would.

`poison_messages(...)` builds one message per kind, each with the exact dead-letter reason
the target's replayer must give it (`Poison.reason`). Signed ones are signed with a real
bridge key (`shared.signing.Signer`), so only the flaw they are built with is wrong.
`publish_raw_frame` sends a message over a plain TCP connection to nats-server (`HPUB`),
because the NATS client cannot send header bytes that are not UTF-8.

`dead_letters(settings)` reads every message of the region's DLQ stream.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from shared.envelope import HDR_PATH, Event, encode, new_traceparent
from shared.hlc import HlcStamp
from shared.ids import uuid7_str
from shared.natsconn import NatsConnection
from shared.regions import dlq_stream, replay_subject
from shared.settings import Settings
from shared.signing import Signer

__all__ = ["Poison", "dead_letters", "poison_messages", "publish_raw_frame"]

BIG_HEADER_BYTES = 60 * 1024


@dataclass(frozen=True)
class Poison:
    kind: str
    reason: str  # the dead-letter reason the replayer must give it
    event_id: str
    subject: str
    headers: dict[str, str]
    payload: bytes
    raw_utf8_flaw: bool = False  # Xr-Path's value carries a byte that is not UTF-8


def _event(origin: str, service: str, path: str, **fields: Any) -> Event:
    return Event(
        event_id=uuid7_str(),
        origin=origin,
        service=service,
        method=fields.pop("method", "PUT"),
        path=path,
        hlc=HlcStamp(time.time_ns() // 1_000_000, 0),
        key=path,
        body=json.dumps({"v": "poison"}).encode(),
        trace=new_traceparent(),
        **fields,
    )


def _unsafe(event: Event, path: str) -> Event:
    """`event` with a path `Event` itself refuses: what a hostile producer could sign."""
    hostile = dataclasses.replace(event)
    object.__setattr__(hostile, "path", path)
    return hostile


def poison_messages(
    target: str, origin: str, service: str, signer: Signer, other_region: Signer
) -> list[Poison]:
    """One message per kind of poison for `target`'s replay stream, claiming `origin`."""
    subject = replay_subject(target, origin, service)
    found: list[Poison] = []

    def add(kind: str, reason: str, event: Event, **change: Any) -> None:
        headers, payload = encode(event)
        for name, value in change.items():
            if value is None:
                headers.pop(name.replace("_", "-"), None)
            else:
                headers[name.replace("_", "-")] = value
        found.append(Poison(kind, reason, event.event_id, subject, headers, payload))

    signed = signer.sign(_event(origin, service, "/configs/poison-missing"))
    add("missing_header", "malformed", signed, Xr_Hlc=None)
    signed = signer.sign(_event(origin, service, "/configs/poison-badsig"))
    assert signed.sig is not None
    add("bad_signature", "bad_signature", signed, Xr_Sig=signed.sig[:-4] + "AAAA")
    add("missing_signature", "bad_signature", _event(origin, service, "/configs/poison-nosig"))
    add(
        "other_regions_key",
        "bad_signature",
        other_region.sign(_event(origin, service, "/configs/poison-otherkey")),
    )
    big = _event(
        origin, service, "/configs/poison-big", req_headers=(("x-big", "b" * BIG_HEADER_BYTES),)
    )
    add("headers_60kb", "malformed", signer.sign(big))
    for n, path in enumerate(("/configs/%2e%2e/admin", "/configs/x%0d%0aHost:%20evil")):
        add(f"unsafe_path_{n}", "unsafe_path", signer.sign(_unsafe(_event(
            origin, service, f"/configs/poison-unsafe-{n}"), path)))  # fmt: skip
    unknown = signer.sign(_event(origin, "nosuch", "/configs/poison-unknown"))
    headers, payload = encode(unknown)
    found.append(
        Poison(
            "unknown_service", "unknown_service", unknown.event_id,
            replay_subject(target, origin, "nosuch"), headers, payload,
        )
    )  # fmt: skip
    others = tuple(sorted({"us-east", "eu-west", "ap-south"} - {target, origin}))
    add(
        "other_target",
        "not_a_target",
        signer.sign(_event(origin, service, "/configs/poison-target", targets=others)),
    )
    utf8 = signer.sign(_event(origin, service, "/configs/poison-utf8"))
    headers, payload = encode(utf8)
    found.append(
        Poison("invalid_utf8", "malformed", utf8.event_id, subject, headers, payload, True)
    )
    return found


async def publish_raw_frame(nats_url: str, poison: Poison) -> None:
    """HPUB over a plain socket; Xr-Path gets a 0xFF byte when `raw_utf8_flaw`."""
    parsed = urlparse(nats_url)
    reader, writer = await asyncio.open_connection(parsed.hostname, parsed.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        lines = [b"NATS/1.0"]
        for name, value in poison.headers.items():
            data = value.encode()
            if poison.raw_utf8_flaw and name in (HDR_PATH,):
                data += b"\xff"
            lines.append(name.encode() + b": " + data)
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        size = len(head) + len(poison.payload)
        writer.write(f"HPUB {poison.subject} {len(head)} {size}\r\n".encode())
        writer.write(head + poison.payload + b"\r\nPING\r\n")
        await writer.drain()
        while (line := await asyncio.wait_for(reader.readline(), 10)) != b"PONG\r\n":
            if line.startswith(b"-ERR"):
                raise RuntimeError(f"nats-server refused the raw frame: {line!r}")
    finally:
        writer.close()
        await writer.wait_closed()


async def dead_letters(settings: Settings) -> list[dict[str, str]]:
    """Headers of every message in `settings.region`'s DLQ stream, oldest first."""
    async with NatsConnection(settings.nats, service="chaos-dlq") as conn:
        js = conn.jetstream()
        stream = dlq_stream(settings.region)
        info = await js.stream_info(stream)
        found = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            found.append(dict(msg.headers or {}))
        return found
