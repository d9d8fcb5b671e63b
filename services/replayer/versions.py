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

`apply` events (docs/DESIGN.md, "Write rules")
-----------------------------------------------
A `replace` event carries its key's whole state, so its version alone decides it. An `apply`
event (a create, a partial update) must be applied once whatever else its key has seen, so
it never claims or moves the key's record (`claim_apply`). It is decided by:

* the key's record: `STALE` if it holds an `applied` replacement newer than the event (that
  replacement overwrote the event in every region, in every order); `BUSY` while a live
  claim holds it (a replacement is being applied: the event waits rather than race it);
* its own **marker**, `<service>.ev.<event id>`, in the record format: created `claimed`
  before the call, made `applied` after it, deleted when the call will not happen now. An
  `applied` marker is `DUPLICATE`; a live claim of another instance is `BUSY`; a claim of
  this instance's or an expired one is taken over as a **repeat** (the earlier call may have
  landed; the service gets the same `Idempotency-Key`). Markers live as long as records
  (the bucket's TTL, the stream's age limit), so redeliveries and replays from the stream
  within it are caught;
* after a call that is not a create, the key's **apply mark** `<record key>.a` (the newest
  applied `apply` version) is raised; an event older than it was applied out of order, and
  is counted as a conflict (`raise_apply_mark`).

An `apply` event costs a read of the key's record, the marker's create and update, and for a
non-create the apply mark's read and write.
Records live as long as the stream's age limit (the bucket's TTL), so they survive restarts.

What this instance remembers (`known`), and why it is safe
-----------------------------------------------------------
Each instance keeps, for the keys it touched most recently (bounded, oldest dropped first),
the last record it read or wrote there and that record's revision. Nothing makes an instance
the only writer of a key: every replayer instance shares one consumer (keys are not in the
subject), and the bridge raises records for local writes (`services/bridge/versions.py`).
So a remembered record may be out of date, and it is used in exactly
two ways, each safe for its own reason:

1. **"The record is newer than this event" — trusted only for an `applied` record.** Let H be
   the highest version ever written to a key in state `applied`. H never goes down, and the
   record's version is always >= H: a claim is only granted to a version >= the record's;
   `applied` is written over that same claim; `release` restores exactly the record the claim
   replaced, by compare-and-set on the claim's revision (so nothing was written in between);
   the bridge's local write only ever raises the version. Having seen `applied` at version V
   proves H >= V for ever, so an event older than V would be found `STALE` by any later read
   (and the same event `DUPLICATE`, or `STALE` once a newer version exists: either way no
   call). A remembered `claimed` record proves nothing of the kind: a claim can be released
   back to an older version, so it never yields a verdict.
2. **"This event is newer than the record" — never trusted as a verdict.** Another instance
   or the bridge may have written since. It is only used to skip the read: the claim is
   written with a compare-and-set on the remembered revision, which the server refuses if
   anyone wrote in between; then the record is read and judged as usual. When the
   compare-and-set succeeds, the remembered record *was* the current one, so the decision is
   the one a fresh read would have given.

With one instance (or keys that stay with one instance) an event costs two KV writes (claim,
applied) instead of a read and two writes; when another writer moved the record it costs one
refused write more. A key this instance has not seen is read and created at once
(`KvCas.create_and_read`): a new key's claim takes one round trip, an existing one's a refused
create more. Purging the bucket by hand needs the replayers (and bridges) restarted
(they would keep finding events older than a remembered `applied` version stale).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.envelope import Event
from shared.kvcas import KvCas
from shared.versions import (
    CAS_ATTEMPTS,
    Record,
    apply_mark_key,
    cas_write,
    marker_key,
    read_record,
    record_key,
    record_of,
)

__all__ = ["Claim", "ClaimResult", "Verdict", "VersionStore"]

_Version = tuple[str, str]
_Read = tuple[Record | None, int | None]  # a record and its revision, as read_record answers


class Verdict(enum.StrEnum):
    CLAIMED = "claimed"
    STALE = "stale"
    DUPLICATE = "duplicate"
    BUSY = "busy"


@dataclass(slots=True)
class ClaimResult:
    verdict: Verdict
    claim: Claim | None = None
    # The event was claimed before and never settled: its earlier call may have landed.
    repeat: bool = False


class VersionStore:
    """Reads and writes version records; `owner` names this instance in its claims;
    `remember` bounds how many keys' last records are kept (0: none, every claim reads);
    `cas`, when given, makes the updates of existing records (`shared.kvcas`)."""

    def __init__(
        self,
        kv: KeyValue,
        *,
        owner: str,
        claim_s: float,
        remember: int = 100_000,
        cas: KvCas | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kv = kv
        self._fast = cas
        self._owner = owner
        self._claim_s = claim_s
        self._clock = clock
        self._limit = remember
        self._known: dict[str, tuple[Record, int]] = {}  # insertion order = age

    @property
    def kv(self) -> KeyValue:
        return self._kv

    async def get(self, service: str, key: str) -> Record | None:
        record, _ = await read_record(self._kv, record_key(service, key))
        return record

    async def claim(self, event: Event) -> ClaimResult:
        kv_key = record_key(event.service, event.key)
        version = (str(event.hlc), event.event_id)
        first = await self._first_try(kv_key, event, version)
        if isinstance(first, ClaimResult):
            return first
        read = first
        for _ in range(CAS_ATTEMPTS):
            current, read_revision = read or await self._read(kv_key)
            read = None
            if current is not None and read_revision is not None:
                self._remember(kv_key, current, read_revision)
            verdict = self._judge(version, current)
            if verdict is not Verdict.CLAIMED:
                return ClaimResult(verdict)
            claimed = await self._try_claim(kv_key, event, current, read_revision)
            if claimed is not None:
                return claimed
        return ClaimResult(Verdict.BUSY)

    async def _first_try(
        self, kv_key: str, event: Event, version: _Version
    ) -> ClaimResult | _Read | None:
        """Decide or claim without a read first when possible: a remembered record (module
        docstring, "What this instance remembers"), or a key never seen (`_claim_unseen`).
        Otherwise what was read on the way (or None), for `claim` to judge."""
        known = self._known.get(kv_key)
        if known is not None:
            record, revision = known
            settled = _settled(version, record)
            if settled is not None:
                return ClaimResult(settled)
            if self._judge(version, record) is Verdict.CLAIMED:
                return await self._try_claim(kv_key, event, record, revision)
            return None
        if self._fast is None:
            return None
        return await self._claim_unseen(kv_key, event)

    async def _claim_unseen(self, kv_key: str, event: Event) -> ClaimResult | _Read:
        """A key this instance knows nothing of: its claim is created (refused if the key has
        any record) while the record is read, so a new key is claimed in one round trip. When
        the create is refused, the read is what `claim` judges next."""
        assert self._fast is not None
        mine = self._claimed(event)
        created, entry = await self._fast.create_and_read(kv_key, mine.encode())
        if created is not None:  # nothing was there: no previous record to restore
            self._remember(kv_key, mine, created)
            return ClaimResult(Verdict.CLAIMED, Claim(self, kv_key, mine, created, None))
        return record_of(entry)

    async def _read(self, kv_key: str) -> _Read:
        """The record and its revision, (None, None) if the key has none."""
        if self._fast is None:
            return await read_record(self._kv, kv_key)
        return record_of(await self._fast.read(kv_key))

    def _judge(self, version: _Version, current: Record | None) -> Verdict:
        if current is None:
            return Verdict.CLAIMED
        if version < current.version:
            return Verdict.STALE
        if version == current.version:
            return Verdict.DUPLICATE if current.state == "applied" else Verdict.CLAIMED
        if current.state == "claimed" and current.until > self._clock():
            return Verdict.BUSY
        return Verdict.CLAIMED

    async def _try_claim(
        self, kv_key: str, event: Event, current: Record | None, revision: int | None
    ) -> ClaimResult | None:
        """Claim over `current` at `revision`; None if someone wrote since."""
        mine = self._claimed(event)
        new_revision = await self._cas(kv_key, mine, revision)
        if new_revision is None:
            return None
        repeat = current is not None and current.version == mine.version
        claim = Claim(self, kv_key, mine, new_revision, current)
        return ClaimResult(Verdict.CLAIMED, claim, repeat=repeat)

    def _claimed(self, event: Event) -> Record:
        return Record(
            str(event.hlc), event.event_id, "claimed", self._owner, self._clock() + self._claim_s
        )

    # ------------------------------------------------------------------ `apply` events

    async def claim_apply(self, event: Event) -> ClaimResult:
        """Claim an `apply` event (module docstring, "`apply` events"): `STALE` when a newer
        `replace` of its key was applied, `BUSY` while a `replace` of its key is in flight,
        `DUPLICATE` when its marker says applied, else `CLAIMED` with its marker's claim."""
        kv_key = record_key(event.service, event.key)
        version = (str(event.hlc), event.event_id)
        known = self._known.get(kv_key)
        if known is not None and _settled(version, known[0]) is Verdict.STALE:
            return ClaimResult(Verdict.STALE)
        current, revision = await self._read(kv_key)
        if current is not None and revision is not None:
            self._remember(kv_key, current, revision)
            if current.state == "applied" and version < current.version:
                return ClaimResult(Verdict.STALE)
            if current.state == "claimed" and current.until > self._clock():
                return ClaimResult(Verdict.BUSY)
        return await self._claim_marker(event)

    async def _claim_marker(self, event: Event) -> ClaimResult:
        key = marker_key(event.service, event.event_id)
        mine = self._claimed(event)
        for _ in range(CAS_ATTEMPTS):
            created = await cas_write(self._kv, key, mine, None)
            if created is not None:
                return ClaimResult(
                    Verdict.CLAIMED, Claim(self, key, mine, created, None, marker=True)
                )
            current, revision = await self._read(key)
            if current is None or revision is None:
                continue  # released (deleted) in between: create it again
            if current.state == "applied":
                return ClaimResult(Verdict.DUPLICATE)
            if current.owner != self._owner and current.until > self._clock():
                return ClaimResult(Verdict.BUSY)
            # Ours from an earlier delivery, or a dead owner's: its call may have landed.
            retaken = await cas_write(self._kv, key, mine, revision)
            if retaken is not None:
                claim = Claim(self, key, mine, retaken, None, marker=True)
                return ClaimResult(Verdict.CLAIMED, claim, repeat=True)
        return ClaimResult(Verdict.BUSY)

    async def raise_apply_mark(self, event: Event) -> bool:
        """Record an applied `apply` event as its key's newest applied one; False if a newer
        one was applied already (this one was applied out of order: a conflict)."""
        key = apply_mark_key(event.service, event.key)
        mine = Record(str(event.hlc), event.event_id, "applied", self._owner, 0.0)
        known = self._known.get(key)
        # A remembered mark only saves the read: the write is refused if anyone wrote since.
        fresh = known is not None and mine.version > known[0].version
        if fresh and known is not None and await self._cas(key, mine, known[1]) is not None:
            return True
        for _ in range(CAS_ATTEMPTS):
            current, revision = await self._read(key)
            if current is not None and mine.version < current.version:
                return False
            if await self._cas(key, mine, revision) is not None:
                return True
        return True  # newer writers each time: not provably out of order

    async def _cas(
        self, kv_key: str, record: Record, revision: int | None, *, remember: bool = True
    ) -> int | None:
        """Compare-and-set; remembers the outcome (the new record, or nothing) unless told
        not to (an event's marker is never read again by this instance)."""
        if revision is not None and self._fast is not None:
            new_revision = await self._fast.update(kv_key, record.encode(), last=revision)
        else:
            new_revision = await cas_write(self._kv, kv_key, record, revision)
        if not remember:
            return new_revision
        if new_revision is None:
            self.forget(kv_key)
        else:
            self._remember(kv_key, record, new_revision)
        return new_revision

    def _remember(self, kv_key: str, record: Record, revision: int) -> None:
        if self._limit <= 0:
            return
        self._known.pop(kv_key, None)  # re-inserted as the newest
        self._known[kv_key] = (record, revision)
        if len(self._known) > self._limit:
            del self._known[next(iter(self._known))]

    def forget(self, kv_key: str) -> None:
        self._known.pop(kv_key, None)


def _settled(version: _Version, known: Record) -> Verdict | None:
    """The verdict a remembered record proves on its own (module docstring, point 1)."""
    if known.state != "applied":
        return None
    if version < known.version:
        return Verdict.STALE
    if version == known.version:
        return Verdict.DUPLICATE
    return None


class Claim:
    """This instance's claim on one key for one event; finish it exactly once."""

    def __init__(
        self,
        store: VersionStore,
        kv_key: str,
        record: Record,
        revision: int,
        previous: Record | None,
        *,
        marker: bool = False,
    ) -> None:
        self._marker = marker
        self._store = store
        self._kv_key = kv_key
        self._record = record
        self._revision = revision
        self._previous = previous

    async def applied(self) -> None:
        """The service has this version (2xx, or 409/412: it has a newer one)."""
        done = Record(self._record.hlc, self._record.event_id, "applied", self._record.owner, 0.0)
        await self._store._cas(self._kv_key, done, self._revision, remember=not self._marker)

    async def release(self) -> None:
        """The call will not happen now: put back what was there (nothing, or the previous)."""
        store = self._store
        if self._previous is None:
            store.forget(self._kv_key)
            try:
                await store.kv.delete(self._kv_key, last=self._revision)
            except KeyWrongLastSequenceError:
                pass  # someone moved on since (a newer version, or took over an expired claim)
            return
        await store._cas(self._kv_key, self._previous, self._revision)
