"""The default store: one SQLite file (``--data-dir``, else the user's state directory).

Python's own sqlite3, driven from two threads, each with its own connection: one writes
(every batch one transaction, in order), one reads (pages, markers), so that a page is
not queued behind a write; WAL mode lets them run at once. The event loop only awaits
them. Chosen over aiosqlite by measurement (benchmarks/README.md, "The message store"):
aiosqlite is the same sqlite3 behind one thread per connection plus a queue, and a
thread of our own batches a whole turn in one ``executemany``.

The schema (the PostgreSQL store's is the same, plus an index on the time, which here
would cost each insert a third more: the age prune walks the primary key instead):

- ``rooms(room, epoch, keep_messages, keep_days)``: each room's numbering epoch and its
  own retention (NULL: the server's);
- ``messages(room, epoch, q, ts, sender, content, edited)``, keyed by (room, epoch, q):
  ``content`` NULL is a deleted message's tombstone; ``edited`` its last change's time;
- ``markers(user, room, epoch, q)``: each user's read marker per room.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from roomchat.server.core.ports import RoomRecord, StoreBatch, StoredMessage, StoreError

__all__ = ["FILE_NAME", "SQLiteStore"]

#: The database's file name inside the data directory.
FILE_NAME = "roomchat.sqlite3"

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
  room TEXT PRIMARY KEY,
  epoch TEXT NOT NULL,
  keep_messages INTEGER,
  keep_days INTEGER
);
CREATE TABLE IF NOT EXISTS messages (
  room TEXT NOT NULL,
  epoch TEXT NOT NULL,
  q INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  sender TEXT NOT NULL,
  content TEXT,
  edited INTEGER,
  PRIMARY KEY (room, epoch, q)
) WITHOUT ROWID;
DROP INDEX IF EXISTS messages_by_time;
CREATE TABLE IF NOT EXISTS markers (
  user TEXT NOT NULL,
  room TEXT NOT NULL,
  epoch TEXT NOT NULL,
  q INTEGER NOT NULL,
  PRIMARY KEY (user, room)
) WITHOUT ROWID;
"""

_UPSERT_EPOCH = (
    "INSERT INTO rooms (room, epoch) VALUES (?, ?) "
    "ON CONFLICT (room) DO UPDATE SET epoch = excluded.epoch"
)
_INSERT = (
    "INSERT OR IGNORE INTO messages (room, epoch, q, ts, sender, content) VALUES (?,?,?,?,?,?)"
)
_EDIT = (
    "UPDATE messages SET content = ?4, edited = ?5 "
    "WHERE room = ?1 AND epoch = ?2 AND q = ?3 AND content IS NOT NULL"
)
_DELETE = (
    "UPDATE messages SET content = NULL, edited = ?4 WHERE room = ?1 AND epoch = ?2 AND q = ?3"
)
_MARK = (
    "INSERT INTO markers (user, room, epoch, q) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (user, room) DO UPDATE SET epoch = excluded.epoch, q = excluded.q "
    "WHERE markers.epoch <> excluded.epoch OR markers.q < excluded.q"
)
_RETAIN = (
    "INSERT INTO rooms (room, epoch, keep_messages, keep_days) VALUES (?1, '', ?2, ?3) "
    "ON CONFLICT (room) DO UPDATE SET keep_messages = ?2, keep_days = ?3"
)
_COLUMNS = "q, ts, sender, content, edited"


#: How much lower the writer thread's scheduling priority is than the process's (nice).
WRITER_NICENESS = 10


def _yield_to_the_loop() -> None:
    """Lower the writer thread's priority (Linux: nice is per thread): where it shares a
    core with the event loop, the loop's deliveries come first and the writer takes what
    they leave (CFS gives it about a tenth of a core the loop keeps busy). A store that
    falls behind keeps its backlog (--store-backlog) and counts what it could not keep;
    a delivery that falls behind is a user's message late. Elsewhere, or where the
    priority cannot be changed, nothing changes."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + WRITER_NICENESS)


class SQLiteStore:
    """Messages in one SQLite file; see the module docstring."""

    durable = True

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = ThreadPoolExecutor(
            1, thread_name_prefix="roomchat-sqlite-write", initializer=_yield_to_the_loop
        )
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="roomchat-sqlite-read")
        self._local = threading.local()

    @property
    def description(self) -> str:
        return f"sqlite {self.path}"

    # -- the threads -----------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    async def _run(self, pool: ThreadPoolExecutor, work: Callable[[sqlite3.Connection], _T]) -> _T:
        def call() -> _T:
            try:
                return work(self._connection())
            except (sqlite3.Error, OverflowError) as exc:  # Overflow: a value past INTEGER
                raise StoreError(f"SQLite {self.path}: {exc}") from None

        return await asyncio.get_running_loop().run_in_executor(pool, call)

    async def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create {self.path.parent}: {exc.strerror}") from None
        await self._run(self._writer, lambda db: db.executescript(_SCHEMA))

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()
            self._local.connection = None

        for pool in (self._writer, self._reader):
            if getattr(pool, "_shutdown", False):
                continue
            with contextlib.suppress(StoreError):
                await self._run(pool, shut)
            pool.shutdown(wait=True)

    # -- writing -----------------------------------------------------------------------
    async def write(self, batch: StoreBatch) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                if batch.epochs:
                    db.executemany(_UPSERT_EPOCH, batch.epochs)
                if batch.messages:
                    db.executemany(_INSERT, batch.messages)
                if batch.edits:
                    db.executemany(_EDIT, batch.edits)
                if batch.deletes:
                    db.executemany(_DELETE, batch.deletes)
                if batch.markers:
                    db.executemany(_MARK, batch.markers)
                if batch.retention:
                    db.executemany(_RETAIN, batch.retention)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

        await self._run(self._writer, work)

    async def prune(self, room: str, epoch: str, keep_messages: int, before_ts: int) -> int:
        def work(db: sqlite3.Connection) -> int:
            gone = 0
            if keep_messages > 0:
                row = db.execute(
                    "SELECT q FROM messages WHERE room = ? AND epoch = ? "
                    "ORDER BY q DESC LIMIT 1 OFFSET ?",
                    (room, epoch, keep_messages - 1),
                ).fetchone()
                if row is not None:
                    gone += db.execute(
                        "DELETE FROM messages WHERE room = ? AND epoch = ? AND q < ?",
                        (room, epoch, row[0]),
                    ).rowcount
            if before_ts > 0:
                gone += _prune_by_age(db, room, before_ts)
            return gone

        return await self._run(self._writer, work)

    async def purge(self, room: str) -> int:
        return await self._run(
            self._writer,
            lambda db: db.execute("DELETE FROM messages WHERE room = ?", (room,)).rowcount,
        )

    # -- reading -----------------------------------------------------------------------
    async def rooms(self) -> dict[str, RoomRecord]:
        def work(db: sqlite3.Connection) -> dict[str, RoomRecord]:
            rows = db.execute(
                "SELECT room, epoch, keep_messages, keep_days, "
                "(SELECT max(q) FROM messages m WHERE m.room = r.room AND m.epoch = r.epoch) "
                "FROM rooms r"
            ).fetchall()
            return {
                room: RoomRecord(epoch, last or 0, keep_messages, keep_days)
                for room, epoch, keep_messages, keep_days, last in rows
            }

        return await self._run(self._reader, work)

    async def page(
        self, room: str, epoch: str, before: int | None, after: int | None, limit: int
    ) -> list[StoredMessage]:
        def work(db: sqlite3.Connection) -> list[StoredMessage]:
            if after is not None:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND epoch = ? AND q > ? "
                    "ORDER BY q LIMIT ?",
                    (room, epoch, after, limit),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND epoch = ? AND q < ? "
                    "ORDER BY q DESC LIMIT ?",
                    (room, epoch, before if before is not None else 2**62, limit),
                ).fetchall()
                rows.reverse()
            return [StoredMessage(room, *row) for row in rows]

        return await self._run(self._reader, work)

    async def message(self, room: str, epoch: str, seq: int) -> StoredMessage | None:
        def work(db: sqlite3.Connection) -> StoredMessage | None:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND epoch = ? AND q = ?",
                (room, epoch, seq),
            ).fetchone()
            return None if row is None else StoredMessage(room, *row)

        return await self._run(self._reader, work)

    async def markers(self, user: str) -> dict[str, tuple[str, int]]:
        def work(db: sqlite3.Connection) -> dict[str, tuple[str, int]]:
            rows = db.execute("SELECT room, epoch, q FROM markers WHERE user = ?", (user,))
            return {room: (epoch, q) for room, epoch, q in rows}

        return await self._run(self._reader, work)

    async def latest(self, rooms: Sequence[tuple[str, str]]) -> dict[str, int]:
        def work(db: sqlite3.Connection) -> dict[str, int]:
            out = {}
            for room, epoch in rooms:  # one primary-key seek each
                (last,) = db.execute(
                    "SELECT max(q) FROM messages WHERE room = ? AND epoch = ?", (room, epoch)
                ).fetchone()
                if last is not None:
                    out[room] = last
            return out

        return await self._run(self._reader, work)

    async def size(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total


def _prune_by_age(db: sqlite3.Connection, room: str, before_ts: int) -> int:
    """Delete the room's messages older than ``before_ts``, in every epoch, without an
    index on the time (it would cost each insert a second B-tree, a third of the
    write's CPU): within an epoch the time grows with ``q``, so the cut is the first
    message young enough, found by reading from the oldest, and what goes is a range of
    the primary key. (With Redis, instances' clocks may differ by a little: a message
    a few ms past its time may stay until the next sweep; none younger goes.)"""
    gone = 0
    epoch = ""
    while True:
        row = db.execute(
            "SELECT epoch FROM messages WHERE room = ? AND epoch > ? ORDER BY epoch LIMIT 1",
            (room, epoch),
        ).fetchone()
        if row is None:
            return gone
        epoch = row[0]
        cut = db.execute(
            "SELECT q FROM messages WHERE room = ? AND epoch = ? AND ts >= ? ORDER BY q LIMIT 1",
            (room, epoch, before_ts),
        ).fetchone()
        below = cut[0] if cut is not None else 2**63 - 1  # none young enough: all of it
        gone += db.execute(
            "DELETE FROM messages WHERE room = ? AND epoch = ? AND q < ?", (room, epoch, below)
        ).rowcount
