"""Last-writer-wins version records, shared by the bridge and the replayer (docs/DESIGN.md §5).

A region keeps one record per (service, `Xr-Key`) in its KV bucket `xr-versions-<region>`,
under the KV key `<service>.<sha256 of the key, 40 hex>` (KV keys have a restricted alphabet;
the service name already fits it). A record is JSON::

    {"hlc": "<stamp>", "event_id": "<uuid7>", "state": "claimed"|"applied",
     "owner": "<instance id>", "until": <unix seconds a claim lasts>}

Versions are ordered by (hlc, event_id), so two writes with the same stamp still have a fixed
order. Every write is a compare-and-set on the revision that was read (`update(last=rev)`,
`create` for a new key), so two writers can never move a record backwards.

The bridge raises a key's record after a local write succeeded, so that older events replayed
from other regions are `stale` here (`services/bridge/versions.py`); the replayer reads and
claims records (`services/replayer/versions.py`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.kvcas import Entry

__all__ = [
    "CAS_ATTEMPTS",
    "Record",
    "apply_mark_key",
    "cas_write",
    "marker_key",
    "read_record",
    "record_key",
    "record_of",
]

CAS_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Record:
    hlc: str
    event_id: str
    state: str
    owner: str
    until: float

    @property
    def version(self) -> tuple[str, str]:
        return (self.hlc, self.event_id)

    def encode(self) -> bytes:
        # Spelled out rather than dataclasses.asdict (a deep copy): this runs twice per event.
        fields = {
            "hlc": self.hlc,
            "event_id": self.event_id,
            "state": self.state,
            "owner": self.owner,
            "until": self.until,
        }
        return json.dumps(fields, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Record | None:
        try:
            raw = json.loads(data or b"")
            return cls(**{k: raw[k] for k in ("hlc", "event_id", "state", "owner", "until")})
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as absent, then overwritten


def record_key(service: str, key: str) -> str:
    return f"{service}.{hashlib.sha256(key.encode()).hexdigest()[:40]}"


def marker_key(service: str, event_id: str) -> str:
    """The applied marker of one `apply` event (services/replayer/versions.py)."""
    return f"{service}.ev.{event_id}"


def apply_mark_key(service: str, key: str) -> str:
    """The newest applied `apply` version of a key (services/replayer/versions.py)."""
    return f"{record_key(service, key)}.a"


async def read_record(kv: KeyValue, kv_key: str) -> tuple[Record | None, int | None]:
    """The record and its revision; (None, None) when the key has none."""
    try:
        entry = await kv.get(kv_key)
    except KeyNotFoundError:
        return None, None
    return Record.decode(entry.value), entry.revision


def record_of(entry: Entry) -> tuple[Record | None, int | None]:
    """`read_record`'s answer from what `KvCas.read` read."""
    value, revision = entry
    return (None, None) if revision is None else (Record.decode(value), revision)


async def cas_write(kv: KeyValue, kv_key: str, record: Record, revision: int | None) -> int | None:
    """Write if nobody wrote since `revision` (None: key absent); new revision or None."""
    try:
        if revision is None:
            return int(await kv.create(kv_key, record.encode()))
        return int(await kv.update(kv_key, record.encode(), last=revision))
    except KeyWrongLastSequenceError:
        return None
