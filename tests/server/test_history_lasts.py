"""History that lasts (docs/protocol.md, "History that lasts") through the real server
and its real stores: numbering and epochs across restarts, pages, edits and deletions,
read markers, typing, retention. Where both buses must behave alike, on both."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from roomchat.server import ChatServer, ServerConfig
from tests.helpers import until
from tests.redis_servers import RedisServer
from tests.server.test_community import Peer, peer


def config(bus_url: str = "memory://", **changes: Any) -> ServerConfig:
    base = ServerConfig(host="127.0.0.1", port=0, bus_url=bus_url, user_rooms=True)
    return replace(base, **changes)


@pytest.fixture
async def server(bus_url: str) -> AsyncIterator[ChatServer]:
    srv = await ChatServer.start(config(bus_url))
    try:
        yield srv
    finally:
        await srv.close()


async def say_all(who: Peer, room: str, contents: list[str]) -> list[dict[str, Any]]:
    """Post ``contents`` and wait until ``who`` has every one back; their events."""
    for content in contents:
        await who.say(room, content)
    return [await who.next("user_message", r=room, c=content) for content in contents]


async def events_until(who: Peer, content: str) -> list[dict[str, Any]]:
    """What ``who`` gets up to the user_message ``content`` (a barrier a v1 session
    understands: it ignores ``ping``)."""
    events = []
    while True:
        event = await who.event()
        events.append(event)
        if event["_et"] == "user_message" and event["c"] == content:
            return events


async def history_of(who: Peer, room: str, **join: Any) -> dict[str, Any]:
    await who.join(room, **join)
    return await who.next("history", r=room)


# -- numbering and epochs across restarts ----------------------------------------------


async def test_a_restart_keeps_the_numbering_and_catch_up_skips_nothing(tmp_path: Path) -> None:
    """The issue's case: alice posts 10, restart, bob posts 15, alice catches up after
    10 and gets all 15 of bob's, with no gap and the same epoch."""
    settings = config(store=f"sqlite:///{tmp_path}/chat.db")
    srv = await ChatServer.start(settings)
    alice = await peer(srv, "alice")
    first = await history_of(alice, "general")
    await say_all(alice, "general", [f"old-{n}" for n in range(10)])
    alice.close()
    await srv.close()

    srv = await ChatServer.start(settings)
    try:
        bob = await peer(srv, "bob")
        await bob.join("general")
        sent = await say_all(bob, "general", [f"new-{n}" for n in range(15)])
        assert [event["q"] for event in sent] == list(range(11, 26))
        alice = await peer(srv, "alice")
        caught = await history_of(alice, "general", after=10, e=first["e"])
        assert caught["e"] == first["e"]
        assert caught["gap"] is False and caught["q"] == 25
        assert [m["c"] for m in caught["ms"]] == [f"new-{n}" for n in range(15)]
        # and before the restart, from the store: the oldest ones are there too
        early = await history_of(bob, "random", h=0)  # another room: nothing
        assert early["ms"] == []
        await alice.send(_ct="history", r="general", before=11, limit=3, id="p")
        page = await alice.next("history", id="p")
        assert [m["c"] for m in page["ms"]] == ["old-7", "old-8", "old-9"]
    finally:
        await srv.close()


async def test_a_memory_store_restart_changes_the_epoch_and_the_client_is_told() -> None:
    srv = await ChatServer.start(config(store="memory://"))
    alice = await peer(srv, "alice")
    first = await history_of(alice, "general")
    await say_all(alice, "general", [f"m{n}" for n in range(10)])
    await srv.close()
    srv = await ChatServer.start(config(store="memory://"))
    try:
        bob = await peer(srv, "bob")
        await bob.join("general")
        await say_all(bob, "general", [f"new-{n}" for n in range(15)])
        alice = await peer(srv, "alice")
        # The repro of the issue: q 15 now, alice had 10 - without the epoch a silent
        # skip of new-0..new-9; with it, the gap is said and the recent history given.
        caught = await history_of(alice, "general", after=10, e=first["e"])
        assert caught["e"] != first["e"]
        assert caught["gap"] is True
        assert [m["c"] for m in caught["ms"]] == [f"new-{n}" for n in range(15)]
    finally:
        await srv.close()


# -- pages -------------------------------------------------------------------------------


@pytest.mark.parametrize("bus_url", ["memory"], indirect=True)
async def test_pages_back_and_forth_and_refusals(server: ChatServer) -> None:
    alice = await peer(server, "alice")
    await history_of(alice, "general")
    await say_all(alice, "general", [f"m{n}" for n in range(1, 251)])
    await alice.send(_ct="history", r="general", before=251, limit=200, id="a")
    page = await alice.next("history", id="a")
    assert [m["q"] for m in page["ms"]] == list(range(51, 251))
    assert page["q"] == 250 and page["gap"] is False
    await alice.send(_ct="history", r="general", before=51, limit=200, id="b")
    assert [m["q"] for m in (await alice.next("history", id="b"))["ms"]] == list(range(1, 51))
    await alice.send(_ct="history", r="general", before=1, id="c")
    assert (await alice.next("history", id="c"))["ms"] == []
    await alice.send(_ct="history", r="general", after=245, id="d")
    assert [m["c"] for m in (await alice.next("history", id="d"))["ms"]] == [
        f"m{n}" for n in range(246, 251)
    ]
    await alice.send(_ct="history", r="general", id="e")  # neither: the latest 50
    assert [m["q"] for m in (await alice.next("history", id="e"))["ms"]] == list(range(201, 251))
    # A stale epoch: the latest page, and the gap said.
    await alice.send(_ct="history", r="general", before=10, limit=2, e="other", id="f")
    stale = await alice.next("history", id="f")
    assert stale["gap"] is True and [m["q"] for m in stale["ms"]] == [249, 250]
    for bad in ({"limit": 201}, {"limit": 0}, {"before": 3, "after": 1}, {"before": -1}):
        await alice.send(_ct="history", r="general", id="x", **bad)
        assert (await alice.error("bad_command"))["id"] == "x"
    await alice.send(_ct="history", r="random", id="y")  # not joined
    assert (await alice.error("not_member"))["id"] == "y"


# -- edits and deletions -----------------------------------------------------------------


async def test_edits_and_deletions_reach_v2_members_and_history_shows_the_final_state(
    server: ChatServer,
) -> None:
    alice = await peer(server, "alice")
    bob = await peer(server, "bob")
    old = await peer(server)  # a v1 session: sees none of it
    for who in (alice, bob):
        await history_of(who, "general")
    await old.send(_ct="join_room", r="general")
    await old.next("user_joined_room")
    mine, theirs = await say_all(alice, "general", ["helo", "oops"])
    await alice.send(_ct="edit_message", r="general", q=mine["q"], c="hello")
    edited = await bob.next("message_edited", q=mine["q"])
    assert (edited["u"], edited["c"]) == ("alice", "hello")
    await alice.send(_ct="delete_message", r="general", q=theirs["q"])
    deleted = await bob.next("message_deleted", q=theirs["q"])
    assert deleted["u"] == "alice"
    # bob may not touch alice's message; nor anyone a deleted one or one never sent.
    await bob.send(_ct="edit_message", r="general", q=mine["q"], c="bob was here", id="1")
    assert (await bob.error("not_authorised"))["id"] == "1"
    await alice.send(_ct="edit_message", r="general", q=theirs["q"], c="back", id="2")
    assert (await alice.error("not_found"))["id"] == "2"
    await alice.send(_ct="delete_message", r="general", q=999, id="3")
    assert (await alice.error("not_found"))["id"] == "3"
    await alice.send(_ct="delete_message", r="random", q=1, id="4")
    assert (await alice.error("not_member"))["id"] == "4"
    # A join's history and a page both show the final state.
    carol = await peer(server, "carol")
    joined = await history_of(carol, "general", h=10)
    shown = {m["q"]: m for m in joined["ms"]}
    assert shown[mine["q"]]["c"] == "hello" and "ed" in shown[mine["q"]]
    assert shown[theirs["q"]] == {**shown[theirs["q"]], "c": "", "del": True}
    await carol.send(_ct="history", r="general", id="p")
    paged = {m["q"]: m for m in (await carol.next("history", id="p"))["ms"]}
    assert paged[mine["q"]]["c"] == "hello" and paged[theirs["q"]]["del"] is True
    # The v1 session saw the messages and nothing else.
    await alice.say("general", "the end")
    events = await events_until(old, "the end")
    assert not [e for e in events if e["_et"] not in ("user_message", "room_participation")]


@pytest.mark.parametrize("bus_url", ["memory"], indirect=True)
async def test_a_moderator_edits_anyones_message_and_old_ones_come_from_the_store(
    server: ChatServer,
) -> None:
    owner = await peer(server, "olive")
    await owner.send(_ct="create_room", r="club")
    await owner.next("room_added")
    await history_of(owner, "club")
    bob = await peer(server, "bob")
    await history_of(bob, "club")
    sent = await say_all(bob, "club", [f"b{n}" for n in range(150)])  # past the 100 held
    await owner.send(_ct="delete_message", r="club", q=sent[0]["q"])
    await bob.next("message_deleted", q=sent[0]["q"])
    await owner.send(_ct="history", r="club", before=3, id="p")
    page = await owner.next("history", id="p")
    assert page["ms"][0]["del"] is True and page["ms"][1]["c"] == "b1"


# -- read markers, typing, retention -----------------------------------------------------


async def test_read_markers_give_unread_counts_at_the_next_login(server: ChatServer) -> None:
    alice = await peer(server, "alice")
    await history_of(alice, "general")
    sent = await say_all(alice, "general", [f"m{n}" for n in range(8)])
    await alice.send(_ct="mark_read", r="general", q=sent[4]["q"])
    await alice.send(_ct="mark_read", r="general", q=sent[2]["q"])  # never back
    await alice.drain()  # the markers are handed over: wait until they are written
    await server.archive.flushed(5)
    alice.close()
    await until(lambda: not server.sessions, "alice has gone")
    again = await peer(server, "alice")
    listing = {room["n"]: room for room in again.login["rs"]}
    general = listing["general"]
    assert (general["rd"], general["un"]) == (sent[4]["q"], 3)
    assert "un" not in listing["random"]  # no marker there
    await again.send(_ct="mark_read", r="random", q=1, id="m")
    assert (await again.error("not_member"))["id"] == "m"


async def test_typing_reaches_the_other_v2_members_at_most_every_three_seconds(
    server: ChatServer,
) -> None:
    alice, bob = await peer(server, "alice"), await peer(server, "bob")
    old = await peer(server)
    for who in (alice, bob):
        await history_of(who, "general")
    await old.send(_ct="join_room", r="general")
    await old.next("user_joined_room")
    await alice.send(_ct="typing", r="general")
    await alice.say("general", "one")
    await alice.send(_ct="typing", r="general")  # within 3 s: dropped
    await alice.say("general", "two")
    seen = []
    while not seen or seen[-1] != ("user_message", "two"):
        event = await bob.event()
        seen.append((event["_et"], event.get("u") if event["_et"] == "typing" else event.get("c")))
    assert [item for item in seen if item[0] in ("typing", "user_message")] == [
        ("typing", "alice"),
        ("user_message", "one"),
        ("user_message", "two"),
    ]
    assert not [e for e in await events_until(old, "two") if e["_et"] == "typing"]
    await alice.send(_ct="typing", r="random", id="t")
    assert (await alice.error("not_member"))["id"] == "t"


@pytest.mark.parametrize("bus_url", ["memory"], indirect=True)
async def test_retention_keeps_what_the_room_says_and_only_moderators_set_it(
    server: ChatServer,
) -> None:
    owner = await peer(server, "olive")
    await owner.send(_ct="create_room", r="club")
    await owner.next("room_added")
    await history_of(owner, "club")
    bob = await peer(server, "bob")
    await history_of(bob, "club")
    await bob.send(_ct="set_retention", r="club", n=5, id="r")
    assert (await bob.error("not_authorised"))["id"] == "r"
    await owner.send(_ct="set_retention", r="club", n=5)
    await say_all(owner, "club", [f"m{n}" for n in range(12)])
    await until(lambda: server.archive.unwritten == 0, "everything is written")
    await server.archive.flushed(5)
    gone = await server.archive.sweep()
    assert gone >= 7
    await owner.send(_ct="history", r="club", limit=200, id="p")
    page = await owner.next("history", id="p")
    assert [m["c"] for m in page["ms"]] == [f"m{n}" for n in range(7, 12)]


async def test_an_online_backup_of_the_sqlite_store_starts_a_server_with_the_history(
    tmp_path: Path,
) -> None:
    """docs/history.md's backup: SQLite's online backup API copies the store of a running
    server; a server started on the copy pages the same history, numbering on."""
    live = tmp_path / "live.sqlite3"
    srv = await ChatServer.start(config(store=f"sqlite:///{live}"))
    try:
        alice = await peer(srv, "alice")
        first = await history_of(alice, "general")
        await say_all(alice, "general", [f"kept-{n}" for n in range(5)])
        await until(lambda: srv.archive.unwritten == 0, "the messages are written")
        copy = tmp_path / "copy.sqlite3"

        def backup() -> None:  # what `sqlite3 FILE ".backup COPY"` does
            source, target = sqlite3.connect(live), sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                source.close()
                target.close()

        await asyncio.to_thread(backup)
        alice.close()
    finally:
        await srv.close()
    srv = await ChatServer.start(config(store=f"sqlite:///{copy}"))
    try:
        bob = await peer(srv, "bob")
        history = await history_of(bob, "general", after=0, e=first["e"])
        assert history["e"] == first["e"] and history["gap"] is False
        assert [m["c"] for m in history["ms"]] == [f"kept-{n}" for n in range(5)]
        sent = await say_all(bob, "general", ["next"])
        assert sent[0]["q"] == 6
        bob.close()
    finally:
        await srv.close()


async def test_sqlite_with_a_shared_bus_says_what_it_holds(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each machine's SQLite file holds only its own instances' messages: said at the
    start, with what to use instead; nothing is said on the in-process bus."""
    store = f"sqlite:///{tmp_path}/chat.sqlite3"
    srv = await ChatServer.start(config(store=store))
    await srv.close()
    assert "holds only what is posted" not in caplog.text
    srv = await ChatServer.start(config(redis_server.url, store=store))
    try:
        assert "chat.sqlite3 holds only what is posted through this machine" in caplog.text
        assert "--store postgresql://" in caplog.text
    finally:
        await srv.close()
