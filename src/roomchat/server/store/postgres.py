"""``--store postgresql://USER:PASSWORD@HOST:PORT/DB``: messages in PostgreSQL, for many
instances sharing rooms (over Redis) or one that wants a database server.

asyncpg, through a small pool (up to 4 connections, 2 opened at once), so that a page
read never waits behind a write; writes take their turn on one lock, in the order they
were asked. Each batch is one transaction: its messages are COPYed into the connection's
temporary table ``incoming_messages``, then moved with one ``INSERT … SELECT … ON CONFLICT DO
NOTHING`` (a row already stored is left as it is); the rest goes with ``executemany``, in
the batch's order.

Chosen by measurement (500-row batches for 5-10 s from one process, PostgreSQL 15 on
the same 2-CPU machine, fsync off): asyncpg's COPY into a temporary table then INSERT …
SELECT 37,000-52,000 rows/s, its ``INSERT … SELECT FROM unnest($1::text[], …)``
37,000-41,000, its executemany 28,000-29,500; psycopg 3 (async) COPY the same way
29,500-34,600, executemany 23,500-26,000, unnest 23,000-29,000. Through this class,
with fsync on (benchmarks/store_postgres.py): ~37,000 messages/s with COPY, ~29,000-34,000
with unnest.

The schema is the SQLite store's (sqlite.py): ``rooms``, ``messages`` keyed by
(room, epoch, q) with ``content`` NULL for a deleted message, ``markers`` keyed by
("user", room). The pool reconnects by itself: after PostgreSQL went away, the call
that finds it gone raises StoreError, and the next one after it came back succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg  # type: ignore[import-untyped]

from roomchat.server.core.ports import RoomRecord, StoreBatch, StoredMessage, StoreError

__all__ = ["PostgresStore"]

_T = TypeVar("_T")

#: Seconds to connect, to wait for a pooled connection, and for one statement.
CONNECT_TIMEOUT = 10.0
ACQUIRE_TIMEOUT = 30.0
COMMAND_TIMEOUT = 30.0
#: Connections at most: a write holds one, pages and markers take the others.
POOL_SIZE = 4

#: Serialises the schema's creation between instances starting at once.
_SCHEMA_LOCK = 0x726F6F6D63686174  # "roomchat"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rooms (
  room TEXT PRIMARY KEY,
  epoch TEXT NOT NULL,
  keep_messages BIGINT,
  keep_days BIGINT
);
CREATE TABLE IF NOT EXISTS messages (
  room TEXT NOT NULL,
  epoch TEXT NOT NULL,
  q BIGINT NOT NULL,
  ts BIGINT NOT NULL,
  sender TEXT NOT NULL,
  content TEXT,
  edited BIGINT,
  PRIMARY KEY (room, epoch, q)
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (room, ts);
CREATE TABLE IF NOT EXISTS markers (
  "user" TEXT NOT NULL,
  room TEXT NOT NULL,
  epoch TEXT NOT NULL,
  q BIGINT NOT NULL,
  PRIMARY KEY ("user", room)
);
"""

_UPSERT_EPOCH = (
    "INSERT INTO rooms (room, epoch) VALUES ($1, $2) "
    "ON CONFLICT (room) DO UPDATE SET epoch = excluded.epoch"
)
#: Each connection's own table for a batch's messages, emptied at each commit: COPY fills
#: it, then one INSERT … SELECT moves what is new (COPY alone cannot skip duplicates).
_INCOMING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS incoming_messages ("
    "room TEXT, epoch TEXT, q BIGINT, ts BIGINT, sender TEXT, content TEXT"
    ") ON COMMIT DELETE ROWS"
)
_INCOMING_COLUMNS = ("room", "epoch", "q", "ts", "sender", "content")
_INSERT = (
    "INSERT INTO messages (room, epoch, q, ts, sender, content) "
    "SELECT room, epoch, q, ts, sender, content FROM pg_temp.incoming_messages "
    "ON CONFLICT DO NOTHING"
)
_EDIT = (
    "UPDATE messages SET content = $4, edited = $5 "
    "WHERE room = $1 AND epoch = $2 AND q = $3 AND content IS NOT NULL"
)
_DELETE = (
    "UPDATE messages SET content = NULL, edited = $4 WHERE room = $1 AND epoch = $2 AND q = $3"
)
_MARK = (
    'INSERT INTO markers ("user", room, epoch, q) VALUES ($1, $2, $3, $4) '
    'ON CONFLICT ("user", room) DO UPDATE SET epoch = excluded.epoch, q = excluded.q '
    "WHERE markers.epoch <> excluded.epoch OR markers.q < excluded.q"
)
_RETAIN = (
    "INSERT INTO rooms (room, epoch, keep_messages, keep_days) VALUES ($1, '', $2, $3) "
    "ON CONFLICT (room) DO UPDATE "
    "SET keep_messages = excluded.keep_messages, keep_days = excluded.keep_days"
)
_COLUMNS = "q, ts, sender, content, edited"
_ROOMS = (
    "SELECT room, epoch, keep_messages, keep_days, "
    "(SELECT max(q) FROM messages m WHERE m.room = r.room AND m.epoch = r.epoch) AS last "
    "FROM rooms r"
)
_PAGE_AFTER = (
    f"SELECT {_COLUMNS} FROM messages WHERE room = $1 AND epoch = $2 AND q > $3 ORDER BY q LIMIT $4"
)
_PAGE_BEFORE = (
    f"SELECT {_COLUMNS} FROM messages WHERE room = $1 AND epoch = $2 AND q < $3 "
    "ORDER BY q DESC LIMIT $4"
)
_PAGE_LAST = (
    f"SELECT {_COLUMNS} FROM messages WHERE room = $1 AND epoch = $2 ORDER BY q DESC LIMIT $3"
)
_MESSAGE = f"SELECT {_COLUMNS} FROM messages WHERE room = $1 AND epoch = $2 AND q = $3"
_SIZE = (
    "SELECT pg_total_relation_size('rooms'::regclass) "
    "+ pg_total_relation_size('messages'::regclass) "
    "+ pg_total_relation_size('markers'::regclass)"
)

#: What the driver and the network raise; each becomes a StoreError.
_FAILURES: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
    UnicodeError,
)
#: And a URL asyncpg cannot read (ValueError), when it connects.
_FAILURES_AT_CONNECT: tuple[type[BaseException], ...] = (*_FAILURES, ValueError)


def _lost(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection is gone (not that a statement failed)."""
    if isinstance(exc, asyncpg.InterfaceError):
        return not isinstance(exc, ValueError)  # not a bad argument or a bad URL
    return isinstance(
        exc,
        asyncpg.PostgresConnectionError
        | asyncpg.AdminShutdownError
        | asyncpg.CrashShutdownError
        | OSError,
    )


def _redacted(url: str) -> str:
    """``url`` without its password (in the user part or as a ``password=`` option)."""
    scheme, sep, rest = url.partition("://")
    rest, hashmark, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}@{hosts}"
    if query:
        kept = [
            pair
            for pair in query.split("&")
            if unquote(pair.partition("=")[0]).lower() != "password"
        ]
        query = "&".join(kept)
        question = "?" if query else ""
    return f"{scheme}{sep}{netloc}{slash}{path}{question}{query}{hashmark}{fragment}"


def _secrets(url: str) -> list[str]:
    """The password as it may appear in a message (raw and percent-decoded)."""
    parts = urlsplit(url)
    found: list[str] = []
    userinfo, at, _ = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        found.append(userinfo.partition(":")[2])
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() == "password":
            found.append(value)
    return [secret for raw in found for secret in {raw, unquote(raw)} if secret]


def _where(url: str) -> str:
    """``host:port/db`` for messages (libpq's defaults where the URL says nothing)."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    userinfo, _, hosts = parts.netloc.rpartition("@")
    hosts = unquote(hosts) or options.get("host", "") or "localhost"
    if "," not in hosts and not hosts.startswith("/") and ":" not in hosts.rpartition("]")[2]:
        hosts += f":{options.get('port', '5432')}"
    user = unquote(userinfo.partition(":")[0])
    database = unquote(parts.path.lstrip("/")) or options.get("dbname", "") or user or "postgres"
    return f"{hosts}/{database}"


def _clean(text: str) -> str:
    """PostgreSQL's text cannot hold NUL: a message with one would never be stored."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _count(status: str) -> int:
    """The row count of a command status ("DELETE 12")."""
    tail = status.rpartition(" ")[2]
    return int(tail) if tail.isdigit() else 0


async def _prepare_connection(db: Any) -> None:
    await db.execute(_INCOMING)


class PostgresStore:
    """Messages in PostgreSQL; see the module docstring."""

    durable = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._where = _where(url)
        self._secrets = _secrets(url)
        self._redacted = _redacted(url)
        self._description = f"postgresql {self._redacted}"
        self._pool: Any = None
        self._write_turn = asyncio.Lock()

    @property
    def description(self) -> str:
        return self._description

    # -- errors ------------------------------------------------------------------------
    def _say(self, exc: BaseException) -> str:
        text = str(exc).strip() or type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = "timed out"
        elif isinstance(exc, socket.gaierror) and exc.strerror:
            text = exc.strerror
        elif isinstance(exc, OSError) and exc.errno:
            text = os.strerror(exc.errno)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _unreachable(self, exc: BaseException) -> StoreError:
        if isinstance(exc, ValueError):  # asyncpg's reading of the URL
            return StoreError(f"cannot use PostgreSQL URL {self._redacted}: {self._say(exc)}")
        return StoreError(f"cannot reach PostgreSQL at {self._where}: {self._say(exc)}")

    def _failed(self, exc: BaseException) -> StoreError:
        if _lost(exc):
            return StoreError(f"lost PostgreSQL at {self._where}: {self._say(exc)}")
        if isinstance(exc, TimeoutError):
            return StoreError(f"PostgreSQL at {self._where} did not answer in time")
        return StoreError(f"PostgreSQL at {self._where}: {self._say(exc)}")

    # -- connections -------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            return
        try:
            # No min_size: asyncpg would keep reconnecting in the background during an
            # outage, logging a traceback each time; open() warms two connections
            # instead, and idle ones are kept (no lifetime).
            pool = await asyncpg.create_pool(
                self.url,
                min_size=0,
                max_size=POOL_SIZE,
                max_inactive_connection_lifetime=0,
                init=_prepare_connection,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except _FAILURES_AT_CONNECT as exc:
            raise self._unreachable(exc) from None
        self._pool = pool

        async def create(db: Any) -> None:
            async with db.transaction():
                await db.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await db.execute(_SCHEMA)

        async def warm(db: Any) -> None:
            await db.execute("SELECT 1")

        try:
            await self._run(create)
            await asyncio.gather(self._run(warm), self._run(warm))
        except StoreError:
            await self.close()
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
        except _FAILURES:
            pool.terminate()
        except asyncio.CancelledError:
            pool.terminate()
            raise

    async def _run(self, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """``work`` on a pooled connection; every failure as a StoreError. Once more on
        a fresh connection if the one it had turns out to be gone (PostgreSQL restarted
        since it was last used): every write here is safe to apply twice."""
        pool = self._pool
        if pool is None:
            raise StoreError(f"PostgreSQL at {self._where}: the store is not open")
        for attempt in (1, 2):
            try:
                db = await pool.acquire(timeout=ACQUIRE_TIMEOUT)
            except _FAILURES_AT_CONNECT as exc:
                raise self._unreachable(exc) from None
            try:
                return await work(db)
            except _FAILURES as exc:
                if attempt == 1 and _lost(exc):
                    with contextlib.suppress(*_FAILURES):
                        db.terminate()
                    continue
                raise self._failed(exc) from None
            finally:
                with contextlib.suppress(*_FAILURES):
                    await pool.release(db)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- writing -----------------------------------------------------------------------
    async def write(self, batch: StoreBatch) -> None:
        if not len(batch):
            return
        messages = [
            (room, epoch, q, ts, _clean(sender), _clean(content))
            for room, epoch, q, ts, sender, content in batch.messages
        ]
        edits = [(r, e, q, _clean(c), t) for r, e, q, c, t in batch.edits]

        async def work(db: Any) -> None:
            async with db.transaction():
                if batch.epochs:
                    await db.executemany(_UPSERT_EPOCH, batch.epochs)
                if messages:
                    await db.copy_records_to_table(
                        "incoming_messages",
                        schema_name="pg_temp",
                        records=messages,
                        columns=_INCOMING_COLUMNS,
                    )
                    await db.execute(_INSERT)
                if edits:
                    await db.executemany(_EDIT, edits)
                if batch.deletes:
                    await db.executemany(_DELETE, batch.deletes)
                if batch.markers:
                    await db.executemany(_MARK, batch.markers)
                if batch.retention:
                    await db.executemany(_RETAIN, batch.retention)

        async with self._write_turn:
            await self._run(work)

    async def prune(self, room: str, epoch: str, keep_messages: int, before_ts: int) -> int:
        async def work(db: Any) -> int:
            gone = 0
            async with db.transaction():
                if keep_messages > 0:
                    cut = await db.fetchval(
                        "SELECT q FROM messages WHERE room = $1 AND epoch = $2 "
                        "ORDER BY q DESC LIMIT 1 OFFSET $3",
                        room,
                        epoch,
                        keep_messages - 1,
                    )
                    if cut is not None:
                        gone += _count(
                            await db.execute(
                                "DELETE FROM messages WHERE room = $1 AND epoch = $2 AND q < $3",
                                room,
                                epoch,
                                cut,
                            )
                        )
                if before_ts > 0:
                    gone += _count(
                        await db.execute(
                            "DELETE FROM messages WHERE room = $1 AND ts < $2", room, before_ts
                        )
                    )
            return gone

        async with self._write_turn:
            return await self._run(work)

    async def purge(self, room: str) -> int:
        async def work(db: Any) -> int:
            return _count(await db.execute("DELETE FROM messages WHERE room = $1", room))

        async with self._write_turn:
            return await self._run(work)

    # -- reading -----------------------------------------------------------------------
    async def rooms(self) -> dict[str, RoomRecord]:
        async def work(db: Any) -> dict[str, RoomRecord]:
            rows = await db.fetch(_ROOMS)
            return {
                row["room"]: RoomRecord(
                    row["epoch"], row["last"] or 0, row["keep_messages"], row["keep_days"]
                )
                for row in rows
            }

        return await self._run(work)

    async def page(
        self, room: str, epoch: str, before: int | None, after: int | None, limit: int
    ) -> list[StoredMessage]:
        if limit <= 0:
            return []

        async def work(db: Any) -> list[StoredMessage]:
            if after is not None:
                rows = await db.fetch(_PAGE_AFTER, room, epoch, after, limit)
            else:
                if before is None:
                    rows = await db.fetch(_PAGE_LAST, room, epoch, limit)
                else:
                    rows = await db.fetch(_PAGE_BEFORE, room, epoch, before, limit)
                rows.reverse()
            return [StoredMessage(room, *row) for row in rows]

        return await self._run(work)

    async def message(self, room: str, epoch: str, seq: int) -> StoredMessage | None:
        async def work(db: Any) -> StoredMessage | None:
            row = await db.fetchrow(_MESSAGE, room, epoch, seq)
            return None if row is None else StoredMessage(room, *row)

        return await self._run(work)

    async def markers(self, user: str) -> dict[str, tuple[str, int]]:
        async def work(db: Any) -> dict[str, tuple[str, int]]:
            rows = await db.fetch('SELECT room, epoch, q FROM markers WHERE "user" = $1', user)
            return {row["room"]: (row["epoch"], row["q"]) for row in rows}

        return await self._run(work)

    async def latest(self, rooms: Sequence[tuple[str, str]]) -> dict[str, int]:
        async def work(db: Any) -> dict[str, int]:
            found = await db.fetch(
                "SELECT w.room, (SELECT max(q) FROM messages m"
                " WHERE m.room = w.room AND m.epoch = w.epoch) AS last"
                " FROM unnest($1::text[], $2::text[]) AS w(room, epoch)",
                [room for room, _ in rooms],
                [epoch for _, epoch in rooms],
            )
            return {row["room"]: row["last"] for row in found if row["last"] is not None}

        return await self._run(work)

    async def size(self) -> int:
        async def work(db: Any) -> int:
            return cast(int, await db.fetchval(_SIZE) or 0)

        return await self._run(work)
