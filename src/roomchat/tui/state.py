"""The terminal client's chat state: rooms, members, messages, unread counts.

A plain object with no UI and no I/O, like the original client's state store: feed it
the server's events (:meth:`ChatState.apply`) and the user's local actions
(:meth:`ChatState.activate`, :meth:`ChatState.mark_left`), and read it back to draw.
Each change returns an :class:`Update` saying which room changed, so a UI can redraw
only what it must.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from roomchat.protocol import (
    Event,
    LoginSuccessful,
    RoomParticipation,
    UserJoinedRoom,
    UserMessage,
)

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "ChatLine",
    "ChatState",
    "LineKind",
    "RoomState",
    "Update",
]

#: Messages kept per room, as in the original client; older ones are dropped.
DEFAULT_HISTORY_LIMIT = 100

LineKind = Literal["message", "joined", "left"]


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One line of a room's history: a message, or a join/leave notice."""

    kind: LineKind
    user_id: str
    content: str = ""
    own: bool = False  # written by (or about) this session's user


@dataclass(slots=True)
class RoomState:
    """What the client knows about one room."""

    name: str
    description: str
    history_limit: int = DEFAULT_HISTORY_LIMIT
    joined: bool = False
    members: set[str] = field(default_factory=set)
    lines: collections.deque[ChatLine] = field(init=False)
    unread: int = 0

    def __post_init__(self) -> None:
        self.lines = collections.deque(maxlen=self.history_limit)

    def sorted_members(self) -> list[str]:
        return sorted(self.members)


@dataclass(frozen=True, slots=True)
class Update:
    """What one change touched: ``room`` (None: everything), and a new history line."""

    room: str | None
    line: ChatLine | None = None
    changed: bool = True


class ChatState:
    """The whole chat as one session sees it. Touch it from one thread (the event loop)."""

    def __init__(
        self,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if history_limit < 1:
            raise ValueError("history_limit must be at least 1")
        self.history_limit = history_limit
        self._clock = clock or time.monotonic
        self.user_id: str | None = None
        self.session_id: str | None = None
        self.rooms: dict[str, RoomState] = {}
        self.active_room: str | None = None
        self.connected_at: float | None = None

    # -- reading -------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.user_id is not None

    @property
    def active(self) -> RoomState | None:
        return None if self.active_room is None else self.rooms.get(self.active_room)

    def sorted_rooms(self) -> list[RoomState]:
        return sorted(self.rooms.values(), key=lambda room: room.name)

    def seconds_connected(self) -> int:
        if self.connected_at is None:
            return 0
        return max(0, int(self._clock() - self.connected_at))

    # -- server events -------------------------------------------------------------
    def apply(self, event: Event) -> Update:
        """Apply one server event.

        Events about rooms the client does not know, or has left (a message already on its
        way when the leave was sent), are ignored.
        """
        if isinstance(event, LoginSuccessful):
            return self._login(event)
        if not isinstance(event, UserJoinedRoom | RoomParticipation | UserMessage):
            return Update(None, changed=False)  # v2's events: the TUI speaks v1 for now
        room = self.rooms.get(event.room)
        if room is None:
            return Update(event.room, changed=False)
        if isinstance(event, UserJoinedRoom):
            # The reply to our join_room: the room's users, ourselves included.
            room.joined = True
            room.members = set(event.users)
            return Update(room.name)
        if not room.joined:
            return Update(room.name, changed=False)
        if isinstance(event, RoomParticipation):
            if event.status == "joined":
                room.members.add(event.user_id)
            else:
                room.members.discard(event.user_id)
            line = ChatLine(event.status, event.user_id, own=event.user_id == self.user_id)
            room.lines.append(line)
            return Update(room.name, line)
        # UserMessage: every member gets it, the sender included (PROTOCOL.md, Events).
        own = event.user_id == self.user_id
        line = ChatLine("message", event.user_id, event.content, own=own)
        room.lines.append(line)
        if room.name != self.active_room and not own:
            room.unread += 1
        return Update(room.name, line)

    def _login(self, event: LoginSuccessful) -> Update:
        self.reset()
        self.user_id = event.user_id
        self.session_id = event.session_id
        self.rooms = {
            detail.name: RoomState(detail.name, detail.description, self.history_limit)
            for detail in event.rooms
        }
        self.connected_at = self._clock()
        return Update(None)

    # -- local actions -----------------------------------------------------------------
    def activate(self, room_name: str) -> bool:
        """Make a room the active one and clear its unread count.

        Returns True when the room is not joined yet, i.e. the caller must send
        ``join_room``. Raises KeyError for an unknown room.
        """
        room = self.rooms[room_name]
        self.active_room = room.name
        room.unread = 0
        return not room.joined

    def mark_left(self, room_name: str) -> Update:
        """Record that this session left a room (the server sends the leaver nothing)."""
        room = self.rooms[room_name]
        room.joined = False
        room.members.clear()
        room.unread = 0
        line = ChatLine("left", self.user_id or "", own=True)
        room.lines.append(line)
        if self.active_room == room.name:
            self.active_room = None
        return Update(room.name, line)

    def reset(self) -> None:
        """Forget everything: the connection is gone."""
        self.user_id = None
        self.session_id = None
        self.rooms = {}
        self.active_room = None
        self.connected_at = None
