"""The TUI against a real roomchat server on port 0, driven with Textual's pilot."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from roomchat.client import ChatClient, connect
from roomchat.protocol import LoginSuccessful, RoomParticipation, UserJoinedRoom, UserMessage
from roomchat.server import ChatServer, ServerConfig
from roomchat.tui.app import DEFAULT_ADDRESS, RoomChatApp, ServerEvent
from roomchat.tui.screens import ConnectScreen
from roomchat.tui.widgets import MessageInput, RoomList, UsagePanel, UserInfo

from .helpers import (
    RecordingApp,
    chat,
    log_text,
    members_text,
    next_event_matching,
    room_row,
    room_rows,
    status_text,
    wait_for_chat,
    wait_until,
)

SIZE = (130, 40)


def address(server: ChatServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture
async def other(server: ChatServer) -> AsyncIterator[ChatClient]:
    """A second user, through the client library."""
    async with await connect("127.0.0.1", server.port) as client:
        yield client


async def open_room(pilot: Pilot[Any], app: RoomChatApp, room: str) -> None:
    """Pick a room in the list with the keyboard (arrows, then Enter) and wait for the join."""
    room_list = chat(app).query_one(RoomList)
    room_list.focus()
    target = room_list.get_option_index(room)
    await pilot.press("home")
    for _ in range(target):
        await pilot.press("down")
    await pilot.press("enter")
    await wait_until(
        pilot,
        lambda: app.state.active_room == room and app.state.rooms[room].joined,
        f"joining {room}",
    )


async def test_connect_page_is_prefilled_and_enter_connects(server: ChatServer) -> None:
    app = RoomChatApp()
    async with app.run_test(size=SIZE) as pilot:
        assert isinstance(app.screen, ConnectScreen)
        box = app.screen.query_one("#address", Input)
        assert box.value == DEFAULT_ADDRESS
        box.value = address(server)
        box.focus()
        await pilot.press("enter")
        await wait_for_chat(pilot, app)
        expected = sorted(room.name for room in app.state.rooms.values())
        assert len(expected) == 24
        rows = room_rows(app)
        assert [row.split()[-1] for row in rows] == expected
        assert all("○" in row for row in rows)  # nothing joined yet
        info = str(chat(app).query_one(UserInfo).render())
        assert f"@{app.state.user_id}" in info


async def test_join_send_and_see_own_message(server: ChatServer) -> None:
    app = RoomChatApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        me = app.state.user_id
        assert "● general" in room_row(app, "general")
        assert f"@{me} (you)" in members_text(app)
        assert "Users (1)" in members_text(app)
        assert isinstance(app.focused, MessageInput)  # opening a room focuses the box
        assert "send message" in str(chat(app).query_one(UsagePanel).render())
        await pilot.press(*"hello there", "enter")
        await wait_until(pilot, lambda: f"@{me}: hello there" in log_text(app), "own message")
        assert f"» @{me}: hello there" in log_text(app)  # own messages are marked
        assert app.focused.value == ""
        await pilot.press("escape")
        assert isinstance(app.focused, RoomList)
        await pilot.press("tab", "tab")  # rooms -> messages -> message box
        assert isinstance(app.focused, MessageInput)


async def test_messages_from_another_user_show_and_count_as_unread(
    server: ChatServer, other: ChatClient
) -> None:
    await other.join("general")
    await other.join("random")
    app = RoomChatApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        await open_room(pilot, app, "random")  # random is active, general is not
        me = app.state.user_id
        await next_event_matching(
            other,
            lambda e: isinstance(e, RoomParticipation) and e.room == "random" and e.user_id == me,
        )
        await other.send("general", "first")
        await other.send("general", "second")
        await other.send("random", "in the open room")
        await wait_until(
            pilot, lambda: f"@{other.user_id}: in the open room" in log_text(app), "the message"
        )
        await wait_until(pilot, lambda: app.state.rooms["general"].unread == 2, "unread count")
        assert "(2)" in room_row(app, "general")
        assert "(" not in room_row(app, "random")
        await open_room(pilot, app, "general")
        assert app.state.rooms["general"].unread == 0
        assert "(2)" not in room_row(app, "general")
        assert f"@{other.user_id}: second" in log_text(app)


async def test_users_follow_joins_and_leaves(server: ChatServer, other: ChatClient) -> None:
    app = RoomChatApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        assert "Users (1)" in members_text(app)
        await other.join("general")
        await wait_until(pilot, lambda: "Users (2)" in members_text(app), "two users")
        assert f"@{other.user_id}" in members_text(app)
        assert f"@{other.user_id} joined the room" in log_text(app)
        await other.leave("general")
        await wait_until(pilot, lambda: "Users (1)" in members_text(app), "one user again")
        assert f"@{other.user_id}" not in members_text(app)
        assert f"@{other.user_id} left the room" in log_text(app)


async def test_leaving_the_active_room(server: ChatServer, other: ChatClient) -> None:
    await other.join("general")
    app = RecordingApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        me = app.state.user_id
        await pilot.press("ctrl+l")
        event = await next_event_matching(
            other, lambda e: isinstance(e, RoomParticipation) and e.user_id == me
        )
        assert event == RoomParticipation("general", me or "", "joined")
        event = await next_event_matching(
            other, lambda e: isinstance(e, RoomParticipation) and e.user_id == me
        )
        assert event == RoomParticipation("general", me or "", "left")
        assert not app.state.rooms["general"].joined
        assert app.state.active_room is None
        assert "○ general" in room_row(app, "general")
        assert "You left #general." in app.notices
        # With no room open a typed message is refused, and stays in the box.
        chat(app).query_one(MessageInput).focus()
        await pilot.press(*"anyone?", "enter")
        assert chat(app).query_one(MessageInput).value == "anyone?"
        assert any("not sent" in notice for notice in app.notices)


async def test_a_message_typed_while_disconnected_is_refused(server: ChatServer) -> None:
    app = RecordingApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        assert app.client is not None and app.client.client is not None
        app.client.client.close()  # the connection is going; the UI has not noticed yet
        assert await app.send_message("lost?") is False
        assert "Not connected: the message was not sent." in app.notices


async def test_an_event_arriving_while_the_app_closes_is_dropped(server: ChatServer) -> None:
    """The connection's worker may still post an event while the app tears its screens
    down (seen in CI): it is dropped, not an IndexError."""
    app = RecordingApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
    assert not app.screen_stack and app.chat_screen is None
    app.on_server_event(ServerEvent(RoomParticipation("general", "someone", "joined")))
    app.on_server_event(ServerEvent(LoginSuccessful("s", "u", ())))
    assert app.chat_screen is None


async def test_server_gone_shows_reconnecting_in_the_status_line(server: ChatServer) -> None:
    app = RecordingApp(address(server), hello_timeout=0.2)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        await wait_until(pilot, lambda: status_text(app).startswith("v2"), "v2 shown")
        await server.close()
        await wait_until(pilot, lambda: "reconnecting" in status_text(app), "reconnecting")
        assert app.chat_screen is not None  # the page stays, rooms and lines kept
        assert app.state.rooms["general"].joined
        chat(app).query_one(MessageInput).focus()
        await pilot.press(*"anyone?", "enter")
        assert chat(app).query_one(MessageInput).value == "anyone?"  # refused, kept
        assert "Not connected: the message was not sent." in app.notices


async def test_an_unparsable_address_shows_an_error() -> None:
    app = RoomChatApp("localhost:notaport")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, ConnectScreen)
        assert "Bad address" in app.screen.status_text
        assert "port is not a number" in app.screen.status_text


async def test_a_host_name_the_resolver_rejects_shows_an_error() -> None:
    app = RoomChatApp("ex..ample:8080")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, ConnectScreen)
        await wait_until(pilot, lambda: "Could not connect" in screen.status_text, "the error")
        assert "not a valid host name" in screen.status_text
        assert "Lost the connection" not in screen.status_text


async def test_an_unreachable_server_shows_an_error() -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    app = RoomChatApp(f"127.0.0.1:{port}")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert isinstance(screen, ConnectScreen)
        await wait_until(pilot, lambda: "Could not connect" in screen.status_text, "the error")
        assert f"127.0.0.1:{port}" in screen.status_text
        assert app.chat_screen is None


async def test_q_quits_from_the_connect_page_outside_the_box() -> None:
    app = RoomChatApp()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("q")  # typed into the address box: no quit
        assert app.screen.query_one("#address", Input).value.endswith("q")
        await pilot.press("escape", "q")
        await wait_until(pilot, lambda: not app.is_running, "the app to quit")


async def test_closing_the_app_closes_the_connection(server: ChatServer) -> None:
    app = RoomChatApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        assert app.client is not None
        client = app.client.client
        assert client is not None
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: not app.is_running, "the app to quit")
    await client.wait_closed()
    assert client.closed


async def test_long_messages_wrap(server: ChatServer, other: ChatClient) -> None:
    app = RoomChatApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        await other.join("general")
        await next_event_matching(other, lambda e: isinstance(e, UserJoinedRoom))
        long_text = "word " * 80
        await other.send("general", long_text.strip())
        await next_event_matching(other, lambda e: isinstance(e, UserMessage))
        await wait_until(pilot, lambda: "word word" in log_text(app), "the long message")
        lines = log_text(app).splitlines()
        wrapped = [line for line in lines if "word" in line]
        assert len(wrapped) > 1  # a long message wraps onto several lines
        assert sum(line.count("word") for line in wrapped) == 80  # and none of it is lost


async def test_clicking_a_room_opens_it(server: ChatServer) -> None:
    app = RoomChatApp(address(server))
    async with app.run_test(size=SIZE) as pilot:
        screen = await wait_for_chat(pilot, app)
        room_list = screen.query_one(RoomList)
        row = room_list.get_option_index("help")
        # +1: the list's top border.
        assert await pilot.click(RoomList, offset=(6, row + 1))
        await wait_until(
            pilot,
            lambda: app.state.active_room == "help" and app.state.rooms["help"].joined,
            "joining help",
        )
        assert "▸ ● help" in room_row(app, "help")


async def test_reconnects_to_a_restarted_server_and_rejoins(server: ChatServer) -> None:
    app = RoomChatApp(address(server), hello_timeout=0.2, backoff_max=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "general")
        chat(app).query_one(MessageInput).focus()
        await pilot.press(*"before", "enter")  # message 1: the client has seen number 1
        await wait_until(pilot, lambda: "before" in log_text(app), "own message shown")
        port = server.port
        await server.close()
        await wait_until(pilot, lambda: "reconnecting" in status_text(app), "reconnecting")
        second = await ChatServer.start(ServerConfig(host="127.0.0.1", port=port))
        try:
            await wait_until(
                pilot,
                lambda: "reconnected" in log_text(app) and not app.state.reconnecting,
                "reconnected",
            )
            assert status_text(app).startswith("v2")
            # The restarted server kept no history (its numbers started again): the log
            # says messages may be missing, and chatting goes on
            await wait_until(pilot, lambda: "some messages were missed" in log_text(app), "gap")
            await wait_until(
                pilot, lambda: f"@{app.state.user_id} (you)" in members_text(app), "rejoined"
            )
            chat(app).query_one(MessageInput).focus()
            await pilot.press(*"back again", "enter")
            await wait_until(
                pilot, lambda: f"» @{app.state.user_id}: back again" in log_text(app), "chat"
            )
        finally:
            await second.close()
