"""SQLiteStore (the default store) against the same promises as PostgresStore: the
contract tests of test_postgres.py that need no PostgreSQL, run here on a real SQLite
file; then what is SQLite's own (the time's order as the prune's index)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomchat.server.core.ports import RoomRecord, StoreBatch, StoreError
from roomchat.server.store.sqlite import WRITER_NICENESS, SQLiteStore
from tests.server.store.test_postgres import (  # noqa: F401  (collected here too)
    put,
    rows,
    test_edits_and_deletes,
    test_epochs_and_rooms,
    test_latest_is_the_highest_stored_number_of_each_epoch,
    test_markers_only_move_forward_within_an_epoch,
    test_one_batch_in_order,
    test_prune_by_age_takes_older_epochs_too,
    test_prune_keeps_the_last_messages,
    test_purge_takes_every_epoch_of_the_room,
    test_retention_settings,
    test_rows_already_stored_are_left_as_they_are,
    test_size_grows_with_what_is_stored,
    test_write_then_page_and_message,
)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "chat.sqlite3")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_batch_is_all_or_nothing(store: SQLiteStore) -> None:
    bad = StoreBatch(
        epochs=[("lobby", "e1")],
        messages=rows("lobby", "e1", 1, 5),
        markers=[("ann", "lobby", "e1", 2**70)],  # beyond INTEGER: the last part fails
    )
    with pytest.raises(StoreError, match=r"SQLite .*chat\.sqlite3: .*too large"):
        await store.write(bad)
    assert await store.rooms() == {}
    assert await store.page("lobby", "e1", None, None, 10) == []
    assert await store.markers("ann") == {}
    await put(store, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 5))  # still fine
    assert (await store.rooms())["lobby"] == RoomRecord("e1", 5)


async def test_prune_by_age_never_takes_a_message_young_enough(store: SQLiteStore) -> None:
    """Instances' clocks may differ a little (Redis): the times within an epoch are then
    not quite in order; the prune cuts at the first young one and keeps what follows."""
    times = [100, 101, 130, 102, 131, 132]  # q 1..6; 4 is "older" than 3
    await put(
        store,
        epochs=[("lobby", "e1")],
        messages=[("lobby", "e1", q, ts, "ann", f"m{q}") for q, ts in enumerate(times, 1)],
    )
    assert await store.prune("lobby", "e1", 0, 120) == 2
    assert [m.seq for m in await store.page("lobby", "e1", None, None, 10)] == [3, 4, 5, 6]


async def test_a_file_from_an_older_schema_loses_its_time_index(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    first = SQLiteStore(path)
    await first.open()
    await first.close()
    with sqlite3.connect(path) as db:
        db.execute("CREATE INDEX messages_by_time ON messages (room, ts)")
    again = SQLiteStore(path)
    await again.open()
    await again.close()
    with sqlite3.connect(path) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "messages_by_time" not in names


def _priority() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


async def test_writes_run_below_the_loop_and_reads_beside_it(store: SQLiteStore) -> None:
    """Sharing a core, the loop's deliveries come before the writer's inserts (a store
    behind keeps its backlog and counts the rest); a history page is a user waiting, so
    the reader keeps the loop's priority."""
    await put(store, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 3))
    loop = asyncio.get_running_loop()
    writer = await loop.run_in_executor(store._writer, _priority)
    reader = await loop.run_in_executor(store._reader, _priority)
    assert writer == min(_priority() + WRITER_NICENESS, 19)
    assert reader == _priority()
    assert [m.seq for m in await store.page("lobby", "e1", None, None, 10)] == [1, 2, 3]
