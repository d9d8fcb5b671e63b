"""Last-writer-wins version records and per-key claims, in the KV bucket `xr-versions-<region>`.

One record per (service, `Xr-Key`), under the KV key `<service>.<sha256 of the key, 40 hex>`
(KV keys have a restricted alphabet; the service name already fits it). A record is JSON::

    {"hlc": "<stamp>", "event_id": "<uuid7>", "state": "claimed"|"applied",
     "owner": "<instance id>", "until": <unix seconds the claim lasts>}

Versions are ordered by (hlc, event_id), so two writes with the same stamp still have a fixed
order. Every write is a compare-and-set on the revision that was read (`update(last=rev)`,
`create` for a new key), so two replayer instances can never move a record backwards.

`claim(event)` before calling the service:

* record newer than the event → `STALE` (no call);
* same version, `applied` → `DUPLICATE` (no call);
* `claimed` by another event whose claim has not expired → `BUSY` (try again shortly): this is
  what serialises one key's calls across instances;
* the same event again while `claimed` → `CLAIMED` (a redelivery: the earlier holder either
  finished its call or lost the message; the service sees the same `Idempotency-Key`);
* otherwise the record becomes `claimed` by this event → `CLAIMED`, with a `Claim` to finish:
  `applied()` after a 2xx (or a 409/412), `release()` when the call will not happen now
  (retry later or dead letter), which puts the previous record back.

A lost compare-and-set (another instance wrote in between) re-reads and decides again.
Records live as long as the stream's age limit (the bucket's TTL), so they survive restarts.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.envelope import Event
from shared.versions import CAS_ATTEMPTS, Record, cas_write, read_record, record_key

__all__ = ["Claim", "ClaimResult", "Verdict", "VersionStore"]


class Verdict(enum.StrEnum):
    CLAIMED = "claimed"
    STALE = "stale"
    DUPLICATE = "duplicate"
    BUSY = "busy"


@dataclass(slots=True)
class ClaimResult:
    verdict: Verdict
    claim: Claim | None = None


class VersionStore:
    """Reads and writes version records; `owner` names this instance in its claims."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        owner: str,
        claim_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = kv
        self._owner = owner
        self._claim_s = claim_s
        self._clock = clock

    @property
    def kv(self) -> KeyValue:
        return self._kv

    async def get(self, service: str, key: str) -> Record | None:
        record, _ = await self._read(record_key(service, key))
        return record

    async def claim(self, event: Event) -> ClaimResult:
        kv_key = record_key(event.service, event.key)
        for _ in range(CAS_ATTEMPTS):
            current, revision = await self._read(kv_key)
            verdict = self._judge(event, current)
            if verdict is not Verdict.CLAIMED:
                return ClaimResult(verdict)
            mine = Record(
                str(event.hlc), event.event_id, "claimed", self._owner,
                self._clock() + self._claim_s,
            )  # fmt: skip
            new_revision = await self._cas(kv_key, mine, revision)
            if new_revision is not None:
                return ClaimResult(verdict, Claim(self, kv_key, mine, new_revision, current))
        return ClaimResult(Verdict.BUSY)

    def _judge(self, event: Event, current: Record | None) -> Verdict:
        if current is None:
            return Verdict.CLAIMED
        version = (str(event.hlc), event.event_id)
        if version < current.version:
            return Verdict.STALE
        if version == current.version:
            return Verdict.DUPLICATE if current.state == "applied" else Verdict.CLAIMED
        if current.state == "claimed" and current.until > self._clock():
            return Verdict.BUSY
        return Verdict.CLAIMED

    async def _read(self, kv_key: str) -> tuple[Record | None, int | None]:
        return await read_record(self._kv, kv_key)

    async def _cas(self, kv_key: str, record: Record, revision: int | None) -> int | None:
        return await cas_write(self._kv, kv_key, record, revision)


class Claim:
    """This instance's claim on one key for one event; finish it exactly once."""

    def __init__(
        self,
        store: VersionStore,
        kv_key: str,
        record: Record,
        revision: int,
        previous: Record | None,
    ) -> None:
        self._store = store
        self._kv_key = kv_key
        self._record = record
        self._revision = revision
        self._previous = previous

    async def applied(self) -> None:
        """The service has this version (2xx, or 409/412: it has a newer one)."""
        done = Record(self._record.hlc, self._record.event_id, "applied", self._record.owner, 0.0)
        await self._store._cas(self._kv_key, done, self._revision)

    async def release(self) -> None:
        """The call will not happen now: put back what was there (nothing, or the previous)."""
        kv = self._store._kv
        try:
            if self._previous is None:
                await kv.delete(self._kv_key, last=self._revision)
            else:
                await kv.update(self._kv_key, self._previous.encode(), last=self._revision)
        except KeyWrongLastSequenceError:
            pass  # someone moved on since (a newer version, or took over an expired claim)
