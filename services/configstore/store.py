"""SQLite storage of the configuration store, versioned for last-writer-wins.

A record is (service, property) → JSON value, with its version: the `(Xr-Hlc, Xr-Event-Id)`
pair of the write that produced it. Versions compare as tuples: xregion's HLC stamps are
fixed-width, so string order is time order, and the event id breaks ties between two regions
that stamped the same instant. A write without a version (a client that bypassed the bridge)
has the empty version, older than every replicated write.

A DELETE keeps a tombstone with its version, so that an older PUT replayed later cannot
bring the record back. Tombstones are invisible to reads.

All access goes through one worker thread (`ConfigStore` owns it): SQLite calls never block
the event loop, and every compare-and-write is serialised without locks.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

T = TypeVar("T")

__all__ = ["ConfigStore", "Record", "StaleWriteError", "Version", "WriteResult"]

Version = tuple[str, str]  # (hlc, event id); ("", "") for an unversioned write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS configs (
    service  TEXT NOT NULL,
    property TEXT NOT NULL,
    value    TEXT,            -- JSON text; NULL for a tombstone
    hlc      TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (service, property)
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class Record:
    service: str
    property: str
    value: Any
    version: Version

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "property": self.property,
            "value": self.value,
            "version": {"hlc": self.version[0], "event_id": self.version[1]},
        }


@dataclass(frozen=True, slots=True)
class WriteResult:
    created: bool  # no live record existed before
    changed: bool  # False: the same version again (a retried or replayed write)


class StaleWriteError(Exception):
    """The write is older than the stored version (HTTP 409)."""

    def __init__(self, stored: Version) -> None:
        super().__init__(f"a newer version is stored: {stored[0]} {stored[1]}")
        self.stored = stored


class ConfigStore:
    """The SQLite file at `path`, in WAL mode with synchronous commits; an async context
    manager."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="configstore")
        self._db: sqlite3.Connection | None = None

    async def __aenter__(self) -> Self:
        await self._run(self._open)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def get(self, service: str, prop: str) -> Record | None:
        return await self._run(self._get, service, prop)

    async def scan(self, prefix: str = "") -> list[Record]:
        """Live records whose `service/property` starts with `prefix`, in key order."""
        return await self._run(self._list, prefix)

    async def put(self, service: str, prop: str, value: Any, version: Version) -> WriteResult:
        """Store `value` unless a newer version is stored (`StaleWriteError`)."""
        return await self._run(self._write, service, prop, json.dumps(value), version)

    async def delete(self, service: str, prop: str, version: Version) -> WriteResult:
        """Leave a tombstone unless a newer version is stored (`StaleWriteError`)."""
        return await self._run(self._write, service, prop, None, version)

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # Everything below runs on the store's one thread.

    def _open(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the store is closed")
        return self._db

    def _get(self, service: str, prop: str) -> Record | None:
        row = self._conn.execute(
            "SELECT service, property, value, hlc, event_id FROM configs "
            "WHERE service = ? AND property = ? AND value IS NOT NULL",
            (service, prop),
        ).fetchone()
        return _record(row) if row else None

    def _list(self, prefix: str) -> list[Record]:
        rows = self._conn.execute(
            "SELECT service, property, value, hlc, event_id FROM configs "
            "WHERE value IS NOT NULL AND substr(service || '/' || property, 1, ?) = ? "
            "ORDER BY service, property",
            (len(prefix), prefix),
        )
        return [_record(row) for row in rows]

    def _write(self, service: str, prop: str, value: str | None, version: Version) -> WriteResult:
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT value, hlc, event_id FROM configs WHERE service = ? AND property = ?",
                (service, prop),
            ).fetchone()
            stored: Version | None = (row[1], row[2]) if row else None
            if stored is not None and version < stored:
                raise StaleWriteError(stored)
            if stored == version and version != ("", ""):
                db.execute("COMMIT")
                return WriteResult(created=False, changed=False)
            db.execute(
                "INSERT INTO configs VALUES (?, ?, ?, ?, ?) ON CONFLICT (service, property) "
                "DO UPDATE SET value = excluded.value, hlc = excluded.hlc, "
                "event_id = excluded.event_id",
                (service, prop, value, *version),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return WriteResult(created=row is None or row[0] is None, changed=True)


def _record(row: tuple[str, str, str, str, str]) -> Record:
    service, prop, value, hlc, event_id = row
    return Record(service, prop, json.loads(value), (hlc, event_id))
