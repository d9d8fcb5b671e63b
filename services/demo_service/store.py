"""SQLite storage of the configuration store, versioned for last-writer-wins.

A record is (service, property) → JSON value, with its version: the `(Xr-Hlc, Xr-Event-Id)`
pair of the write that produced it. Versions compare as tuples: xregion's HLC stamps are
fixed-width, so string order is time order, and the event id breaks ties between two regions
that stamped the same instant. A write without a version (a client that bypassed the bridge)
has the empty version, older than every replicated write.

A DELETE keeps a tombstone with its version, so that an older PUT replayed later cannot
bring the record back. Tombstones are invisible to reads.

An item (the `/items` collection) is a client-assigned id → JSON object of fields, with the
version of the create that made it. Creates and deletes are ordered by version like a
record's writes (an item's DELETE keeps a tombstone too); a patch merges its fields into the
live item without moving the version, so every patch counts whatever order patches from
two regions arrive in.

All access goes through one worker thread (`ConfigStore` owns it): SQLite calls never block
the event loop, and every compare-and-write is serialised without locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

T = TypeVar("T")

__all__ = [
    "ConfigStore",
    "Item",
    "ItemExistsError",
    "NoSuchItemError",
    "Record",
    "StaleWriteError",
    "StoreError",
    "Version",
    "WriteResult",
]

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
CREATE TABLE IF NOT EXISTS items (
    id       TEXT NOT NULL PRIMARY KEY,
    fields   TEXT,            -- JSON object text; NULL for a tombstone
    hlc      TEXT NOT NULL,
    event_id TEXT NOT NULL
) WITHOUT ROWID;
"""
_UNVERSIONED: Version = ("", "")


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
class Item:
    id: str
    fields: dict[str, Any]
    version: Version  # of the create that made it

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "fields": self.fields,
            "version": {"hlc": self.version[0], "event_id": self.version[1]},
        }


@dataclass(frozen=True, slots=True)
class WriteResult:
    created: bool  # no live record existed before
    changed: bool  # False: the same version again (a retried or replayed write)


class StoreError(Exception):
    """A write the store refuses; the tree:

    StoreError
    ├── StaleWriteError   older than the stored version (HTTP 409)
    ├── ItemExistsError   a create of a live item (HTTP 409)
    └── NoSuchItemError   a patch of an item that is not there (HTTP 404)
    """


class StaleWriteError(StoreError):
    """The write is older than the stored version (HTTP 409)."""

    def __init__(self, stored: Version) -> None:
        super().__init__(f"a newer version is stored: {stored[0]} {stored[1]}")
        self.stored = stored


class ItemExistsError(StoreError):
    """A create of an item that exists, by another write than the one that made it (409)."""

    def __init__(self, item_id: str, stored: Version) -> None:
        super().__init__(f"item {item_id!r} exists")
        self.stored = stored


class NoSuchItemError(StoreError):
    """A patch of an item that was never created, or was deleted (HTTP 404)."""

    def __init__(self, item_id: str) -> None:
        super().__init__(f"no item {item_id!r}")


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

    async def get_item(self, item_id: str) -> Item | None:
        return await self._run(self._get_item, item_id)

    async def items(self) -> list[Item]:
        """Live items, in id order."""
        return await self._run(self._items)

    async def create_item(
        self, item_id: str, fields: dict[str, Any], version: Version
    ) -> tuple[Item, WriteResult]:
        """Make the item, or find the same create again (`changed` False); `ItemExistsError`
        if a live item was made by another write, `StaleWriteError` if it was deleted since."""
        return await self._run(self._create_item, item_id, json.dumps(fields), version)

    async def patch_item(self, item_id: str, fields: dict[str, Any]) -> Item:
        """Merge `fields` into the live item (`NoSuchItemError` if there is none)."""
        return await self._run(self._patch_item, item_id, fields)

    async def delete_item(self, item_id: str, version: Version) -> WriteResult:
        """Leave a tombstone unless a newer version is stored (`StaleWriteError`)."""
        return await self._run(self._delete_item, item_id, version)

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
        with self._transaction() as db:
            row = db.execute(
                "SELECT value, hlc, event_id FROM configs WHERE service = ? AND property = ?",
                (service, prop),
            ).fetchone()
            stored: Version | None = (row[1], row[2]) if row else None
            if stored is not None and version < stored:
                raise StaleWriteError(stored)
            if stored == version and version != _UNVERSIONED:
                return WriteResult(created=False, changed=False)
            db.execute(
                "INSERT INTO configs VALUES (?, ?, ?, ?, ?) ON CONFLICT (service, property) "
                "DO UPDATE SET value = excluded.value, hlc = excluded.hlc, "
                "event_id = excluded.event_id",
                (service, prop, value, *version),
            )
        return WriteResult(created=row is None or row[0] is None, changed=True)

    def _get_item(self, item_id: str) -> Item | None:
        row = self._conn.execute(
            "SELECT id, fields, hlc, event_id FROM items WHERE id = ? AND fields IS NOT NULL",
            (item_id,),
        ).fetchone()
        return _item(row) if row else None

    def _items(self) -> list[Item]:
        rows = self._conn.execute(
            "SELECT id, fields, hlc, event_id FROM items WHERE fields IS NOT NULL ORDER BY id"
        )
        return [_item(row) for row in rows]

    def _create_item(self, item_id: str, fields: str, version: Version) -> tuple[Item, WriteResult]:
        with self._transaction() as db:
            row = _item_row(db, item_id)
            if row is not None and row[1] is not None:
                if (row[2], row[3]) == version and version != _UNVERSIONED:
                    return _item(row), WriteResult(created=False, changed=False)
                raise ItemExistsError(item_id, (row[2], row[3]))
            # A deleted id is made again only by a create newer than its delete (the tombstone).
            if row is not None and version < (row[2], row[3]):
                raise StaleWriteError((row[2], row[3]))
            db.execute(
                "INSERT INTO items VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "fields = excluded.fields, hlc = excluded.hlc, event_id = excluded.event_id",
                (item_id, fields, *version),
            )
        return Item(item_id, json.loads(fields), version), WriteResult(created=True, changed=True)

    def _patch_item(self, item_id: str, fields: dict[str, Any]) -> Item:
        with self._transaction() as db:
            row = _item_row(db, item_id)
            if row is None or row[1] is None:
                raise NoSuchItemError(item_id)
            merged = {**json.loads(row[1]), **fields}
            db.execute("UPDATE items SET fields = ? WHERE id = ?", (json.dumps(merged), item_id))
        return Item(item_id, merged, (row[2], row[3]))

    def _delete_item(self, item_id: str, version: Version) -> WriteResult:
        with self._transaction() as db:
            row = _item_row(db, item_id)
            stored: Version | None = (row[2], row[3]) if row else None
            if stored is not None and version < stored:
                raise StaleWriteError(stored)
            if stored == version and version != _UNVERSIONED:
                return WriteResult(created=False, changed=False)
            db.execute(
                "INSERT INTO items VALUES (?, NULL, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "fields = NULL, hlc = excluded.hlc, event_id = excluded.event_id",
                (item_id, *version),
            )
        return WriteResult(created=row is None or row[1] is None, changed=True)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (refusals included)."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


_ItemRow = tuple[str, str | None, str, str]


def _item_row(db: sqlite3.Connection, item_id: str) -> _ItemRow | None:
    row: _ItemRow | None = db.execute(
        "SELECT id, fields, hlc, event_id FROM items WHERE id = ?", (item_id,)
    ).fetchone()
    return row


def _item(row: _ItemRow) -> Item:
    item_id, fields, hlc, event_id = row
    return Item(item_id, json.loads(fields) if fields is not None else {}, (hlc, event_id))


def _record(row: tuple[str, str, str, str, str]) -> Record:
    service, prop, value, hlc, event_id = row
    return Record(service, prop, json.loads(value), (hlc, event_id))
