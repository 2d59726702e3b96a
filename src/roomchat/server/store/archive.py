"""The server's side of the message store: every message is kept, and delivery never
waits for it (docs/architecture.md, "History that lasts").

- The hot path hands a room's run of messages over as one tuple (:meth:`Archive.run`);
  edits, deletions, read markers and retention settings come the same way. Nothing is
  decoded or written there.
- One writer task takes everything handed over since its last write and stores it as
  one :class:`~roomchat.server.core.ports.StoreBatch` (one transaction): the writes are
  batched per turn, and the store's I/O runs off the event loop (a thread for SQLite,
  the driver's own for PostgreSQL).
- If the store is slow, full or down, delivery goes on. What is not yet written waits,
  in order, up to ``backlog`` messages (``--store-backlog``), counted in /metrics, and
  is written when the store is back. Past the bound new messages are not kept: counted
  and logged, never silently.
- Retention runs in the background: each room keeps its last ``keep_messages`` and
  those younger than ``keep_days`` (the server's flags, or the room's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Iterable

import msgspec

from roomchat.server.core.ports import (
    Done,
    MessageStore,
    RoomRecord,
    StoreBatch,
    StoredMessage,
    StoreError,
)
from roomchat.server.core.stats import Reading

__all__ = ["Archive", "new_epoch"]

log = logging.getLogger("roomchat.server.store")


class _Said(msgspec.Struct, gc=False, tag_field="_et", tag="user_message"):
    """What a row keeps of a ``user_message`` line (its room is the run's)."""

    user: str = msgspec.field(name="u")
    content: str = msgspec.field(name="c")


_decode_said = msgspec.json.Decoder(_Said).decode_lines
_DAY_MS = 86_400_000
#: The first retry after a failed write, and the longest wait between two.
_RETRY_FIRST = 0.05
_RETRY_MAX = 2.0
#: Most messages in one write (a backlog replayed after an outage goes in pieces).
_BATCH_MAX = 20_000
#: Runs decoded between two yields to the event loop (:func:`_decode`).
_DECODE_SLICE = 128
#: How long a page waits for what is being written before it reads.
_PAGE_WAIT = 2.0
#: Seconds the writer gathers hand-overs before a write (unless someone waits for it: a
#: page, an edit's lookup, the shutdown). Each transaction rewrites every B-tree page it
#: touches, so many turns per write cost far less per message: at the seed's 9,600
#: messages/s over 24 rooms, ~16 us of CPU per message when each turn is written
#: alone, ~3 us at 0.2 s (benchmarks/README.md, "The message store").
WRITE_EVERY = 0.2
#: While messages are being lost, at most one error line per this many seconds.
_LOG_LOSS_EVERY = 10.0

#: A run of messages as the hot path hands it over:
#: (room, epoch, first q, count, server time ms, the v1 lines).
Run = tuple[str, str, int, int, int, bytes]


def new_epoch() -> str:
    """An opaque, practically unique epoch for a room whose numbering (re)starts."""
    return secrets.token_hex(6)


class Archive:
    """What the server writes to and reads from its :class:`MessageStore`."""

    def __init__(
        self,
        store: MessageStore,
        *,
        backlog: int = 100_000,
        keep_messages: int = 0,
        keep_days: int = 0,
        sweep_every: float = 60.0,
        write_every: float = WRITE_EVERY,
    ) -> None:
        self.store = store
        self.write_every = write_every
        self.backlog = backlog
        self.keep_messages = keep_messages
        self.keep_days = keep_days
        self.sweep_every = sweep_every
        #: Rooms as the store had them at start, then as this server numbers them.
        self.records: dict[str, RoomRecord] = {}
        self._runs: list[Run] = []
        self._other = StoreBatch()
        self._pending = 0  # messages handed over, not yet taken by the writer
        self._retry: StoreBatch | None = None  # taken, its write failed: first next time
        self._retry_messages = 0
        self._writing = 0  # messages of the write in progress
        self._in_flight: StoreBatch | None = None  # the write in progress
        self._wake = asyncio.Event()
        self._urgent = asyncio.Event()  # someone waits for what is handed over: write now
        self._handed = 0  # generations: one per hand-over, and the last one written
        self._written_up_to = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._failing: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._questions: set[asyncio.Task[None]] = set()
        self._loss_logged: float | None = None  # when the last loss was logged
        # counters (/metrics)
        self.written = 0
        self.lost = 0
        self.failures = 0
        self.pruned = 0
        self.bytes = 0

    # -- starting and stopping ---------------------------------------------------------
    async def start(self) -> None:
        """Open the store and read its rooms; raises StoreError with a clear sentence."""
        await self.store.open()
        self.records = await self.store.rooms()
        with contextlib.suppress(StoreError):
            self.bytes = await self.store.size()
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="roomchat store writer"),
            asyncio.create_task(self._retention_loop(), name="roomchat store retention"),
        ]

    async def close(self, timeout: float = 5.0) -> None:
        """Write what is left (for at most ``timeout`` seconds), then close the store."""
        self._closing = True
        if self._tasks:
            with contextlib.suppress(TimeoutError, StoreError):
                await self.flushed(timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = self.unwritten
        if left:
            log.warning("message store: %d messages not written at shutdown", left)
        await self.store.close()

    # -- rooms ---------------------------------------------------------------------------
    def numbering(self, room: str) -> tuple[str, int]:
        """The epoch and last number ``room`` goes on from: the store's, or a new epoch
        (recorded) for a room it has never numbered."""
        record = self.records.get(room)
        if record is not None and record.epoch:
            return record.epoch, record.last
        epoch = new_epoch()
        self.records[room] = RoomRecord(
            epoch, 0, record.keep_messages if record else None, record.keep_days if record else None
        )
        self._other.epochs.append((room, epoch))
        self._handed_over()
        return epoch, 0

    def retention(self, room: str) -> tuple[int, int]:
        """Messages and days ``room`` keeps (0: no limit)."""
        record = self.records.get(room)
        if record is None:
            return self.keep_messages, self.keep_days
        return record.keep_messages or self.keep_messages, record.keep_days or self.keep_days

    # -- handing over (never blocks, never fails) ----------------------------------------
    def run(self, room: str, epoch: str, first: int, count: int, ts: int, event: bytes) -> None:
        """A room's run of ``count`` messages numbered from ``first`` (the hot path)."""
        if self._pending + self._retry_messages + self._writing + count > self.backlog:
            self._lose(count)
            return
        self._runs.append((room, epoch, first, count, ts, event))
        self._pending += count
        self._handed += 1
        self._wake.set()

    def edit(self, room: str, epoch: str, seq: int, content: str, ts: int) -> None:
        self._other.edits.append((room, epoch, seq, content, ts))
        self._handed_over()

    def delete(self, room: str, epoch: str, seq: int, ts: int) -> None:
        self._other.deletes.append((room, epoch, seq, ts))
        self._handed_over()

    def mark(self, user: str, room: str, epoch: str, seq: int) -> None:
        self._other.markers.append((user, room, epoch, seq))
        self._handed_over()

    def retain(self, room: str, messages: int | None, days: int | None) -> None:
        record = self.records.get(room) or RoomRecord("")
        self.records[room] = RoomRecord(record.epoch, record.last, messages, days)
        self._other.retention.append((room, messages, days))
        self._handed_over()

    def _handed_over(self) -> None:
        self._handed += 1
        self._wake.set()

    def _lose(self, count: int) -> None:
        self.lost += count
        now = time.monotonic()
        if self._loss_logged is None or now - self._loss_logged >= _LOG_LOSS_EVERY:
            self._loss_logged = now
            log.error(
                "message store: %d messages waiting to be written (--store-backlog %d); "
                "%d not kept so far (%s)",
                self.unwritten,
                self.backlog,
                self.lost,
                self._failing or "the store is behind",
            )

    @property
    def unwritten(self) -> int:
        """Messages handed over and not yet written (the write in progress included)."""
        return self._pending + self._retry_messages + self._writing

    # -- writing -------------------------------------------------------------------------
    def _take(self) -> tuple[StoreBatch, int, list[Run]] | None:
        """The next write: what failed last time, then what was handed over since (at
        most _BATCH_MAX messages of it); how many messages it holds; and the runs taken,
        whose rows the batch does not hold yet (:func:`_decode` adds them)."""
        batch, messages = self._retry, self._retry_messages
        self._retry, self._retry_messages = None, 0
        if batch is None:
            batch = StoreBatch()
        chosen: list[Run] = []
        if self._runs and messages < _BATCH_MAX:
            runs, taken = self._runs, 0
            cut = len(runs)
            for index, run in enumerate(runs):
                taken += run[3]
                if messages + taken >= _BATCH_MAX:
                    cut = index + 1
                    break
            chosen, self._runs = runs[:cut], runs[cut:]
            self._pending -= taken
            messages += taken
        if len(self._other):
            batch.extend(self._other)
            self._other = StoreBatch()
        if not len(batch) and not chosen:
            return None
        return batch, messages, chosen

    async def _gather(self) -> None:
        """Let hand-overs gather for ``write_every`` seconds, unless someone waits."""
        if self.write_every <= 0 or self._urgent.is_set() or self._closing:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.write_every):
                await self._urgent.wait()

    async def _write_loop(self) -> None:
        delay = _RETRY_FIRST
        while True:
            await self._wake.wait()
            await self._gather()
            self._wake.clear()
            self._urgent.clear()
            while True:
                handed = self._handed
                taken = self._take()
                if taken is None:
                    self._written(handed)
                    break
                batch, messages, runs = taken
                whole = not self._runs and not len(self._other)  # all handed up to `handed`
                self._writing, self._in_flight = messages, batch
                await _decode(runs, batch.messages)
                try:
                    await self.store.write(batch)
                except StoreError as exc:
                    self._writing, self._in_flight = 0, None
                    self._retry, self._retry_messages = batch, messages
                    self._failed(str(exc))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
                    continue
                delay = _RETRY_FIRST
                self._writing, self._in_flight = 0, None
                self.written += messages
                if self._failing is not None:
                    log.warning(
                        "message store: writing again (%d messages still waiting)",
                        self.unwritten,
                    )
                    self._failing = None
                if whole:
                    self._written(handed)
                if not (self._urgent.is_set() or self._closing or self._pending >= _BATCH_MAX):
                    # What was handed over during this write waits for the next gathering:
                    # writing it at once would make each write as small as the last was slow
                    # (at the seed, ~90 transactions/s instead of 5).
                    break

    def _failed(self, why: str) -> None:
        self.failures += 1
        if why != self._failing:
            log.error(
                "message store: cannot write (%s); %d messages waiting, delivery goes on",
                why,
                self.unwritten,
            )
            self._failing = why

    def _written(self, handed: int) -> None:
        self._written_up_to = max(self._written_up_to, handed)
        waiters, self._waiters = self._waiters, []
        for generation, future in waiters:
            if generation <= self._written_up_to:
                if not future.done():
                    future.set_result(None)
            else:
                self._waiters.append((generation, future))

    async def flushed(self, timeout: float) -> None:
        """Wait until everything handed over so far is written; TimeoutError if it is
        not within ``timeout`` seconds (the store is down or far behind)."""
        generation = self._handed
        if generation <= self._written_up_to:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((generation, future))
        self._wake.set()
        self._urgent.set()
        async with asyncio.timeout(timeout):
            await future

    # -- reading -------------------------------------------------------------------------
    async def page(
        self, room: str, epoch: str, before: int | None, after: int | None, limit: int
    ) -> list[StoredMessage]:
        """A page of the room's stored history, including what was handed over until
        now (StoreError if the store cannot answer)."""
        try:
            await self.flushed(_PAGE_WAIT)
        except TimeoutError:
            raise StoreError(self._failing or "the message store is behind") from None
        return await self.store.page(room, epoch, before, after, limit)

    async def message(self, room: str, epoch: str, seq: int) -> StoredMessage | None:
        try:
            await self.flushed(_PAGE_WAIT)
        except TimeoutError:
            raise StoreError(self._failing or "the message store is behind") from None
        return await self.store.message(room, epoch, seq)

    async def markers(self, user: str) -> dict[str, tuple[str, int]]:
        """The user's read markers: the store's, with the moves not written yet on top
        (taken before the store is read: a move written meanwhile is in one or both)."""
        pending = [
            marker
            for batch in (self._retry, self._in_flight, self._other)
            if batch is not None
            for marker in batch.markers
            if marker[0] == user
        ]
        found = await self.store.markers(user)
        for _, room, epoch, seq in pending:  # as the store moves them: forward, or anew
            held = found.get(room)
            if held is None or held[0] != epoch or seq > held[1]:
                found[room] = (epoch, seq)
        return found

    async def reading(self, user: str) -> dict[str, tuple[str, int, int]]:
        """For each room the user has a marker in: (its epoch, the q read, the highest q
        stored in that epoch, 0 if none): what the unread counts at a login come from
        on an instance that may not follow the room (Redis)."""
        markers = await self.markers(user)
        latest = await self.store.latest([(room, epoch) for room, (epoch, _) in markers.items()])
        return {room: (epoch, read, latest.get(room, 0)) for room, (epoch, read) in markers.items()}

    async def purge(self, room: str) -> int:
        """Delete every stored message of ``room`` (after what is being written)."""
        with contextlib.suppress(TimeoutError):
            await self.flushed(_PAGE_WAIT)
        return await self.store.purge(room)

    # -- the same questions, answered through a callback (ports.Archiving) ---------------
    def _answer(self, question: Awaitable[object], done: Done) -> None:
        async def ask() -> None:
            try:
                result = await question
            except StoreError as exc:
                done(exc)
            else:
                done(result)

        task = asyncio.get_running_loop().create_task(ask())
        self._questions.add(task)
        task.add_done_callback(self._questions.discard)

    def ask_page(
        self,
        room: str,
        epoch: str,
        before: int | None,
        after: int | None,
        limit: int,
        done: Done,
    ) -> None:
        self._answer(self.page(room, epoch, before, after, limit), done)

    def ask_message(self, room: str, epoch: str, seq: int, done: Done) -> None:
        self._answer(self.message(room, epoch, seq), done)

    def ask_reading(self, user: str, done: Done) -> None:
        self._answer(self.reading(user), done)

    def ask_purge(self, room: str, done: Done) -> None:
        self._answer(self.purge(room), done)

    # -- retention -------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Apply every room's retention once; how many messages went."""
        gone = 0
        await self._refresh_retention()
        now = int(time.time() * 1000)
        for room, record in list(self.records.items()):
            messages, days = self.retention(room)
            if not record.epoch or (not messages and not days):
                continue
            before = now - days * _DAY_MS if days else 0
            gone += await self.store.prune(room, record.epoch, messages, before)
        self.pruned += gone
        self.bytes = await self.store.size()
        return gone

    async def _refresh_retention(self) -> None:
        """Take the rooms' retention overrides from the store (another instance sharing
        it may have set one), once what was handed over here is written."""
        with contextlib.suppress(TimeoutError):
            await self.flushed(_PAGE_WAIT)
        for room, stored in (await self.store.rooms()).items():
            record = self.records.get(room)
            if record is None:
                continue
            if (record.keep_messages, record.keep_days) != (stored.keep_messages, stored.keep_days):
                self.records[room] = RoomRecord(
                    record.epoch, record.last, stored.keep_messages, stored.keep_days
                )

    async def _retention_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_every)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("message store: retention skipped this time: %s", exc)

    # -- /metrics ------------------------------------------------------------------------
    def readings(self) -> Iterable[Reading]:
        return (
            Reading(
                "store_backlog",
                "gauge",
                "Messages waiting to be written to the store.",
                self.unwritten,
            ),
            Reading("store_written", "counter", "Messages written to the store.", self.written),
            Reading(
                "store_lost",
                "counter",
                "Messages not kept: the store was down or behind past --store-backlog.",
                self.lost,
            ),
            Reading(
                "store_failures",
                "counter",
                "Writes to the store that failed (retried).",
                self.failures,
            ),
            Reading("store_pruned", "counter", "Messages deleted by retention.", self.pruned),
            Reading("store_bytes", "gauge", "Size of the store on disk.", self.bytes),
        )


async def _decode(runs: list[Run], rows: list[tuple[str, str, int, int, str, str]]) -> None:
    """Add the rows of ``runs`` to ``rows``, yielding to the loop between slices: a
    gathering's ~2,000 messages decoded at once would hold it for 1-2 ms (the seed's p99)."""
    for start in range(0, len(runs), _DECODE_SLICE):
        if start:
            await asyncio.sleep(0)
        rows += _rows(runs[start : start + _DECODE_SLICE])


def _rows(runs: list[Run]) -> list[tuple[str, str, int, int, str, str]]:
    """The message rows of runs of v1 ``user_message`` lines (decoded here, off the hot
    path): every run's lines in one decoder call; if any is unreadable, run by run,
    and a run that cannot be read (or whose count is not its lines) is logged and left
    out."""
    said = _said(b"".join([run[5] for run in runs]))
    if said is not None and len(said) == sum([run[3] for run in runs]):
        return _numbered(runs, said)
    rows: list[tuple[str, str, int, int, str, str]] = []
    for run in runs:
        said = _said(run[5])
        if said is None or len(said) != run[3]:
            log.error("message store: a run of room %r could not be read; not kept", run[0])
        else:
            rows += _numbered([run], said)
    return rows


def _said(lines: bytes) -> list[_Said] | None:
    try:
        return _decode_said(lines)
    except msgspec.DecodeError:
        return None


def _numbered(runs: list[Run], said: list[_Said]) -> list[tuple[str, str, int, int, str, str]]:
    """The rows of ``runs``, whose messages, in order, are ``said``."""
    rows: list[tuple[str, str, int, int, str, str]] = []
    append = rows.append
    at = 0
    for room, epoch, first, count, ts, _ in runs:
        for seq, message in enumerate(said[at : at + count], first):
            append((room, epoch, seq, ts, message.user, message.content))
        at += count
    return rows
