"""PostgresStore against a real PostgreSQL (conftest.py starts one): what MessageStore
promises, transactions, and outages (the server killed, then back)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest

from roomchat.server.core.ports import RoomRecord, StoreBatch, StoredMessage, StoreError
from roomchat.server.store.postgres import PostgresStore
from tests.server.store.postgres_server import PostgresServer, free_port


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(postgres_url)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


def rows(
    room: str, epoch: str, first: int, count: int, ts: int = 1000
) -> list[tuple[str, str, int, int, str, str]]:
    return [
        (room, epoch, q, ts + q, f"user{q % 3}", f"message {q}")
        for q in range(first, first + count)
    ]


async def put(store: PostgresStore, **parts: Any) -> None:
    await store.write(StoreBatch(**parts))


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# -- the basics ---------------------------------------------------------------------------


async def test_description_has_no_password_and_is_durable() -> None:
    store = PostgresStore(
        "postgresql://chat:s3cr%40t@db.example:6543/rooms?password=x&sslmode=require"
    )
    assert store.durable is True
    assert "s3cr" not in store.description and "password" not in store.description
    assert store.description == "postgresql postgresql://chat@db.example:6543/rooms?sslmode=require"


async def test_open_twice_and_two_stores_share_the_tables(postgres_url: str) -> None:
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    await asyncio.gather(first.open(), second.open())
    await first.open()  # already open: nothing happens
    try:
        await put(first, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 2))
        assert await second.rooms() == {"lobby": RoomRecord("e1", 2)}
    finally:
        await first.close()
        await second.close()
    await first.close()  # closed twice: nothing happens


async def test_write_then_page_and_message(store: PostgresStore) -> None:
    await put(store, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 10))
    page = await store.page("lobby", "e1", None, None, 3)
    assert [m.seq for m in page] == [8, 9, 10]
    assert page[0] == StoredMessage("lobby", 8, 1008, "user2", "message 8", None)
    assert [m.seq for m in await store.page("lobby", "e1", 8, None, 3)] == [5, 6, 7]
    assert [m.seq for m in await store.page("lobby", "e1", 3, None, 5)] == [1, 2]
    assert [m.seq for m in await store.page("lobby", "e1", None, 4, 3)] == [5, 6, 7]
    assert [m.seq for m in await store.page("lobby", "e1", None, 8, 5)] == [9, 10]
    assert await store.page("lobby", "e1", None, 10, 5) == []
    assert await store.page("lobby", "e1", None, None, 0) == []
    assert await store.page("lobby", "other", None, None, 5) == []
    assert await store.page("nowhere", "e1", None, None, 5) == []
    assert await store.message("lobby", "e1", 4) == StoredMessage(
        "lobby", 4, 1004, "user1", "message 4"
    )
    assert await store.message("lobby", "e1", 11) is None
    assert await store.message("lobby", "e2", 4) is None


async def test_rows_already_stored_are_left_as_they_are(store: PostgresStore) -> None:
    await put(store, messages=[("lobby", "e1", 1, 10, "ann", "first")])
    again = [("lobby", "e1", 1, 99, "bob", "changed"), ("lobby", "e1", 2, 11, "ann", "second")]
    await put(store, messages=[*again, ("lobby", "e1", 2, 12, "bob", "twice in one batch")])
    assert await store.page("lobby", "e1", None, None, 10) == [
        StoredMessage("lobby", 1, 10, "ann", "first"),
        StoredMessage("lobby", 2, 11, "ann", "second"),
    ]


async def test_text_postgresql_cannot_hold_is_stored_anyway(store: PostgresStore) -> None:
    await put(store, messages=[("lobby", "e1", 1, 10, "ann", "a\x00b ✓ 😀")])
    found = await store.message("lobby", "e1", 1)
    assert found is not None and found.content == "a\ufffdb ✓ 😀"


# -- edits, deletions, epochs --------------------------------------------------------------


async def test_edits_and_deletes(store: PostgresStore) -> None:
    await put(store, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 3))
    await put(
        store,
        edits=[("lobby", "e1", 1, "fixed", 2000), ("lobby", "e1", 1, "fixed again", 2001)],
        deletes=[("lobby", "e1", 2, 2002)],
    )
    assert await store.page("lobby", "e1", None, None, 10) == [
        StoredMessage("lobby", 1, 1001, "user1", "fixed again", 2001),
        StoredMessage("lobby", 2, 1002, "user2", None, 2002),
        StoredMessage("lobby", 3, 1003, "user0", "message 3"),
    ]
    # A deleted message stays deleted; an edit of a missing one changes nothing.
    await put(store, edits=[("lobby", "e1", 2, "back?", 3000), ("lobby", "e1", 9, "x", 3000)])
    assert await store.message("lobby", "e1", 2) == StoredMessage(
        "lobby", 2, 1002, "user2", None, 2002
    )
    assert await store.message("lobby", "e1", 9) is None
    # Edits come before deletions in one batch, whatever their times.
    await put(store, deletes=[("lobby", "e1", 3, 4000)], edits=[("lobby", "e1", 3, "late", 4001)])
    assert await store.message("lobby", "e1", 3) == StoredMessage(
        "lobby", 3, 1003, "user0", None, 4000
    )


async def test_epochs_and_rooms(store: PostgresStore) -> None:
    assert await store.rooms() == {}
    await put(
        store,
        epochs=[("lobby", "e1"), ("rust", "r1")],
        messages=rows("lobby", "e1", 1, 5) + rows("stray", "s1", 1, 2),
    )
    assert await store.rooms() == {"lobby": RoomRecord("e1", 5), "rust": RoomRecord("r1", 0)}
    # The numbering restarts: the old epoch's messages stay, but no longer count.
    await put(store, epochs=[("lobby", "e2")], messages=rows("lobby", "e2", 1, 2))
    assert (await store.rooms())["lobby"] == RoomRecord("e2", 2)
    assert [m.seq for m in await store.page("lobby", "e2", None, None, 10)] == [1, 2]
    assert len(await store.page("lobby", "e1", None, None, 10)) == 5
    # Twice in one batch: the last wins.
    await put(store, epochs=[("lobby", "e3"), ("lobby", "e4")])
    assert (await store.rooms())["lobby"] == RoomRecord("e4", 0)


# -- markers and retention -----------------------------------------------------------------


async def test_markers_only_move_forward_within_an_epoch(store: PostgresStore) -> None:
    assert await store.markers("ann") == {}
    await put(store, markers=[("ann", "lobby", "e1", 5), ("ann", "rust", "r1", 2)])
    await put(store, markers=[("ann", "lobby", "e1", 3), ("bob", "lobby", "e1", 1)])
    assert await store.markers("ann") == {"lobby": ("e1", 5), "rust": ("r1", 2)}
    assert await store.markers("bob") == {"lobby": ("e1", 1)}
    # Another epoch replaces the marker, even at a lower number; in one batch, in order.
    await put(
        store,
        markers=[("ann", "lobby", "e2", 1), ("ann", "lobby", "e2", 4), ("ann", "lobby", "e2", 2)],
    )
    assert await store.markers("ann") == {"lobby": ("e2", 4), "rust": ("r1", 2)}


async def test_retention_settings(store: PostgresStore) -> None:
    await put(store, epochs=[("lobby", "e1")], retention=[("lobby", 100, 7)])
    assert (await store.rooms())["lobby"] == RoomRecord("e1", 0, 100, 7)
    await put(store, retention=[("lobby", None, 30)])
    assert (await store.rooms())["lobby"] == RoomRecord("e1", 0, None, 30)
    await put(store, epochs=[("lobby", "e2")])  # a new epoch keeps the room's retention
    assert (await store.rooms())["lobby"] == RoomRecord("e2", 0, None, 30)
    await put(store, retention=[("lobby", None, None)])
    assert (await store.rooms())["lobby"] == RoomRecord("e2", 0)


async def test_one_batch_in_order(store: PostgresStore) -> None:
    """Every part of a batch at once: a room's first epoch, its messages, an edit and a
    deletion of them, a marker and a retention setting."""
    await put(
        store,
        epochs=[("new", "n1")],
        messages=rows("new", "n1", 1, 2),
        edits=[("new", "n1", 1, "edited", 5000)],
        deletes=[("new", "n1", 2, 5001)],
        markers=[("ann", "new", "n1", 2)],
        retention=[("new", 10, None)],
    )
    assert await store.rooms() == {"new": RoomRecord("n1", 2, 10, None)}
    assert [(m.content, m.edited) for m in await store.page("new", "n1", None, None, 5)] == [
        ("edited", 5000),
        (None, 5001),
    ]
    assert await store.markers("ann") == {"new": ("n1", 2)}


async def test_a_batch_is_all_or_nothing(store: PostgresStore) -> None:
    bad = StoreBatch(
        epochs=[("lobby", "e1")],
        messages=rows("lobby", "e1", 1, 5),
        markers=[("ann", "lobby", "e1", 2**70)],  # beyond BIGINT: the last part fails
    )
    with pytest.raises(StoreError, match=r"PostgreSQL at 127\.0\.0\.1"):
        await store.write(bad)
    assert await store.rooms() == {}
    assert await store.page("lobby", "e1", None, None, 10) == []
    assert await store.markers("ann") == {}
    await put(store, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 5))  # still fine
    assert (await store.rooms())["lobby"] == RoomRecord("e1", 5)


# -- prune, purge, size ---------------------------------------------------------------------


async def test_prune_keeps_the_last_messages(store: PostgresStore) -> None:
    await put(store, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 10))
    assert await store.prune("lobby", "e1", 4, 0) == 6
    assert [m.seq for m in await store.page("lobby", "e1", None, None, 20)] == [7, 8, 9, 10]
    assert await store.prune("lobby", "e1", 4, 0) == 0
    assert await store.prune("lobby", "e1", 0, 0) == 0  # no limit at all


async def test_prune_by_age_takes_older_epochs_too(store: PostgresStore) -> None:
    await put(
        store,
        epochs=[("lobby", "e2")],
        messages=rows("lobby", "e1", 1, 5, ts=0)  # ts 1..5, an older epoch
        + rows("lobby", "e2", 1, 5, ts=100)  # ts 101..105
        + rows("other", "o1", 1, 5, ts=0),
    )
    assert await store.prune("lobby", "e2", 0, 103) == 7  # e1's five, e2's 1 and 2
    assert [m.seq for m in await store.page("lobby", "e2", None, None, 20)] == [3, 4, 5]
    assert await store.page("lobby", "e1", None, None, 20) == []
    assert len(await store.page("other", "o1", None, None, 20)) == 5
    # Both limits at once: the count is of the messages gone, each once.
    await put(store, messages=rows("lobby", "e2", 6, 5, ts=100))  # ts 106..110
    assert await store.prune("lobby", "e2", 3, 107) == 5  # 3..7 by count; none left by age
    assert [m.seq for m in await store.page("lobby", "e2", None, None, 20)] == [8, 9, 10]


async def test_purge_takes_every_epoch_of_the_room(store: PostgresStore) -> None:
    await put(
        store,
        epochs=[("lobby", "e2")],
        messages=rows("lobby", "e1", 1, 3) + rows("lobby", "e2", 1, 4) + rows("rust", "r", 1, 2),
        markers=[("ann", "lobby", "e2", 4)],
    )
    assert await store.purge("lobby") == 7
    assert await store.purge("lobby") == 0
    assert await store.rooms() == {"lobby": RoomRecord("e2", 0)}
    assert len(await store.page("rust", "r", None, None, 10)) == 2
    assert await store.markers("ann") == {"lobby": ("e2", 4)}


async def test_size_grows_with_what_is_stored(store: PostgresStore) -> None:
    empty = await store.size()
    assert empty > 0
    for first in range(1, 5001, 500):
        await put(store, messages=rows("lobby", "e1", first, 500))
    assert await store.size() > empty


# -- connections ------------------------------------------------------------------------------


async def test_open_says_clearly_when_nothing_listens() -> None:
    port = free_port()
    store = PostgresStore(f"postgresql://roomchat:hunter2@127.0.0.1:{port}/chat")
    with pytest.raises(StoreError) as caught:
        await store.open()
    message = str(caught.value)
    assert message.startswith(f"cannot reach PostgreSQL at 127.0.0.1:{port}/chat: ")
    assert "refused" in message.lower()
    assert "hunter2" not in message
    with pytest.raises(StoreError, match="not open"):
        await store.rooms()


async def test_open_says_clearly_when_the_url_is_wrong() -> None:
    store = PostgresStore("postgresql://roomchat:hunter2@127.0.0.1:notaport/chat")
    with pytest.raises(StoreError) as caught:
        await store.open()
    assert str(caught.value).startswith(
        "cannot use PostgreSQL URL postgresql://roomchat@127.0.0.1:notaport/chat: "
    )
    assert "hunter2" not in str(caught.value)


async def test_open_says_clearly_when_the_database_is_missing(
    postgres_server: PostgresServer,
) -> None:
    store = PostgresStore(postgres_server.url("no_such_database"))
    with pytest.raises(StoreError, match=r"cannot reach PostgreSQL at .*no_such_database.*exist"):
        await store.open()


async def test_a_page_does_not_wait_behind_a_write(store: PostgresStore, postgres_url: str) -> None:
    await put(store, messages=rows("lobby", "e1", 1, 3))
    other = await asyncpg.connect(postgres_url)
    try:
        # EXCLUSIVE blocks every write to the table, not reads.
        blocker = other.transaction()
        await blocker.start()
        await other.execute("LOCK TABLE messages IN EXCLUSIVE MODE")
        writing = asyncio.create_task(put(store, messages=rows("lobby", "e1", 4, 3)))

        async def write_waits() -> bool:
            waiting = await other.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            )
            return bool(waiting)

        await eventually(write_waits, "the write to wait for the lock")
        page = await asyncio.wait_for(store.page("lobby", "e1", None, None, 10), 10)
        assert [m.seq for m in page] == [1, 2, 3]
        assert not writing.done()
        await blocker.rollback()
        await asyncio.wait_for(writing, 10)
    finally:
        await other.close()
    assert [m.seq for m in await store.page("lobby", "e1", None, None, 10)] == [1, 2, 3, 4, 5, 6]


async def test_survives_postgresql_killed_and_restarted(own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("chat")
    store = PostgresStore(url)
    await store.open()
    try:
        await put(store, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 3))
        # Both pooled connections have been used and are idle when the server dies.
        await asyncio.gather(store.rooms(), store.page("lobby", "e1", None, None, 3))

        await asyncio.to_thread(own_postgres.kill)
        where = f"127.0.0.1:{own_postgres.port}/chat"
        with pytest.raises(StoreError, match=f"PostgreSQL at {where}"):
            await put(store, messages=rows("lobby", "e1", 4, 3))
        with pytest.raises(StoreError, match=f"PostgreSQL at {where}"):
            await store.page("lobby", "e1", None, None, 10)
        with pytest.raises(StoreError, match="refused"):
            await store.markers("ann")

        await asyncio.to_thread(own_postgres.start)
        # The very next calls reconnect: the batch that failed can be written again.
        await put(store, messages=rows("lobby", "e1", 4, 3))
        page = await store.page("lobby", "e1", None, None, 10)
        assert [m.seq for m in page] == [1, 2, 3, 4, 5, 6]
        assert await store.rooms() == {"lobby": RoomRecord("e1", 6)}
        await asyncio.gather(*(store.message("lobby", "e1", q) for q in range(1, 7)))
    finally:
        await store.close()


async def test_open_succeeds_once_postgresql_is_up(own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("chat")
    await asyncio.to_thread(own_postgres.stop)
    store = PostgresStore(url)
    with pytest.raises(StoreError, match="cannot reach PostgreSQL"):
        await store.open()
    await asyncio.to_thread(own_postgres.start)
    await store.open()
    try:
        await put(store, epochs=[("lobby", "e1")])
        assert await store.rooms() == {"lobby": RoomRecord("e1", 0)}
    finally:
        await store.close()


async def test_a_restart_while_idle_goes_unnoticed(own_postgres: PostgresServer) -> None:
    """PostgreSQL killed and back before the store noticed (the event loop did not run
    meanwhile): the pooled connections are stale, and the next calls still succeed."""
    store = PostgresStore(own_postgres.create_database("chat"))
    await store.open()
    try:
        await put(store, epochs=[("lobby", "e1")], messages=rows("lobby", "e1", 1, 3))
        own_postgres.kill()  # blocking on purpose: the connections' end goes unseen
        own_postgres.start()
        await put(store, messages=rows("lobby", "e1", 4, 3))
        rooms, markers = await asyncio.gather(store.rooms(), store.markers("ann"))
        assert (rooms, markers) == ({"lobby": RoomRecord("e1", 6)}, {})
    finally:
        await store.close()


async def test_latest_is_the_highest_stored_number_of_each_epoch(store: PostgresStore) -> None:
    await put(
        store,
        messages=rows("lobby", "e1", 1, 4) + rows("lobby", "e2", 1, 2) + rows("rust", "r", 1, 7),
    )
    found = await store.latest([("lobby", "e1"), ("rust", "r"), ("empty", "x")])
    assert found == {"lobby": 4, "rust": 7}
    assert await store.latest([("lobby", "e2")]) == {"lobby": 2}
    assert await store.latest([]) == {}
