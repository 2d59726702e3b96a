"""The TUI's lasting history (docs/tui.md, "History that lasts"): unread counts from the
server's read markers, PageUp paging back, /edit and /delete, edits and deletions of
others, "X is typing…", and the read marker sent while a room is shown.

The state rules on their own first (no server), then the app through Textual's pilot
against a real roomchat server on port 0 (memory store), with other users through the
client library."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from roomchat.client import ChatClient, connect
from roomchat.protocol import (
    History,
    HistoryMessage,
    LoginSuccessful,
    MessageDeleted,
    MessageEdited,
    RoomDetail,
    RoomListing,
    Typing,
    UserJoinedRoom,
    UserMessage,
)
from roomchat.server import ChatServer, ServerConfig
from roomchat.tui import app as app_module
from roomchat.tui import state as state_module
from roomchat.tui.state import START_NOTICE, UNREAD_NOTICE, ChatState, HistoryEnd, HistoryStart
from roomchat.tui.widgets import TOMBSTONE, MessageInput, MessageLog

from .helpers import RecordingApp, chat, log_text, room_row, status_text, wait_for_chat, wait_until
from .test_app import SIZE, open_room

TIMEOUT = 10.0

# --- the state on its own ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def joined_state(clock: Clock | None = None) -> ChatState:
    state = ChatState(history_limit=5, clock=clock)
    state.apply(LoginSuccessful("s", "ann", (RoomDetail("general", "g"), RoomDetail("news", "n"))))
    state.session("ann", 2)
    state.activate("general")
    state.apply(UserJoinedRoom("general", ("ann", "bob")))
    return state


def seqs(state: ChatState, room: str = "general") -> list[int | None]:
    return [line.seq for line in state.rooms[room].lines if line.kind == "message"]


def test_unread_counts_and_markers_come_from_the_listing() -> None:
    state = joined_state()
    state.add_rooms([RoomListing("news", "n", unread=3, read=7), RoomListing("general", "g")])
    assert (state.rooms["news"].unread, state.rooms["news"].read_marker) == (3, 7)
    assert state.rooms["general"].unread == 0
    # Joining it later: the history says where the unread ones start.
    state.activate("news")
    assert state.rooms["news"].unread == 0
    state.apply(UserJoinedRoom("news", ("ann",)))
    state.apply(HistoryStart("news", catch_up=False))
    for q in (6, 7, 8, 9):
        state.apply(UserMessage("news", "bob", f"m{q}", q, 1000))
    state.apply(HistoryEnd("news"))
    kinds = [(line.kind, line.seq or line.content) for line in state.rooms["news"].lines]
    assert kinds[-5:] == [
        ("message", 6),
        ("message", 7),
        ("notice", UNREAD_NOTICE),
        ("message", 8),
        ("message", 9),
    ]


def test_pages_go_on_top_and_the_room_keeps_them() -> None:
    state = joined_state()
    for q in range(6, 11):
        state.apply(UserMessage("general", "bob", f"m{q}", q, 1000))
    assert seqs(state) == [6, 7, 8, 9, 10]  # history_limit 5
    page = History(
        "general",
        (
            HistoryMessage("ann", "", 2, 999, edited=1, deleted=True),
            *(HistoryMessage("bob", f"m{q}", q, 1000) for q in range(3, 7)),  # 6: a repeat
        ),
        10,
        False,
    )
    update = state.prepend("general", page)
    assert update.redraw and update.keep_view
    assert seqs(state) == [2, 3, 4, 5, 6, 7, 8, 9, 10]  # oldest first, none twice, none lost
    assert state.rooms["general"].lines[1].deleted  # (under the "history" separator)
    state.apply(UserMessage("general", "bob", "m11", 11, 1000))
    assert seqs(state) == list(range(2, 12))  # the room keeps what it paged
    state.prepend("general", History("general", (), 11, False))
    assert state.rooms["general"].history_done
    assert state.rooms["general"].lines[1].content == START_NOTICE


def test_edits_deletions_and_own_last_message() -> None:
    state = joined_state()
    state.apply(UserMessage("general", "ann", "helo", 1, 1000))
    state.apply(UserMessage("general", "bob", "hey", 2, 1000))
    room = state.rooms["general"]
    assert room.own_last_seq() == 1
    update = state.apply(MessageEdited("general", 1, "ann", "hello", 2000))
    assert update.redraw and update.keep_view
    assert (room.lines[0].content, room.lines[0].edited) == ("hello", True)
    state.apply(MessageDeleted("general", 1, "ann", 3000))
    assert (room.lines[0].content, room.lines[0].deleted) == ("", True)
    assert room.own_last_seq() is None  # a deleted one is not "your last"
    # one that is not shown changes nothing
    assert not state.apply(MessageEdited("general", 99, "bob", "x", 1)).changed


def test_who_is_typing_and_for_how_long() -> None:
    clock = Clock()
    state = joined_state(clock)
    assert state.apply(Typing("general", "bob")).typing
    assert not state.apply(Typing("general", "ann")).changed  # ourselves
    assert state.typing_text() == "bob is typing…"
    state.apply(Typing("general", "carol"))
    assert state.typing_text() == "bob and carol are typing…"
    state.apply(UserMessage("general", "bob", "done", 1, 1000))  # bob sent it
    assert state.typing_text() == "carol is typing…"
    clock.now += state_module.TYPING_SHOWN
    assert state.typing_text() == ""


# --- the app against a real server -------------------------------------------------------


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, store="memory://"))
    try:
        yield srv
    finally:
        await srv.close()


async def user(server: ChatServer, name: str, token: str | None = None) -> ChatClient:
    client = await connect(
        "127.0.0.1", server.port, v2=True, name=name, token=token, timeout=TIMEOUT
    )
    await client.join_and_wait("general", history=0, timeout=TIMEOUT)
    return client


async def post(client: ChatClient, contents: list[str]) -> list[int]:
    """Post to #general and wait until each came back: their numbers."""
    for content in contents:
        await client.send("general", content)
    numbers: list[int] = []
    async with asyncio.timeout(TIMEOUT):
        while len(numbers) < len(contents):
            event = await client.next_event()
            if isinstance(event, UserMessage) and event.content == contents[len(numbers)]:
                assert event.seq is not None
                numbers.append(event.seq)
    return numbers


async def until_event(client: ChatClient, kind: type) -> object:
    async with asyncio.timeout(TIMEOUT):
        while True:
            event = await client.next_event()
            if isinstance(event, kind):
                return event


def the_app(server: ChatServer, name: str, **options: object) -> RecordingApp:
    return RecordingApp(f"127.0.0.1:{server.port}", name=name, hello_timeout=2, **options)


async def test_unread_counts_from_the_server_and_the_marker_sent(server: ChatServer) -> None:
    ann = await user(server, "ann")
    numbers = await post(ann, [f"m{n}" for n in range(1, 6)])
    await ann.mark_read("general", numbers[1])  # ann read up to the second
    await ann.ping(TIMEOUT)
    await ann.aclose()
    app = the_app(server, "ann")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        assert "general (3)" in room_row(app, "general")
        await open_room(pilot, app, "general")
        assert "general (3)" not in room_row(app, "general")
        await wait_until(pilot, lambda: "#5 " in log_text(app), "the history")
        text = log_text(app)
        assert text.index("#2 ") < text.index(f"── {UNREAD_NOTICE} ──") < text.index("#3 ")
        # Shown: the app marks the room read up to its last message.
        token = app.client.token if app.client is not None else None
        assert token is not None
        await wait_until(pilot, lambda: app._marked.get("general") == 5, "mark_read sent")

        async def marker() -> int | None:
            again = await connect(
                "127.0.0.1", server.port, v2=True, name="ann", token=token, timeout=TIMEOUT
            )
            read = again.listing["general"].read
            await again.aclose()
            return read

        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        while await marker() != 5:  # the marker, as the server keeps it
            assert loop.time() < deadline, "the server never got the marker"
            await pilot.pause(0.05)


async def test_page_up_pages_back_to_the_start(server: ChatServer) -> None:
    bob = await user(server, "bob")
    await post(bob, [f"m{n}" for n in range(1, 81)])
    app = the_app(server, "ann")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        room = app.state.rooms["general"]
        await wait_until(pilot, lambda: seqs(app.state) == list(range(31, 81)), "the join's 50")
        chat(app).query_one(MessageInput).focus()
        log = chat(app).query_one(MessageLog)
        # PageUp scrolls up; at the top it asks for the 50 before the oldest shown.
        views: list[tuple[float, float]] = []
        for _ in range(40):
            if room.history_done:
                break
            paging = log.at_top
            await pilot.press("pageup")
            await wait_until(pilot, lambda: not app._paging, "the page")
            await pilot.pause()
            if paging:
                views.append((log.scroll_y, log.max_scroll_y))
        assert room.history_done
        assert seqs(app.state) == list(range(1, 81))  # each once, oldest first
        text = log_text(app)
        assert text.index(f"── {START_NOTICE} ──") < text.index("#1 ") < text.index("#80 ")
        # After a page the view stays on what it showed (the older ones above it).
        y, bottom = views[0]
        assert 0 < y < bottom, views
        # and live messages still come at the bottom
        await post(bob, ["live"])
        await wait_until(pilot, lambda: "#81 " in log_text(app), "a live one")
        assert seqs(app.state)[-1] == 81
    await bob.aclose()


async def test_edit_and_delete_own_messages_and_see_others(server: ChatServer) -> None:
    bob = await user(server, "bob")
    app = the_app(server, "ann")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        box = chat(app).query_one(MessageInput)
        box.focus()
        await pilot.press(*"helo", "enter")
        await wait_until(pilot, lambda: "#1 » @ann: helo" in log_text(app), "own message")
        # /edit TEXT: your last message
        await pilot.press(*"/edit hello  there", "enter")
        edited = await until_event(bob, MessageEdited)
        assert isinstance(edited, MessageEdited)
        assert (edited.seq, edited.user_id, edited.content) == (1, "ann", "hello  there")
        await wait_until(
            pilot, lambda: "#1 » @ann: hello  there (edited)" in log_text(app), "edited"
        )
        [other] = await post(bob, ["bob's"])
        await wait_until(pilot, lambda: f"#{other}   @bob: bob's" in log_text(app), "bob's")
        # /edit Q TEXT of someone else's: refused by the server, said in the status line
        await pilot.press(*f"/edit {other} not yours", "enter")
        await wait_until(pilot, lambda: "not_authorised" in status_text(app), "refusal")
        # bob edits and deletes his own: shown in place
        await bob.edit_message("general", other, "bob's, fixed")
        await wait_until(pilot, lambda: "@bob: bob's, fixed (edited)" in log_text(app), "edit")
        await bob.delete_message("general", other)
        await wait_until(pilot, lambda: f"@bob: {TOMBSTONE}" in log_text(app), "tombstone")
        # /delete: your last message; /delete #Q too
        await pilot.press(*"second", "enter")
        await wait_until(pilot, lambda: "@ann: second" in log_text(app), "second")
        await pilot.press(*"/delete", "enter")
        deleted = await until_event(bob, MessageDeleted)
        while isinstance(deleted, MessageDeleted) and deleted.user_id != "ann":
            deleted = await until_event(bob, MessageDeleted)  # (bob's own, before)
        assert isinstance(deleted, MessageDeleted) and deleted.seq == other + 1
        await wait_until(pilot, lambda: "second" not in log_text(app), "second deleted")
        await pilot.press(*"/delete #1", "enter")
        await wait_until(pilot, lambda: f"#1 » @ann: {TOMBSTONE}" in log_text(app), "first deleted")
        assert "hello" not in log_text(app)
        await pilot.press(*"/edit nothing left", "enter")
        await wait_until(pilot, lambda: any("No message of yours" in n for n in app.notices), "")
        assert box.value == "/edit nothing left"  # refused: kept in the box
    await bob.aclose()


async def test_typing_shown_for_a_while_and_sent_at_most_every_3_s(
    server: ChatServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "TYPING_SHOWN", 1.0)
    monkeypatch.setattr(app_module, "TYPING_SHOWN", 1.0)
    clock = Clock()
    bob = await user(server, "bob")
    app = the_app(server, "ann", clock=clock)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        log = chat(app).query_one(MessageLog)
        await bob.typing("general")
        await wait_until(pilot, lambda: log.border_subtitle == "bob is typing…", "bob typing")
        clock.now += 2  # past the (shortened) time it is shown; the timer redraws
        await wait_until(pilot, lambda: not log.border_subtitle, "bob no longer typing")
        # ann types: one typing for the keys of 3 s
        assert app.client is not None
        sent: list[str] = []
        real = app.client.typing

        async def counting(room: str) -> None:
            sent.append(room)
            await real(room)

        monkeypatch.setattr(app.client, "typing", counting)
        chat(app).query_one(MessageInput).focus()
        await pilot.press(*"hello")
        async with asyncio.timeout(TIMEOUT):
            while await bob.next_event() != Typing("general", "ann"):
                pass
        assert sent == ["general"]
        await pilot.press(*"/x")  # (not a command: the line starts with "h")
        assert sent == ["general"]
        clock.now += app_module.TYPING_EVERY
        await pilot.press("!")
        await wait_until(pilot, lambda: len(sent) == 2, "typing again after 3 s")
    await bob.aclose()
