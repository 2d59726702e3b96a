"""Shared helpers for the TUI tests: waiting with a deadline, reading widgets, demo data."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot

from roomchat.client import ChatClient
from roomchat.protocol import (
    Event,
    LoginSuccessful,
    RoomDetail,
    RoomParticipation,
    UserJoinedRoom,
    UserMessage,
)
from roomchat.tui.app import RoomChatApp
from roomchat.tui.screens import ChatScreen
from roomchat.tui.state import HistoryEnd, HistoryStart, StateEvent
from roomchat.tui.widgets import MemberList, MessageLog, RoomList, StatusLine

TIMEOUT = 10.0


async def wait_until(
    pilot: Pilot[Any], predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT
) -> None:
    """Let the app run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.01)


async def next_event_matching(
    client: ChatClient, predicate: Callable[[Event], bool], timeout: float = TIMEOUT
) -> Event:
    """The library client's next event that satisfies ``predicate`` (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await client.next_event()
            if predicate(event):
                return event


class RecordingApp(RoomChatApp):
    """The real app, remembering every notification it showed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notices: list[str] = []

    def notify(self, message: str, *args: Any, **kwargs: Any) -> None:
        self.notices.append(message)
        super().notify(message, *args, **kwargs)


def chat(app: RoomChatApp) -> ChatScreen:
    screen = app.chat_screen
    assert screen is not None, "the chat page is not showing"
    return screen


def log_text(app: RoomChatApp) -> str:
    return "\n".join(chat(app).query_one(MessageLog).plain_lines())


def status_text(app: RoomChatApp) -> str:
    return str(chat(app).query_one(StatusLine).render()).strip()


def members_text(app: RoomChatApp) -> str:
    return str(chat(app).query_one(MemberList).render())


def room_rows(app: RoomChatApp) -> list[str]:
    room_list = chat(app).query_one(RoomList)
    return [str(option.prompt) for option in room_list.options]


def room_row(app: RoomChatApp, room: str) -> str:
    room_list = chat(app).query_one(RoomList)
    return str(room_list.get_option(room).prompt)


# Fixed data for the layout snapshot and the docs screenshot: no server, no clock.
DEMO_USER = "ferris"
DEMO_LOGIN = LoginSuccessful(
    session_id="demo-session-0000000001",
    user_id=DEMO_USER,
    rooms=(
        RoomDetail("general", "Anything goes: say hello, ask around, hang out."),
        RoomDetail("random", "Off-topic chatter, links and the occasional meme."),
        RoomDetail("python", "asyncio, typing, packaging and the rest of the zoo."),
        RoomDetail("rust", "Borrow checker support group and Tokio talk."),
        RoomDetail("help", "Stuck? Ask here and someone will point the way."),
    ),
)
DEMO_EVENTS: tuple[StateEvent, ...] = (
    UserJoinedRoom("rust", (DEMO_USER, "gopher")),
    RoomParticipation("rust", DEMO_USER, "joined"),
    UserMessage("rust", "gopher", "anyone tried the new tokio release?"),
    UserMessage("rust", "gopher", "the borrow checker and I are friends now"),
    UserJoinedRoom("general", (DEMO_USER, "alice", "bob")),
    HistoryStart("general", catch_up=False),
    UserMessage("general", "bob", "morning! coffee is on", 40, 1764355100000),
    UserMessage("general", "alice", "thanks bob", 41, 1764355200000),
    HistoryEnd("general"),
    RoomParticipation("general", DEMO_USER, "joined"),
    UserMessage("general", "alice", "hello everyone 👋"),
    UserMessage("general", DEMO_USER, "hi alice! roomchat speaks the rust-chat-server protocol."),
    RoomParticipation("general", "carol", "joined"),
    UserMessage(
        "general",
        "carol",
        "long messages wrap instead of running off the edge of the screen, "
        "so nothing is hidden however much you have to say about asyncio.",
    ),
    RoomParticipation("general", "bob", "left"),
    UserMessage("rust", "gopher", "ping?"),
    UserMessage("rust", "gopher", "anyone around?"),
)


def show_demo(app: RoomChatApp) -> None:
    """Put the app on the chat page with fixed rooms, members and messages."""
    app.handle_event(DEMO_LOGIN)
    app.state.session(DEMO_USER, 2)
    app.state.activate("rust")
    for event in DEMO_EVENTS[:4]:
        app.handle_event(event)
    app.state.activate("general")
    for event in DEMO_EVENTS[4:]:
        app.handle_event(event)
    chat(app).show_active_changed()


async def wait_for_chat(pilot: Pilot[Any], app: RoomChatApp) -> ChatScreen:
    """Wait until the chat page is showing and drawn."""

    def ready() -> bool:
        screen = app.chat_screen
        return screen is not None and screen.is_mounted

    await wait_until(pilot, ready, "the chat page")
    return chat(app)
