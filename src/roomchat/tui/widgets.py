"""The chat page's widgets. Each draws one part of a :class:`ChatState`; none does I/O."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.events import Resize
from textual.widget import Widget
from textual.widgets import Input, OptionList, RichLog, Static
from textual.widgets.option_list import Option

from roomchat.tui.state import ChatLine, ChatState, RoomState

__all__ = [
    "MemberList",
    "MessageInput",
    "MessageLog",
    "RoomHeader",
    "RoomList",
    "StatusLine",
    "UsagePanel",
    "UserInfo",
    "format_line",
    "room_prompt",
]


def room_prompt(room: RoomState, active: bool) -> Text:
    """One row of the room list: active marker, joined marker, name, unread count."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append("▸ " if active else "  ", style="bold")
    text.append("● " if room.joined else "○ ", style="green" if room.joined else "dim")
    text.append(room.name, style="bold" if active else "")
    if room.unread:
        text.append(f" ({room.unread})", style="bold yellow")
    return text


#: What a deleted message shows instead of its content.
TOMBSTONE = "message deleted"


def format_line(line: ChatLine) -> Text:
    """A history line: ``@user: text``; join/leave notices in italics; own lines marked;
    messages from before the join (the room's history) dimmed; the client's own
    separators (history, missed messages, reconnected) as ``── text ──``. v2: an edited
    message ends with ``(edited)``, a deleted one shows :data:`TOMBSTONE`, and each
    message starts with its number (``#42``, for ``/edit`` and ``/delete``)."""
    marker = "» " if line.own else "  "
    user_style = "bold cyan" if line.own else "bold"
    if line.kind == "notice":
        return Text(f"── {line.content} ──", style="dim yellow", justify="center")
    if line.kind == "message":
        text = Text(style="dim" if line.past else "")
        if line.seq is not None:
            text.append(f"#{line.seq} ", style="dim")
        text.append(marker, style="bold cyan")
        text.append(f"@{line.user_id}", style=user_style)
        text.append(": ")
        if line.deleted:
            text.append(TOMBSTONE, style="italic dim")
        else:
            text.append(line.content)
        if line.edited:
            text.append(" (edited)", style="italic dim")
        return text
    verb = "joined" if line.kind == "joined" else "left"
    who = "you" if line.own else f"@{line.user_id}"
    return Text(f"{marker}{who} {verb} the room", style="italic dim")


class RoomList(OptionList):
    """Every room the server offers, sorted by name. Enter (or a click) opens a room."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("k", "cursor_up", "Up", show=False),
        Binding("j", "cursor_down", "Down", show=False),
    ]

    def show_rooms(self, state: ChatState) -> None:
        rooms = state.sorted_rooms()
        names = [room.name for room in rooms]
        current = [option.id for option in self.options]
        if names == current:
            for room in rooms:
                self.replace_option_prompt(
                    room.name, room_prompt(room, room.name == state.active_room)
                )
            return
        self.set_options(
            Option(room_prompt(room, room.name == state.active_room), id=room.name)
            for room in rooms
        )
        if rooms:
            self.highlighted = 0

    def show_room(self, state: ChatState, name: str) -> None:
        room = state.rooms.get(name)
        if room is None:
            return
        self.replace_option_prompt(name, room_prompt(room, name == state.active_room))


class UserInfo(Static):
    """This session's user id and how long it has been connected."""

    def __init__(self, state: ChatState, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._state = state

    def on_mount(self) -> None:
        self.show_info()
        self.set_interval(1.0, self.show_info)

    def show_info(self) -> None:
        text = Text()
        text.append("user  ", style="dim")
        text.append(f"@{self._state.user_id or '-'}\n", style="bold cyan")
        text.append("online ", style="dim")
        text.append(f"{self._state.seconds_connected()}s")
        self.update(text)


class RoomHeader(Static):
    """The active room's name and description."""

    def show_room(self, state: ChatState) -> None:
        room = state.active
        if room is None:
            self.update(Text("No room open: pick one from the list and press Enter", "dim"))
            return
        text = Text(f"#{room.name}", style="bold")
        if not room.joined:
            text.append("  (joining…)", style="italic dim")
        text.append("\n")
        text.append(room.description, style="dim")
        self.update(text)


class MessageLog(RichLog):
    """The active room's history, newest at the bottom. Long messages wrap. PageUp at the
    top asks for older messages (v2: the screen's ``page_up`` action); the border's
    subtitle says who is typing."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pageup", "screen.page_up", "Page up / older", show=False),
    ]

    def __init__(self, history_limit: int, *, id: str | None = None) -> None:
        # min_width=1: wrap at the log's width (RichLog's default renders 78 columns).
        super().__init__(id=id, wrap=True, markup=False, min_width=1)
        self._history_limit = history_limit
        self._room: RoomState | None = None
        self._written = 0  # history lines written since the last rebuild
        self._wrapped_width = 0

    def show_room(self, room: RoomState | None, *, keep_view: bool = False) -> None:
        """Draw ``room``'s lines afresh (newest in view); ``keep_view``: the same room
        redrawn, with the lines in view kept in view (lines came in on top, or one
        changed)."""
        from_bottom = len(self.lines) - round(self.scroll_y)
        keep_view = keep_view and room is self._room and self._size_known
        self._room = room
        self.clear()
        self._written = 0
        if room is not None:
            for line in room.lines:
                self.add_line(line, scroll_end=False if keep_view else None)
        if keep_view:
            self.scroll_to(y=max(0, len(self.lines) - from_bottom), animate=False, immediate=True)

    def add_line(self, line: ChatLine, *, scroll_end: bool | None = None) -> None:
        room = self._room
        if room is not None and self._written >= 2 * max(self._history_limit, len(room.lines)):
            # Keep the log as bounded as the room's history, rebuilding now and then
            # rather than on every message of a busy room.
            self.show_room(self._room)
            return
        self.write(format_line(line), scroll_end=scroll_end)
        self._written += 1

    @property
    def at_top(self) -> bool:
        """Nothing above the view: a page up would ask for older messages."""
        return self.scroll_y <= 0

    def plain_lines(self) -> list[str]:
        """The log as plain text, one string per screen line (wrapped lines are split)."""
        return [strip.text for strip in self.lines]

    def on_resize(self, event: Resize) -> None:
        # Lines are wrapped when written: re-wrap the (bounded) history at a new width.
        # (RichLog's own handler runs after this one and renders deferred writes.)
        width = event.size.width
        if self._size_known and width != self._wrapped_width and self._wrapped_width:
            self.show_room(self._room)
        self._wrapped_width = width


class MemberList(Static):
    """The active room's users, with their count."""

    def show_members(self, state: ChatState) -> None:
        room = state.active
        members = room.sorted_members() if room is not None else []
        text = Text(f"Users ({len(members)})\n", style="bold")
        for user in members:
            if user == state.user_id:
                text.append(f"@{user} (you)\n", style="bold cyan")
            else:
                text.append(f"@{user}\n")
        self.update(text)


class StatusLine(Static):
    """One line at the bottom of the chat page: protocol version, user, connection state,
    the latest error or server notice."""

    def show_status(self, state: ChatState) -> None:
        text = Text(" " + state.status_text(), no_wrap=True, overflow="ellipsis")
        if state.status_error:
            text.stylize("bold red")
        elif state.reconnecting or state.status:
            text.stylize("bold yellow")
        self.update(text)


class MessageInput(Input):
    """Where messages are typed; Enter sends to the active room; PageUp scrolls the
    messages (and at their top asks for older ones)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("pageup", "screen.page_up", "Page up / older", show=False),
        Binding("pagedown", "screen.page_down", "Page down", show=False),
    ]


_USAGE: dict[str, list[tuple[str, str]]] = {
    "rooms": [
        ("↑/↓", "move"),
        ("Enter", "open room"),
        ("Ctrl+L", "leave room"),
        ("Tab", "next panel"),
        ("Ctrl+C", "quit"),
    ],
    "input": [
        ("Enter", "send message"),
        ("PgUp", "older messages"),
        ("Esc", "back to rooms"),
        ("Ctrl+L", "leave room"),
        ("Tab", "next panel"),
        ("Ctrl+C", "quit"),
    ],
    "log": [
        ("↑/↓", "scroll"),
        ("PgUp/Dn", "page, older"),
        ("Esc", "back to rooms"),
        ("Tab", "next panel"),
        ("Ctrl+C", "quit"),
    ],
}


class UsagePanel(Static):
    """The keys that work for whatever has focus."""

    def show_for(self, focused: Widget | None) -> None:
        if isinstance(focused, Input):
            keys = _USAGE["input"]
        elif isinstance(focused, RichLog):
            keys = _USAGE["log"]
        else:
            keys = _USAGE["rooms"]
        text = Text()
        width = max(len(key) for key, _ in keys)
        for key, what in keys:
            text.append(key.ljust(width), style="bold yellow")
            text.append(f" {what}\n")
        text.rstrip()
        self.update(text)
