"""``--store memory://``: messages kept in this process only, gone at exit (the
behaviour before there was a store). Every room's epoch is new at each start, so a
client that comes back after a restart is told the numbering restarted."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from roomchat.server.core.ports import RoomRecord, StoreBatch, StoredMessage

__all__ = ["MemoryStore"]


#: A stored message: (ts, user, content or None once deleted, edited ts or None). A plain
#: tuple of strings and numbers, which the garbage collector stops tracking: a room's
#: rows are many, and objects it tracks would each be visited by every full collection
#: (milliseconds at a hundred thousand rows, on the loop).
_Row = tuple[int, str, "str | None", "int | None"]


@dataclass(slots=True)
class _Room:
    epoch: str
    keep_messages: int | None = None
    keep_days: int | None = None
    #: q -> its row; the numbers in ``order``, ascending.
    rows: dict[int, _Row] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)


class MemoryStore:
    """The store in a dict (tests, and those who want no disk)."""

    description = "memory (not kept across restarts)"
    durable = False

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._markers: dict[str, dict[str, tuple[str, int]]] = {}

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def rooms(self) -> dict[str, RoomRecord]:
        return {
            name: RoomRecord(
                room.epoch, room.order[-1] if room.order else 0, room.keep_messages, room.keep_days
            )
            for name, room in self._rooms.items()
        }

    def _room(self, name: str, epoch: str) -> _Room | None:
        room = self._rooms.get(name)
        return room if room is not None and room.epoch == epoch else None

    async def write(self, batch: StoreBatch) -> None:
        rooms = self._rooms
        for name, epoch in batch.epochs:
            known = rooms.get(name)
            if known is None or known.epoch != epoch:
                rooms[name] = _Room(
                    epoch,
                    known.keep_messages if known else None,
                    known.keep_days if known else None,
                )
        for name, epoch, seq, ts, user, content in batch.messages:
            room = rooms.get(name)
            if room is None:
                room = rooms[name] = _Room(epoch)
            if room.epoch != epoch or seq in room.rows:
                continue
            room.rows[seq] = (ts, user, content, None)
            if not room.order or seq > room.order[-1]:
                room.order.append(seq)
            else:
                bisect.insort(room.order, seq)
        for name, epoch, seq, content, ts in batch.edits:
            found = self._room(name, epoch)
            row = found.rows.get(seq) if found else None
            if found and row and row[2] is not None:
                found.rows[seq] = (row[0], row[1], content, ts)
        for name, epoch, seq, ts in batch.deletes:
            found = self._room(name, epoch)
            row = found.rows.get(seq) if found else None
            if found and row:
                found.rows[seq] = (row[0], row[1], None, ts)
        for user, name, epoch, seq in batch.markers:
            mine = self._markers.setdefault(user, {})
            known_marker = mine.get(name)
            if known_marker is None or known_marker[0] != epoch or known_marker[1] < seq:
                mine[name] = (epoch, seq)
        for name, keep_messages, keep_days in batch.retention:
            room = rooms.get(name)
            if room is not None:
                room.keep_messages, room.keep_days = keep_messages, keep_days

    @staticmethod
    def _message(name: str, seq: int, row: _Row) -> StoredMessage:
        return StoredMessage(name, seq, *row)

    async def page(
        self, room: str, epoch: str, before: int | None, after: int | None, limit: int
    ) -> list[StoredMessage]:
        found = self._room(room, epoch)
        if found is None:
            return []
        order = found.order
        if after is not None:
            start = bisect.bisect_right(order, after)
            chosen = order[start : start + limit]
        else:
            end = len(order) if before is None else bisect.bisect_left(order, before)
            chosen = order[max(0, end - limit) : end]
        return [self._message(room, seq, found.rows[seq]) for seq in chosen]

    async def message(self, room: str, epoch: str, seq: int) -> StoredMessage | None:
        found = self._room(room, epoch)
        row = found.rows.get(seq) if found else None
        return None if row is None else self._message(room, seq, row)

    async def markers(self, user: str) -> dict[str, tuple[str, int]]:
        return dict(self._markers.get(user, {}))

    async def latest(self, rooms: Sequence[tuple[str, str]]) -> dict[str, int]:
        out = {}
        for name, epoch in rooms:
            room = self._room(name, epoch)
            if room is not None and room.order:
                out[name] = room.order[-1]
        return out

    async def prune(self, room: str, epoch: str, keep_messages: int, before_ts: int) -> int:
        found = self._room(room, epoch)
        if found is None:
            return 0
        order, rows = found.order, found.rows
        gone = set(order[: len(order) - keep_messages]) if keep_messages > 0 else set()
        if before_ts > 0:
            gone.update(seq for seq in order if rows[seq][0] < before_ts)
        if gone:
            found.order = [seq for seq in order if seq not in gone]
            for seq in gone:
                del rows[seq]
        return len(gone)

    async def purge(self, room: str) -> int:
        found = self._rooms.get(room)
        if found is None:
            return 0
        count = len(found.order)
        found.rows.clear()
        found.order.clear()
        return count

    async def size(self) -> int:
        return 0
