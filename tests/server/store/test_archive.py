"""The archive between the rooms and the message store (server/store/archive.py):
delivery never waits for the store; what the store cannot take waits, bounded, counted,
and is written in order once it can; past the bound the loss is counted. Then the same
through the real server with a real SQLite on a full disk (a small tmpfs)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from roomchat.protocol import UserMessage, encode
from roomchat.server import ChatServer, ServerConfig
from roomchat.server.core.ports import StoreBatch, StoreError
from roomchat.server.store import open_store
from roomchat.server.store.archive import Archive
from roomchat.server.store.memory import MemoryStore
from roomchat.server.store.sqlite import FILE_NAME, SQLiteStore
from tests.helpers import until
from tests.server.test_community import peer

TIMEOUT = 10.0


class Flaky(MemoryStore):
    """The in-memory store, which refuses writes while ``down``."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.writes = 0

    async def write(self, batch: StoreBatch) -> None:
        if self.down:
            raise StoreError("the store is down (test)")
        self.writes += 1
        await super().write(batch)


def line(user: str, content: str) -> bytes:
    return encode(UserMessage("general", user, content))


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, Archive]]:
    store = Flaky()
    archive = Archive(store, backlog=50, sweep_every=3600)
    await archive.start()
    try:
        yield store, archive
    finally:
        store.down = False
        await archive.close()


async def test_runs_are_written_in_one_batch_per_turn(flaky: tuple[Flaky, Archive]) -> None:
    store, archive = flaky
    epoch, last = archive.numbering("general")
    assert last == 0
    archive.run("general", epoch, 1, 1, 10, line("alice", "one"))
    archive.run("general", epoch, 2, 2, 11, line("bob", "two") + line("bob", "three"))
    await archive.flushed(TIMEOUT)
    page = await store.page("general", epoch, None, None, 10)
    assert [(m.seq, m.user, m.content, m.ts) for m in page] == [
        (1, "alice", "one", 10),
        (2, "bob", "two", 11),
        (3, "bob", "three", 11),
    ]
    assert store.writes == 1 and archive.written == 3
    assert (await store.rooms())["general"].last == 3


async def test_a_run_that_cannot_be_read_is_left_out_and_the_others_are_kept(
    flaky: tuple[Flaky, Archive], caplog: pytest.LogCaptureFixture
) -> None:
    # The runs of a write are decoded in one call; one bad run (an ill-typed line, or a
    # count that is not its lines) sends them run by run: that one logged, not kept.
    store, archive = flaky
    epoch, _ = archive.numbering("general")
    archive.run("general", epoch, 1, 1, 10, line("alice", "one"))
    archive.run(
        "general", epoch, 2, 1, 11, b'{"_et":"user_message","r":"general","u":5,"c":""}\r\n'
    )
    archive.run("general", epoch, 3, 2, 12, line("bob", "two") + line("bob", "three"))
    archive.run("general", epoch, 5, 2, 13, line("carol", "only one line"))
    archive.run("general", epoch, 7, 1, 14, line("dave", "last"))
    await archive.flushed(TIMEOUT)
    page = await store.page("general", epoch, None, None, 10)
    assert [(m.seq, m.user, m.content, m.ts) for m in page] == [
        (1, "alice", "one", 10),
        (3, "bob", "two", 12),
        (4, "bob", "three", 12),
        (7, "dave", "last", 14),
    ]
    assert caplog.text.count("could not be read") == 2


class Gated(MemoryStore):
    """The in-memory store, whose writes each wait for the test to let them finish."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.gate = asyncio.Event()

    async def write(self, batch: StoreBatch) -> None:
        self.started += 1
        await self.gate.wait()
        await super().write(batch)


async def test_what_arrives_during_a_write_waits_for_the_next_gathering() -> None:
    """A write that takes a while is not followed at once by one of what arrived during
    it: then every write would be as small as the last was slow (the seed wrote ~90
    transactions/s instead of one per gathering)."""
    store = Gated()
    archive = Archive(store, sweep_every=3600, write_every=3600)
    await archive.start()
    try:
        epoch, _ = archive.numbering("general")
        archive.run("general", epoch, 1, 1, 10, line("alice", "one"))
        first = asyncio.ensure_future(archive.flushed(TIMEOUT))  # a page: write now
        await until(lambda: store.started == 1, "the first write began")
        archive.run("general", epoch, 2, 1, 11, line("bob", "two"))
        archive.run("general", epoch, 3, 1, 12, line("bob", "three"))
        store.gate.set()
        await first
        assert store.started == 1 and archive.unwritten == 2  # gathering, not writing
        await archive.flushed(TIMEOUT)  # someone waits: they go now, in one write
        assert store.started == 2 and archive.unwritten == 0
        page = await store.page("general", epoch, None, None, 10)
        assert [m.content for m in page] == ["one", "two", "three"]
    finally:
        store.gate.set()
        await archive.close()


async def test_a_down_store_keeps_the_backlog_in_order_and_counts_what_it_loses(
    flaky: tuple[Flaky, Archive], caplog: pytest.LogCaptureFixture
) -> None:
    store, archive = flaky
    epoch, _ = archive.numbering("general")
    await archive.flushed(TIMEOUT)
    store.down = True
    for seq in range(1, 61):  # the bound is 50
        archive.run("general", epoch, seq, 1, seq, line("alice", f"m{seq}"))
    await until(lambda: archive.failures > 0, "a write failed")
    assert archive.unwritten == 50 and archive.lost == 10
    readings = {r.name: r.value for r in archive.readings()}
    assert readings["store_backlog"] == 50 and readings["store_lost"] == 10
    assert "cannot write (the store is down (test))" in caplog.text
    assert "not kept so far" in caplog.text
    with pytest.raises(StoreError):  # a page cannot be answered meanwhile
        await archive.page("general", epoch, None, None, 10)
    store.down = False
    await archive.flushed(TIMEOUT)
    page = await store.page("general", epoch, None, None, 100)
    assert [m.content for m in page] == [f"m{n}" for n in range(1, 51)]
    assert archive.unwritten == 0 and "writing again" in caplog.text


async def test_numbering_goes_on_from_the_store_and_a_new_room_gets_a_new_epoch(
    tmp_path: Path,
) -> None:
    path = tmp_path / FILE_NAME
    archive = Archive(SQLiteStore(path), sweep_every=3600)
    await archive.start()
    epoch, _ = archive.numbering("general")
    archive.run("general", epoch, 1, 2, 5, line("a", "x") + line("a", "y"))
    await archive.close()
    again = Archive(SQLiteStore(path), sweep_every=3600)
    await again.start()
    try:
        assert again.numbering("general") == (epoch, 2)
        other, last = again.numbering("random")
        assert last == 0 and other != epoch
    finally:
        await again.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_edits_deletes_markers_and_retention_reach_the_store(
    tmp_path: Path, kind: str
) -> None:
    store = SQLiteStore(tmp_path / FILE_NAME) if kind == "sqlite" else MemoryStore()
    archive = Archive(store, sweep_every=3600, keep_messages=3)
    await archive.start()
    try:
        epoch, _ = archive.numbering("general")
        for seq in range(1, 6):
            archive.run("general", epoch, seq, 1, seq, line("alice", f"m{seq}"))
        archive.edit("general", epoch, 4, "four", 100)
        archive.delete("general", epoch, 5, 101)
        archive.mark("alice", "general", epoch, 4)
        archive.mark("alice", "general", epoch, 2)  # never back
        await archive.flushed(TIMEOUT)
        assert await archive.sweep() == 2
        page = await archive.page("general", epoch, None, None, 10)
        assert [(m.seq, m.content, m.edited) for m in page] == [
            (3, "m3", None),
            (4, "four", 100),
            (5, None, 101),
        ]
        assert await archive.markers("alice") == {"general": (epoch, 4)}
        archive.retain("general", 1, None)
        await archive.flushed(TIMEOUT)
        assert archive.retention("general") == (1, 0)
        assert await archive.sweep() == 2
        assert await archive.purge("general") == 1
    finally:
        await archive.close()


def test_store_urls() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    store = open_store("sqlite:///var/tmp/x.db")
    assert isinstance(store, SQLiteStore) and store.path == Path("/var/tmp/x.db")
    default = open_store(None, "/srv/chat")
    assert isinstance(default, SQLiteStore) and default.path == Path("/srv/chat") / FILE_NAME
    for bad in ("mysql://x", "nonsense", "sqlite://"):
        with pytest.raises(ValueError, match="--store"):
            open_store(bad)


async def test_an_unwritable_data_dir_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = ServerConfig(host="127.0.0.1", port=0, store=None, data_dir=blocker / "sub")
    with pytest.raises(StoreError, match="cannot open the message store"):
        await ChatServer.start(settings)


# -- a real SQLite on a full disk ---------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (the tests run as root, as `make test` installs packages)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


async def test_a_full_disk_delays_the_store_never_delivery(small_disk: Path) -> None:
    settings = ServerConfig(
        host="127.0.0.1", port=0, store=f"sqlite:///{small_disk}/chat.db", retention_sweep=3600
    )
    srv = await ChatServer.start(settings)
    try:
        alice, bob = await peer(srv, "alice"), await peer(srv, "bob")
        for who in (alice, bob):
            await who.join("general")
            await who.next("history")
        # Fill the disk: what is left cannot hold the messages below.
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as out:  # unbuffered: close() writes nothing
            try:
                while True:
                    out.write(b"\0" * 65536)
            except OSError:
                pass
        contents = [f"{n:04d} " + "x" * 400 for n in range(300)]
        for content in contents:
            await alice.say("general", content)
        got = [(await bob.next("user_message"))["c"] for _ in contents]
        assert got == contents  # delivery went on
        await until(lambda: srv.archive.failures > 0, "the store refused a write")
        assert srv.archive.unwritten > 0 and srv.archive.lost == 0
        os.unlink(filler)  # space again: the backlog is written, in order
        await srv.archive.flushed(TIMEOUT)
        page = await srv.archive.page("general", srv.rooms.rooms["general"].epoch, None, None, 200)
        assert [m.content for m in page] == contents[-200:]
        assert [m.seq for m in page] == list(range(101, 301))
    finally:
        await srv.close()


async def test_read_markers_not_written_yet_are_answered(flaky: tuple[Flaky, Archive]) -> None:
    """A marker moved a moment ago (the writer gathers for a while, or the store is
    down) is in the answer at the user's next login all the same."""
    store, archive = flaky
    epoch, _ = archive.numbering("general")
    archive.mark("ann", "general", epoch, 3)
    await archive.flushed(TIMEOUT)
    store.down = True
    archive.mark("ann", "general", epoch, 7)
    archive.mark("ann", "random", "other-epoch", 2)
    archive.mark("bob", "general", epoch, 9)
    await until(lambda: archive.failures > 0, "a write failed")
    assert await archive.markers("ann") == {
        "general": (epoch, 7),
        "random": ("other-epoch", 2),
    }
    assert (await store.markers("ann"))["general"] == (epoch, 3)  # not written yet
    store.down = False
    await archive.flushed(TIMEOUT)
    assert await store.markers("ann") == await archive.markers("ann")
