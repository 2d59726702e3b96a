"""The client library's lasting history (docs/protocol.md, "History that lasts"): pages,
edits and deletions, read markers, typing, epochs on re-join.

The sans-I/O rules first (bytes in, bytes and replies out: no socket), then the asyncio
client and the reconnecting client against a real roomchat server on port 0 (memory
store, and an SQLite file that outlives a restart)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from roomchat.client import (
    CatchUp,
    ChatClient,
    ClientEvent,
    ClientProtocol,
    CommandError,
    MissedMessages,
    PageAnswered,
    PageRefused,
    Reconnected,
    ReconnectingClient,
    connect,
)
from roomchat.protocol import (
    Error,
    Event,
    History,
    HistoryMessage,
    LoginSuccessful,
    MessageDeleted,
    MessageEdited,
    RoomParticipation,
    Typing,
    UserMessage,
    Welcome,
    encode,
)
from roomchat.server import ChatServer, ServerConfig

TIMEOUT = 10.0
EPOCH = "3f9c2a1b7d40"

# --- the sans-I/O protocol ------------------------------------------------------------------


def open_v2() -> ClientProtocol:
    protocol = ClientProtocol(v2=True, name="alice")
    protocol.receive_data(encode(LoginSuccessful("s1", "rnd01", ())))
    welcome = Welcome(2, "s1", "alice", "tok", ("paging", "edits", "read_markers", "typing"), 0)
    protocol.receive_data(encode(welcome))
    protocol.data_to_send()  # the hello
    return protocol


def test_the_commands_are_the_documented_bytes() -> None:
    protocol = open_v2()
    protocol.history_page("general", before=42, limit=20, id="p1")
    protocol.history_page("general", after=41, limit=200, epoch=EPOCH)
    protocol.edit_message("general", 40, "hey!", id="e1")
    protocol.delete_message("general", 41)
    protocol.mark_read("general", 97)
    protocol.typing("general")
    protocol.join("general", after=41, epoch=EPOCH)
    protocol.join("random", history=5, epoch=EPOCH)  # no after: no epoch either
    assert protocol.data_to_send().split(b"\r\n")[:-1] == [
        b'{"_ct":"history","r":"general","before":42,"limit":20,"id":"p1"}',
        b'{"_ct":"history","r":"general","after":41,"limit":200,"e":"3f9c2a1b7d40"}',
        b'{"_ct":"edit_message","r":"general","q":40,"c":"hey!","id":"e1"}',
        b'{"_ct":"delete_message","r":"general","q":41}',
        b'{"_ct":"mark_read","r":"general","q":97}',
        b'{"_ct":"typing","r":"general"}',
        b'{"_ct":"join_room","r":"general","after":41,"e":"3f9c2a1b7d40"}',
        b'{"_ct":"join_room","r":"random","h":5}',
    ]


def test_a_v1_session_cannot_page_edit_or_type() -> None:
    protocol = ClientProtocol()
    protocol.receive_data(encode(LoginSuccessful("s1", "rnd01", ())))
    for command in (
        lambda: protocol.history_page("general", before=3),
        lambda: protocol.edit_message("general", 1, "x"),
        lambda: protocol.delete_message("general", 1),
        lambda: protocol.mark_read("general", 1),
        lambda: protocol.typing("general"),
    ):
        with pytest.raises(RuntimeError):
            command()
    protocol.join("general", after=3, epoch=EPOCH)  # v1: both dropped
    assert protocol.data_to_send() == b'{"_ct":"join_room","r":"general"}\r\n'
    with pytest.raises(ValueError):
        open_v2().history_page("general", before=3, after=1)


def test_a_page_answer_is_a_reply_and_other_histories_are_events() -> None:
    protocol = open_v2()
    protocol.expect_page("p1")
    page = History("general", (HistoryMessage("bob", "hey", 40, 1000),), 97, False, EPOCH, "p1")
    joined = History("general", (), 97, False, EPOCH)
    stray = History("general", (), 97, False, EPOCH, "p9")  # a page nobody waits for
    protocol.receive_data(encode(page) + encode(joined) + encode(stray))
    assert protocol.replies_received() == [PageAnswered("p1", page)]
    assert protocol.events_received() == [joined, stray]
    # once answered, the same id is no longer waited for
    protocol.receive_data(encode(page))
    assert protocol.events_received() == [page]


def test_a_refused_page_is_a_reply_and_an_event() -> None:
    protocol = open_v2()
    protocol.expect_page("p2")
    refusal = Error("not_member", "not in room 'random'", "history", "p2")
    protocol.receive_data(encode(refusal))
    assert protocol.replies_received() == [PageRefused("p2", refusal)]
    assert protocol.events_received() == [refusal]
    protocol.expect_page("p3")
    protocol.cancel_page("p3")
    protocol.receive_data(encode(Error("unavailable", "store", "history", "p3")))
    assert protocol.replies_received() == []


# --- catch-up with epochs, edits and deletions ----------------------------------------


def test_a_history_s_edits_and_deletions_follow_its_messages() -> None:
    catch_up = CatchUp()
    history = History(
        "general",
        (
            HistoryMessage("bob", "hey!", 40, 1000, edited=1500),
            HistoryMessage("bob", "", 41, 2000, edited=2500, deleted=True),
            HistoryMessage("ann", "plain", 42, 3000),
        ),
        42,
        False,
        EPOCH,
    )
    assert catch_up.replay(history) == [
        UserMessage("general", "bob", "hey!", 40, 1000),
        MessageEdited("general", 40, "bob", "hey!", 1500),
        UserMessage("general", "bob", "", 41, 2000),
        MessageDeleted("general", 41, "bob", 2500),
        UserMessage("general", "ann", "plain", 42, 3000),
    ]
    assert catch_up.epoch("general") == EPOCH
    catch_up.forget("general")
    assert catch_up.epoch("general") is None


def test_another_epoch_is_a_restart_even_when_q_went_past_ours() -> None:
    catch_up = CatchUp()
    catch_up.replay(History("general", (), 5, False, "old"))
    # The server lost the room and its new count is already above 5: without the
    # epoch, messages 1 to 5 of the new count would be skipped as seen.
    new = tuple(HistoryMessage("carol", f"n{q}", q, 1000 + q) for q in range(1, 8))
    events = catch_up.replay(History("general", new, 7, True, "new"))
    assert events[0] == MissedMessages("general", 5)
    assert [e.content for e in events if isinstance(e, UserMessage)] == [
        f"n{q}" for q in range(1, 8)
    ]
    assert (catch_up.after("general"), catch_up.epoch("general")) == (7, "new")
    # the same epoch again: an ordinary catch-up
    assert catch_up.replay(History("general", new, 7, False, "new")) == []


# --- against a real server ----------------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, store="memory://"))
    try:
        yield srv
    finally:
        await srv.close()


async def v2_client(server: ChatServer, name: str) -> ChatClient:
    return await connect("127.0.0.1", server.port, v2=True, name=name, timeout=TIMEOUT)


async def until(client: ChatClient, wanted: Callable[[Event], bool]) -> Event:
    """The client's next event that is ``wanted`` (the others are skipped)."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = await client.next_event()
            if wanted(event):
                return event


async def post(client: ChatClient, room: str, contents: list[str]) -> list[UserMessage]:
    """Post and wait until every one came back: their user_message events."""
    for content in contents:
        await client.send(room, content)
    out: list[UserMessage] = []
    async with asyncio.timeout(TIMEOUT):
        while len(out) < len(contents):
            event = await client.next_event()
            if isinstance(event, UserMessage) and event.content == contents[len(out)]:
                out.append(event)
    return out


async def test_paging_back_to_the_start(server: ChatServer) -> None:
    alice = await v2_client(server, "alice")
    await alice.join_and_wait("general", history=0, timeout=TIMEOUT)
    sent = await post(alice, "general", [f"m{n}" for n in range(1, 131)])
    assert [m.seq for m in sent] == list(range(1, 131))
    joined = await (await v2_client(server, "bob")).join_and_wait(
        "general", history=10, timeout=TIMEOUT
    )
    assert joined.history is not None and joined.history.epoch
    oldest = joined.history.messages[0].seq
    assert oldest == 121
    seen: list[int] = []
    while True:
        page = await alice.history("general", before=oldest, limit=50)
        assert page.epoch == joined.history.epoch and page.seq == 130 and not page.gap
        if not page.messages:
            break
        seen = [m.seq for m in page.messages] + seen
        oldest = page.messages[0].seq
    assert seen == list(range(1, 121))
    # after, and the latest (neither)
    after = await alice.history("general", after=127)
    assert [m.content for m in after.messages] == ["m128", "m129", "m130"]
    latest = await alice.history("general", limit=2)
    assert [m.seq for m in latest.messages] == [129, 130]
    # the answers were returned, not delivered: the stream has only live events
    await alice.send("general", "barrier")
    streamed = [await alice.next_event(TIMEOUT)]
    while not _is_barrier(streamed[-1]):
        streamed.append(await alice.next_event(TIMEOUT))
    assert not [e for e in streamed if isinstance(e, History)], streamed


def _is_barrier(event: Event) -> bool:
    return isinstance(event, UserMessage) and event.content == "barrier"


async def test_a_refused_page_raises(server: ChatServer) -> None:
    alice = await v2_client(server, "alice")
    with pytest.raises(CommandError) as refused:
        await alice.history("random", before=5)  # not a member
    assert refused.value.error.code == "not_member"
    error = await alice.next_event(TIMEOUT)  # and it is an event too
    assert isinstance(error, Error) and error.command == "history"


async def test_edits_deletions_and_what_a_page_then_shows(server: ChatServer) -> None:
    alice, bob = await v2_client(server, "alice"), await v2_client(server, "bob")
    for who in (alice, bob):
        await who.join_and_wait("general", history=0, timeout=TIMEOUT)
    mine, other = await post(alice, "general", ["helo", "oops"])
    assert mine.seq is not None and other.seq is not None
    await alice.edit_message("general", mine.seq, "hello")
    edited = await until(bob, lambda e: isinstance(e, MessageEdited))
    assert isinstance(edited, MessageEdited)
    assert (edited.room, edited.seq, edited.user_id, edited.content) == (
        "general",
        mine.seq,
        "alice",
        "hello",
    )
    assert await until(alice, lambda e: isinstance(e, MessageEdited)) == edited
    await alice.delete_message("general", other.seq)
    deleted = await until(bob, lambda e: isinstance(e, MessageDeleted))
    assert isinstance(deleted, MessageDeleted) and deleted.seq == other.seq
    # bob may not edit alice's message: the refusal carries the command's id
    await bob.edit_message("general", mine.seq, "bob was here", id="e1")
    refused = await until(bob, lambda e: isinstance(e, Error))
    assert isinstance(refused, Error)
    assert (refused.code, refused.command, refused.id) == ("not_authorised", "edit_message", "e1")
    page = await bob.history("general", before=other.seq + 1, limit=10)
    shown = {m.seq: m for m in page.messages}
    assert shown[mine.seq].content == "hello" and shown[mine.seq].edited is not None
    assert shown[other.seq].deleted and shown[other.seq].content == ""


async def test_typing_reaches_the_others_and_read_markers_come_back_at_login(
    server: ChatServer,
) -> None:
    alice, bob = await v2_client(server, "alice"), await v2_client(server, "bob")
    for who in (alice, bob):
        await who.join_and_wait("general", history=0, timeout=TIMEOUT)
    await bob.typing("general")
    assert await until(alice, lambda e: isinstance(e, Typing)) == Typing("general", "bob")
    sent = await post(bob, "general", [f"b{n}" for n in range(5)])
    assert sent[1].seq is not None
    await alice.mark_read("general", sent[1].seq)
    await alice.ping(TIMEOUT)  # the marker is set once the server read the command
    # a user without a marker gets none
    again = await v2_client(server, "carol")
    assert again.listing["general"].unread is None and again.listing["general"].read is None
    # the same user, a new session: its rooms listing has the marker and the unread count
    alice_again = await connect(
        "127.0.0.1", server.port, v2=True, name="alice", token=alice.token, timeout=TIMEOUT
    )
    listing = alice_again.listing["general"]
    assert (listing.read, listing.unread) == (sent[1].seq, 3)
    for client in (alice, bob, again, alice_again):
        await client.aclose()


async def rc_until(
    rc: ReconnectingClient, wanted: Callable[[ClientEvent], bool]
) -> list[ClientEvent]:
    """The reconnecting client's events up to and including the first ``wanted``."""
    out: list[ClientEvent] = []
    async with asyncio.timeout(TIMEOUT):
        while not out or not wanted(out[-1]):
            out.append(await rc.next_event())
    return out


def contents(events: list[ClientEvent]) -> list[str]:
    return [e.content for e in events if isinstance(e, UserMessage)]


async def restart_and_post(settings: ServerConfig, port: int, contents: list[str]) -> ChatServer:
    """A new server on ``port``, and ``contents`` posted by carol before anyone else
    is back."""
    srv = await ChatServer.start(replace(settings, port=port))
    carol = await v2_client(srv, "carol")
    await carol.join_and_wait("general", history=0, timeout=TIMEOUT)
    await post(carol, "general", contents)
    await carol.aclose()
    return srv


async def test_a_lost_history_is_told_by_its_epoch_on_re_join() -> None:
    """A memory store restarted: the new count is past the client's (5 < 7), so only
    the epoch tells the client that everything is new."""
    settings = ServerConfig(host="127.0.0.1", port=0, store="memory://")
    srv = await ChatServer.start(settings)
    port = srv.port
    rc = ReconnectingClient("127.0.0.1", port, name="alice", backoff_initial=0.05, backoff_max=0.2)
    await rc.start()
    try:
        await rc.join("general")
        await rc_until(rc, lambda e: isinstance(e, RoomParticipation))
        for n in range(5):
            await rc.send("general", f"old{n}")
        await rc_until(rc, lambda e: isinstance(e, UserMessage) and e.content == "old4")
        before = rc.epochs["general"]
        assert rc.last_seq == {"general": 5}
        await srv.close()
        srv = await restart_and_post(settings, port, [f"new{n}" for n in range(7)])
        events = await rc_until(rc, lambda e: isinstance(e, UserMessage) and e.content == "new6")
        assert any(isinstance(e, Reconnected) for e in events)
        assert MissedMessages("general", 5) in events
        assert contents(events) == [f"new{n}" for n in range(7)]  # none skipped
        assert rc.epochs["general"] != before and rc.last_seq == {"general": 7}
    finally:
        await rc.close()
        await srv.close()


async def test_a_kept_history_catches_up_in_the_same_epoch(tmp_path: Path) -> None:
    """An SQLite store: the numbering and the epoch outlive the restart, so the re-join
    (with after and e) gets exactly what was missed, with no gap."""
    settings = ServerConfig(host="127.0.0.1", port=0, store=f"sqlite:///{tmp_path}/chat.db")
    srv = await ChatServer.start(settings)
    port = srv.port
    rc = ReconnectingClient("127.0.0.1", port, name="alice", backoff_initial=0.05, backoff_max=0.2)
    await rc.start()
    try:
        await rc.join("general")
        await rc_until(rc, lambda e: isinstance(e, RoomParticipation))
        for n in range(3):
            await rc.send("general", f"old{n}")
        await rc_until(rc, lambda e: isinstance(e, UserMessage) and e.content == "old2")
        before = rc.epochs["general"]
        await srv.close()
        srv = await restart_and_post(settings, port, ["while away"])
        events = await rc_until(
            rc, lambda e: isinstance(e, UserMessage) and e.content == "while away"
        )
        assert not [e for e in events if isinstance(e, MissedMessages)], events
        assert contents(events) == ["while away"]
        assert rc.epochs["general"] == before and rc.last_seq == {"general": 4}
        # a page through the reconnecting client: returned, nothing re-delivered
        page = await rc.history("general", before=4, limit=2)
        assert [m.content for m in page.messages] == ["old1", "old2"]
        await rc.edit_message("general", 3, "edited while back")
        edited = await rc_until(rc, lambda e: isinstance(e, MessageEdited))
        assert isinstance(edited[-1], MessageEdited) and edited[-1].content == "edited while back"
        assert not contents(edited)
    finally:
        await rc.close()
        await srv.close()


def test_rooms_listing_keeps_unread_and_read() -> None:
    protocol = ClientProtocol(v2=True)
    protocol.receive_data(encode(LoginSuccessful("s1", "rnd01", ())))
    protocol.receive_data(encode(Welcome(2, "s1", "rnd01", "t", ("rooms",), 0)))
    protocol.receive_data(
        b'{"_et":"rooms","rs":[{"n":"general","d":"Anything goes","un":3,"rd":97}]}\n'
    )
    listing = protocol.listing["general"]
    assert (listing.unread, listing.read) == (3, 97)
    assert protocol.events_received() == []  # the rooms event is the handshake's
