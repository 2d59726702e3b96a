"""The two pages: connect (server address) and chat (rooms | messages | users)."""

from __future__ import annotations

from typing import ClassVar, Protocol

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Center, Horizontal, Vertical, VerticalScroll
from textual.events import DescendantFocus
from textual.screen import Screen
from textual.widgets import Input, Label, OptionList, Static

from roomchat.protocol import NAME_MAX_LENGTH
from roomchat.tui.state import ChatState, Update
from roomchat.tui.widgets import (
    MemberList,
    MessageInput,
    MessageLog,
    RoomHeader,
    RoomList,
    StatusLine,
    UsagePanel,
    UserInfo,
)

__all__ = ["ChatController", "ChatScreen", "ConnectScreen"]


class ChatController(Protocol):
    """What the pages ask of the app, which owns the connection."""

    def connect_to(self, address: str, name: str = "") -> None: ...

    async def open_room(self, room: str) -> None: ...

    async def leave_active_room(self) -> None: ...

    async def send_message(self, text: str) -> bool: ...

    def page_back(self) -> None: ...

    async def user_typing(self, text: str) -> None: ...


class ConnectScreen(Screen[None]):
    """A server-address box and an optional name; Enter connects, errors show below."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "app.quit", "Quit"),
        Binding("escape", "blur_address", "Leave the box", show=False),
    ]

    def __init__(self, controller: ChatController, address: str, name: str = "") -> None:
        super().__init__()
        self._controller = controller
        self._address = address
        self._name = name
        self.status_text = ""
        self._status_error = False

    def compose(self) -> ComposeResult:
        with Center(), Vertical(id="connect-box"):
            yield Label("roomchat", id="connect-title")
            yield Label("Server address")
            yield Input(self._address, placeholder="host:port", id="address")
            yield Label("Name (optional)")
            yield Input(
                self._name,
                placeholder="empty: a random id",
                max_length=NAME_MAX_LENGTH,
                id="name",
            )
            yield Static("", id="connect-status")
            yield Static(
                Text.assemble(
                    ("Enter", "bold yellow"),
                    " connect   ",
                    ("Esc", "bold yellow"),
                    " leave the box   ",
                    ("q", "bold yellow"),
                    " / ",
                    ("Ctrl+C", "bold yellow"),
                    " quit",
                ),
                id="connect-help",
            )

    @on(Input.Submitted, "#address, #name")
    def _submitted(self, event: Input.Submitted) -> None:
        address = self.query_one("#address", Input).value
        name = self.query_one("#name", Input).value
        self._controller.connect_to(address, name)

    def action_blur_address(self) -> None:
        self.set_focus(None)

    def show_status(self, message: str, *, error: bool = False) -> None:
        """Say what is going on (``error``: in red). Works before the page is mounted."""
        self.status_text = message
        self._status_error = error
        if self.is_mounted:
            self._draw_status()

    def on_mount(self) -> None:
        self._draw_status()

    def _draw_status(self) -> None:
        status = self.query_one("#connect-status", Static)
        style = "bold red" if self._status_error else "italic"
        status.update(Text(self.status_text, style=style))


class ChatScreen(Screen[None]):
    """Three columns: rooms and user info | room, messages, input | users and keys."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "focus_rooms", "Back to rooms", show=False),
        Binding("ctrl+l", "leave_room", "Leave room", show=False),
    ]

    def __init__(self, state: ChatState, controller: ChatController) -> None:
        super().__init__()
        self._state = state
        self._controller = controller

    def compose(self) -> ComposeResult:
        with Horizontal(id="columns"):
            with Vertical(id="left"):
                yield RoomList(id="rooms")
                yield UserInfo(self._state, id="user-info")
            with Vertical(id="middle"):
                yield RoomHeader(id="room-header")
                yield MessageLog(self._state.history_limit, id="messages")
                yield MessageInput(placeholder="Type a message, Enter to send", id="message-input")
            with Vertical(id="right"):
                with VerticalScroll(id="members-box", can_focus=False):
                    yield MemberList(id="members")
                yield UsagePanel(id="usage")
        yield StatusLine(id="status-line")

    def on_mount(self) -> None:
        self.query_one(RoomList).border_title = "Rooms"
        self.query_one(UserInfo).border_title = "You"
        self.query_one(MessageLog).border_title = "Messages"
        self.query_one(UsagePanel).border_title = "Keys"
        self.show_all()
        self.query_one(RoomList).focus()

    # -- drawing the state -------------------------------------------------------
    def show_all(self) -> None:
        self.query_one(RoomList).show_rooms(self._state)
        self._show_active_room()
        self.show_status()

    def show_status(self) -> None:
        self.query_one(StatusLine).show_status(self._state)

    def _show_active_room(self) -> None:
        self.query_one(RoomHeader).show_room(self._state)
        self.query_one(MessageLog).show_room(self._state.active)
        self.query_one(MemberList).show_members(self._state)
        self.show_typing()

    def show_typing(self) -> None:
        """Who is typing in the open room, on the messages' bottom border."""
        if self.is_mounted:
            self.query_one(MessageLog).border_subtitle = self._state.typing_text()

    def show_update(self, update: Update) -> None:
        """Redraw what one state change touched."""
        # Until mounted there is nothing to redraw: on_mount draws the whole state.
        if not update.changed or not self.is_mounted:
            return
        if update.status:
            self.show_status()
            return
        if update.room is None:
            self.show_all()
            return
        if update.typing:
            if update.room == self._state.active_room:
                self.show_typing()
            return
        self.query_one(RoomList).show_room(self._state, update.room)
        if update.room == self._state.active_room:
            self.query_one(RoomHeader).show_room(self._state)
            self.query_one(MemberList).show_members(self._state)
            if update.redraw:
                log = self.query_one(MessageLog)
                log.show_room(self._state.active, keep_view=update.keep_view)
            elif update.line is not None:
                self.query_one(MessageLog).add_line(update.line)
            self.show_typing()

    def show_active_changed(self) -> None:
        """The active room changed: redraw the list markers and the middle/right columns."""
        if not self.is_mounted:
            return
        self.query_one(RoomList).show_rooms(self._state)
        self._show_active_room()

    # -- user input --------------------------------------------------------------
    @on(OptionList.OptionSelected, "#rooms")
    async def _room_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option.id is not None:
            await self._controller.open_room(event.option.id)
            # Opening a room is nearly always followed by typing in it.
            self.query_one(MessageInput).focus()

    @on(Input.Submitted, "#message-input")
    async def _message_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            return
        if await self._controller.send_message(event.value):
            event.input.clear()

    @on(Input.Changed, "#message-input")
    async def _message_changed(self, event: Input.Changed) -> None:
        await self._controller.user_typing(event.value)

    def action_page_up(self) -> None:
        """PageUp (messages or message box): scroll the messages up a page; at their top,
        ask the server for older ones (v2)."""
        log = self.query_one(MessageLog)
        if log.at_top:
            self._controller.page_back()
        else:
            log.scroll_page_up(animate=False)

    def action_page_down(self) -> None:
        self.query_one(MessageLog).scroll_page_down(animate=False)

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        self.query_one(UsagePanel).show_for(event.widget)

    def action_focus_rooms(self) -> None:
        self.query_one(RoomList).focus()

    async def action_leave_room(self) -> None:
        await self._controller.leave_active_room()
