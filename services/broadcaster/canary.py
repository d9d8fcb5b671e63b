"""Canary events: a heartbeat per replication path, through the very path writes take.

Design (for the replayer and the dashboards)
--------------------------------------------
Every `canary_interval_s` (default 5 s) each broadcaster writes, for each peer region T, one
canary into **its own region's events stream**, on `xr.events.<origin>.xr-canary`
(`CANARY_SERVICE`). It is a valid event (`shared.envelope.Event`: POST, path `/xr-canary/<T>`,
key `xr-canary/<origin>/<T>`, empty body, `Xr-Hlc` = send time) with one extra header,
`Xr-Canary: <T>` (`HDR_CANARY`). The forwarder for T forwards it like any event (same
consumer, window, gateway, publish and ack; pausing T holds canaries too); the other
forwarders skip it. It lands on `xr.replay.<T>.<origin>.xr-canary` in `XR_REPLAY_<T>`.

With signing on, a canary is signed with the region's key like any of its events. The
replayer of T recognises it by `shared.envelope.canary_target(msg.headers)`, verifies it,
checks that it is T's (the signed path names T, the subject its origin), records its age
(`xr_replication_canary_age_seconds{origin,target}`, its time capped at now) and acks; it
never calls a service for it and never dead-letters it (a refused canary is only counted).

The event id is a UUIDv7 derived from (origin, target, time slot), with the slot's start as
its time: several broadcaster instances of one region write the same id in the same slot,
and the events stream's duplicate window keeps one.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
import uuid
from collections.abc import Callable, Sequence

import nats.errors

from services.broadcaster.metrics import CANARIES
from shared.envelope import CANARY_SERVICE, HDR_CANARY, Event, encode, new_traceparent
from shared.hlc import Hlc
from shared.logs import get_logger
from shared.natsconn import NatsConnection
from shared.regions import events_subject
from shared.signing import Signer

__all__ = ["CanarySender", "canary_event", "canary_event_id", "canary_message"]

log = get_logger("xr.broadcaster")

_RAND_A_BITS = 12
_RAND_B_BITS = 62


def canary_event_id(origin: str, target: str, slot_ms: int) -> str:
    """A UUIDv7 with time `slot_ms` and random bits from a hash of (origin, target, slot)."""
    digest = hashlib.sha256(f"{origin}>{target}@{slot_ms}".encode()).digest()
    rand = int.from_bytes(digest[:10], "big") >> (80 - _RAND_A_BITS - _RAND_B_BITS)
    rand_a, rand_b = rand >> _RAND_B_BITS, rand & ((1 << _RAND_B_BITS) - 1)
    value = (slot_ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
    return str(uuid.UUID(int=value))


def canary_event(origin: str, target: str, *, slot_ms: int, hlc: Hlc) -> Event:
    """The canary from `origin` to `target` for the time slot starting at `slot_ms`."""
    return Event(
        event_id=canary_event_id(origin, target, slot_ms),
        origin=origin,
        service=CANARY_SERVICE,
        method="POST",
        path=f"/{CANARY_SERVICE}/{target}",
        hlc=hlc.now(),
        key=f"{CANARY_SERVICE}/{origin}/{target}",
        body=b"",
        trace=new_traceparent(),
    )


def canary_message(event: Event, target: str) -> tuple[str, dict[str, str], bytes]:
    """(subject, headers, payload) of a canary in its origin's events stream."""
    headers, payload = encode(event)
    headers[HDR_CANARY] = target
    return events_subject(event.origin, CANARY_SERVICE), headers, payload


class CanarySender:
    """Writes one canary per target every `interval_s`, on wall-clock slot boundaries."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        origin: str,
        targets: Sequence[str],
        interval_s: float,
        hlc: Hlc | None = None,
        signer: Signer | None = None,
        timeout_s: float = 2.0,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        self._conn = conn
        self._signer = signer
        self._origin = origin
        self._targets = tuple(targets)
        self._interval_s = interval_s
        self._hlc = hlc or Hlc()
        self._timeout_s = timeout_s
        self._wall_s = wall_s

    async def run(self) -> None:
        """Until cancelled: send a round now, then one at every slot boundary."""
        while True:
            slot_ms = self._slot_ms(self._wall_s())
            await self.send_round(slot_ms)
            next_slot_s = slot_ms / 1000 + self._interval_s
            await asyncio.sleep(max(0.0, next_slot_s - self._wall_s()))

    def _slot_ms(self, now_s: float) -> int:
        return int(math.floor(now_s / self._interval_s) * self._interval_s * 1000)

    async def send_round(self, slot_ms: int) -> None:
        for target in self._targets:
            await self._send(target, slot_ms)

    async def _send(self, target: str, slot_ms: int) -> None:
        event = canary_event(self._origin, target, slot_ms=slot_ms, hlc=self._hlc)
        if self._signer is not None:
            event = self._signer.sign(event)
        subject, headers, payload = canary_message(event, target)
        try:
            js = self._conn.jetstream(timeout_s=self._timeout_s)
            await js.publish(subject, payload, timeout=self._timeout_s, headers=headers)
        except (TimeoutError, nats.errors.Error, OSError, RuntimeError) as exc:
            CANARIES.labels(target, "failed").inc()
            log.warning("broadcaster.canary_failed", target=target, error=repr(exc))
            return
        CANARIES.labels(target, "sent").inc()
