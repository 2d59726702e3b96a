"""The TUI's community commands against a real roomchat server (docs/moderation.md):
``/create`` and ``/dm`` add rooms to the list, a moderator's ``/kick`` reaches the other
user, and the user kicked or muted is told why in the status line."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from roomchat.client import ChatClient, connect
from roomchat.protocol import Moderated, RoomAdded, UserJoinedRoom
from roomchat.server import ChatServer, ServerConfig
from roomchat.tui.app import RoomChatApp
from roomchat.tui.widgets import MessageInput

from .helpers import chat, log_text, room_rows, status_text, wait_for_chat, wait_until
from .test_app import SIZE, open_room

TIMEOUT = 10.0


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, user_rooms=True))
    try:
        yield srv
    finally:
        await srv.close()


async def bob_of(server: ChatServer) -> ChatClient:
    return await connect("127.0.0.1", server.port, v2=True, name="bob", timeout=TIMEOUT)


async def until_event(client: ChatClient, kind: type) -> object:
    while True:
        event = await client.next_event(timeout=TIMEOUT)
        if isinstance(event, kind):
            return event


async def test_create_a_room_kick_from_it_and_open_a_dm(server: ChatServer) -> None:
    bob = await bob_of(server)
    app = RoomChatApp(f"127.0.0.1:{server.port}", name="alice")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        chat(app).query_one(MessageInput).focus()
        await pilot.press(*"/create games board games", "enter")
        await wait_until(pilot, lambda: "games" in app.state.rooms, "the room in the list")
        assert any("games" in row for row in room_rows(app))
        added = await until_event(bob, RoomAdded)
        assert isinstance(added, RoomAdded) and added.room.name == "games"
        await open_room(pilot, app, "games")
        await bob.join("games")
        await until_event(bob, UserJoinedRoom)
        chat(app).query_one(MessageInput).focus()
        await pilot.press(*"/kick bob be nice", "enter")
        kicked = await until_event(bob, Moderated)
        assert isinstance(kicked, Moderated)
        assert (kicked.what, kicked.user, kicked.why) == ("kick", "bob", "be nice")
        await wait_until(pilot, lambda: "alice: kick bob (be nice)" in log_text(app), "notice")
        await pilot.press(*"/dm bob", "enter")
        await wait_until(pilot, lambda: "dm:alice+bob" in app.state.rooms, "the direct message")
    await bob.aclose()


async def test_the_user_kicked_is_told_why(server: ChatServer) -> None:
    owner = await connect("127.0.0.1", server.port, v2=True, name="olga", timeout=TIMEOUT)
    await owner.create_room("club")
    await until_event(owner, RoomAdded)
    await owner.join("club")
    app = RoomChatApp(f"127.0.0.1:{server.port}", name="bob")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for_chat(pilot, app)
        await open_room(pilot, app, "club")
        await owner.mute("bob", "club", why="too loud")
        await wait_until(
            pilot, lambda: "you were muted in #club: too loud" in status_text(app), "mute"
        )
        await owner.kick("club", "bob", why="bye")
        await wait_until(pilot, lambda: "you were kicked in #club: bye" in status_text(app), "kick")
        assert not app.state.rooms["club"].joined
    await owner.aclose()
