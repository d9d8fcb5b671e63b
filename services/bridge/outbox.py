"""The bridge's local durable outbox (docs/DESIGN.md §5: "crash-safe, on disk").

An event whose JetStream ack did not come in time is written here *before* the client gets
its response, and stays until a later publish of it is acked. SQLite in WAL mode with
`synchronous=FULL`: a committed `put` survives a process crash and a power cut. Entries come
back in the order they were put (`seq`), with their original headers, so a republish carries
the same `Nats-Msg-Id` and JetStream drops it if the first attempt did land after all.

All SQLite work runs on one dedicated thread, off the event loop. `depth` and `size_bytes` are
kept in memory, so metrics and readiness probes never touch the disk. One process owns an
outbox file at a time (an exclusive lock next to it), so two bridges can never drain the same
entries. A row that no longer reads back (its stored headers are not the JSON object it was
written as: disk or hand-made corruption) is moved to the table `outbox_unreadable` of the
same file, with one error line and `xr_bridge_outbox_unreadable_total`, and the drain goes on:
the event is kept for an operator, not dropped, and not republished with headers it never had.

Errors::

    Exception
     └── OutboxError             the outbox cannot store or read (disk, corruption)
          ├── OutboxFullError    storing would pass `max_bytes`
          └── OutboxLockedError  another process holds this outbox
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

from services.bridge.metrics import OUTBOX_DEPTH, OUTBOX_UNREADABLE
from shared.lifecycle import Closeable
from shared.logs import get_logger

__all__ = ["Outbox", "OutboxEntry", "OutboxError", "OutboxFullError", "OutboxLockedError"]

T = TypeVar("T")
# seq, event id, key, size, why
_Unreadable = tuple[int, str, str, int, str]

log = get_logger("xr.bridge")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    headers    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    size       INTEGER NOT NULL,
    spooled_at REAL    NOT NULL
)
"""
# Rows whose headers no longer decode: kept for an operator, out of the drain's way.
_QUARANTINE = _SCHEMA.replace("IF NOT EXISTS outbox", "IF NOT EXISTS outbox_unreadable")


class OutboxError(Exception):
    """The outbox could not store or read an entry."""


class OutboxFullError(OutboxError):
    """Storing the entry would take the outbox over its size limit."""


class OutboxLockedError(OutboxError):
    """Another process holds the outbox file."""


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    seq: int
    event_id: str
    key: str
    subject: str
    headers: dict[str, str]  # the NATS headers, exactly as first published
    payload: bytes
    spooled_at: float  # Unix time


class Outbox(Closeable):
    """A FIFO of events on disk; an async context manager. See the module docstring."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._executor: ThreadPoolExecutor | None = None
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._depth = 0
        self._bytes = 0
        self._refused = False  # a put was refused for size since the last removal
        self._keys: Counter[str] = Counter()  # partition key -> entries waiting

    @property
    def depth(self) -> int:
        """Entries waiting (in memory; no I/O)."""
        return self._depth

    def holds(self, key: str) -> bool:
        """Whether an event with this partition key is waiting (in memory; no I/O)."""
        return key in self._keys

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def is_full(self) -> bool:
        """True once the outbox has refused an event for lack of room, until one leaves."""
        return self._refused or self._bytes >= self._max_bytes

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xr-outbox")
        try:
            self._depth, self._bytes, keys = await self._run(self._open_sync)
        except BaseException:
            await self.aclose()
            raise
        self._keys = Counter(keys)
        OUTBOX_DEPTH.set(self._depth)

    async def aclose(self) -> None:
        """Close the database and release the lock; idempotent."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            executor.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def put(
        self, event_id: str, key: str, subject: str, headers: Mapping[str, str], payload: bytes
    ) -> int:
        """Store one event durably (committed and synced when this returns); its seq."""
        size = len(payload) + sum(len(k) + len(v) for k, v in headers.items())
        if self._bytes + size > self._max_bytes:
            self._refused = True
            raise OutboxFullError(
                f"outbox holds {self._bytes} bytes; {size} more would pass the "
                f"{self._max_bytes}-byte limit"
            )
        row = (event_id, key, subject, json.dumps(dict(headers)), payload, size, time.time())
        seq = await self._run(lambda: self._insert_sync(row))
        self._depth += 1
        self._bytes += size
        self._keys[key] += 1
        OUTBOX_DEPTH.set(self._depth)
        return seq

    async def oldest(self, limit: int) -> list[OutboxEntry]:
        """Up to `limit` entries, oldest first (unreadable ones are moved aside: see the
        module docstring)."""
        entries, unreadable = await self._run(lambda: self._select_sync(limit))
        for seq, event_id, key, size, error in unreadable:
            self._forget(key, size)
            OUTBOX_UNREADABLE.inc()
            log.error(
                "bridge.outbox_unreadable",
                seq=seq,
                event_id=event_id,
                error=error,
                kept_in="outbox_unreadable",
                path=str(self.path),
            )
        return entries

    async def remove(self, seqs: Iterable[int]) -> None:
        """Delete entries by seq (after their ack); unknown seqs are ignored."""
        wanted = list(seqs)
        if not wanted:
            return
        keys, size = await self._run(lambda: self._delete_sync(wanted))
        self._depth -= len(keys)
        self._bytes -= size
        self._keys.subtract(keys)
        self._keys = +self._keys  # drop keys with nothing left
        self._refused = self._refused and not keys
        OUTBOX_DEPTH.set(self._depth)

    def _forget(self, key: str, size: int) -> None:
        """One entry left the outbox other than by `remove` (moved aside)."""
        self._depth -= 1
        self._bytes -= size
        self._keys[key] -= 1
        self._keys = +self._keys
        OUTBOX_DEPTH.set(self._depth)

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise OutboxError("the outbox is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {exc}") from exc
        except OSError as exc:
            raise OutboxError(f"outbox {self.path}: {exc.strerror or exc}") from exc

    # --- on the outbox thread ---

    def _open_sync(self) -> tuple[int, int, list[str]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_fd = _lock(self.path.with_name(self.path.name + ".lock"))
        db = sqlite3.connect(self.path, isolation_level=None)
        self._db = db
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)
        db.execute(_QUARANTINE)
        count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        keys = [key for (key,) in db.execute("SELECT key FROM outbox")]
        return int(count), int(size), keys

    def _close_sync(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # also releases the flock

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise OutboxError("the outbox is closed")
        return self._db

    def _insert_sync(self, row: tuple[str, str, str, str, bytes, int, float]) -> int:
        # Autocommit: the statement is its own transaction, synced before it returns.
        cursor = self._conn().execute(
            "INSERT INTO outbox (event_id, key, subject, headers, payload, size, spooled_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        return int(cursor.lastrowid or 0)

    def _select_sync(self, limit: int) -> tuple[list[OutboxEntry], list[_Unreadable]]:
        rows = (
            self._conn()
            .execute(
                "SELECT seq, event_id, key, subject, headers, payload, spooled_at, size "
                "FROM outbox ORDER BY seq LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        entries: list[OutboxEntry] = []
        unreadable: list[_Unreadable] = []
        for seq, event_id, key, subject, headers, data, at, size in rows:
            decoded, error = _headers(headers)
            if decoded is None:
                self._quarantine_sync(int(seq))
                unreadable.append((int(seq), str(event_id), str(key), int(size), error))
                continue
            entries.append(OutboxEntry(int(seq), event_id, key, subject, decoded, bytes(data), at))
        return entries, unreadable

    def _quarantine_sync(self, seq: int) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT INTO outbox_unreadable SELECT * FROM outbox WHERE seq = ?", (seq,))
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _delete_sync(self, seqs: list[int]) -> tuple[list[str], int]:
        """Delete; returns the keys of the deleted entries and their total size."""
        db = self._conn()
        marks = ",".join("?" * len(seqs))
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(f"SELECT key, size FROM outbox WHERE seq IN ({marks})", seqs)
            found = rows.fetchall()
            db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", seqs)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return [key for key, _ in found], sum(int(size) for _, size in found)


def _headers(text: object) -> tuple[dict[str, str] | None, str]:
    """The stored headers, or None and why they cannot be used."""
    try:
        value = json.loads(text) if isinstance(text, str | bytes) else None
    except ValueError as exc:
        return None, f"headers are not JSON: {exc}"
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return None, "headers are not an object of strings"
    return value, ""


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OutboxLockedError(
            f"outbox {path.with_suffix('')} is in use by another bridge process"
        ) from None
    except OSError:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    return fd
