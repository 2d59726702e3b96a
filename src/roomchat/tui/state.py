"""The terminal client's chat state: rooms, members, messages, unread counts, edits and
deletions, older pages of history, who is typing.

A plain object with no UI and no I/O, like the original client's state store: feed it
the server's events (:meth:`ChatState.apply`) and the user's local actions
(:meth:`ChatState.activate`, :meth:`ChatState.mark_left`), and read it back to draw.
Each change returns an :class:`Update` saying which room changed, so a UI can redraw
only what it must.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from roomchat.client import (
    ClientEvent,
    Disconnected,
    HistoryEnd,
    HistoryStart,
    MissedMessages,
    Reconnected,
)
from roomchat.protocol import (
    Error,
    History,
    HistoryMessage,
    LoginSuccessful,
    MessageDeleted,
    MessageEdited,
    Moderated,
    RateLimited,
    RoomAdded,
    RoomListing,
    RoomParticipation,
    RoomRemoved,
    Shutdown,
    Typing,
    UserJoinedRoom,
    UserMessage,
)

__all__ = [
    "DEFAULT_HISTORY_LIMIT",
    "JOIN_HISTORY",
    "PAGE_SIZE",
    "TYPING_SHOWN",
    "ChatLine",
    "ChatState",
    "HistoryEnd",
    "HistoryStart",
    "LineKind",
    "RoomState",
    "StateEvent",
    "Update",
]

#: Messages kept per room, as in the original client; older ones are dropped.
DEFAULT_HISTORY_LIMIT = 100
#: v2: how many past messages a join asks for (shown above the live ones).
JOIN_HISTORY = 50
#: v2 (``paging``): how many older messages one page back asks for.
PAGE_SIZE = 50
#: Seconds "X is typing…" is shown after a ``typing`` event (the server passes one on
#: at most every 3 s while the user types).
TYPING_SHOWN = 5.0

#: ``notice``: a separator the client itself adds (history, gap, reconnected).
LineKind = Literal["message", "joined", "left", "notice"]


@dataclass(frozen=True, slots=True)
class ChatLine:
    """One line of a room's history: a message, a join/leave notice, or a separator."""

    kind: LineKind
    user_id: str
    content: str = ""
    own: bool = False  # written by (or about) this session's user
    past: bool = False  # a message from the room's history, sent before we joined
    seq: int | None = None  # v2: the message's number in the room (``q``)
    edited: bool = False  # v2: its content was replaced (shown "(edited)")
    deleted: bool = False  # v2: it was deleted (shown as a tombstone, content empty)


#: Everything :meth:`ChatState.apply` takes: the server's events, the reconnecting
#: client's own (Disconnected, Reconnected, MissedMessages) and its history markers
#: (HistoryStart, HistoryEnd: re-exported here, they are roomchat.client's).
StateEvent = ClientEvent

GAP_NOTICE = "some messages were missed"
UNREAD_NOTICE = "unread"
START_NOTICE = "start of the room's history"
RESTARTED_NOTICE = "the room's history restarted: older pages are gone"
_PAST = {"kick": "kicked", "ban": "banned", "mute": "muted"}
HISTORY_NOTICE = "history"
RECONNECTED_NOTICE = "reconnected"


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
    #: While a history is being replayed: "history" (first join) or "catch_up".
    replaying: Literal["history", "catch_up"] | None = None
    replayed: int = 0  # messages of the current replay so far
    #: v2 (``read_markers``): the highest ``q`` read, from the login's ``rooms``.
    read_marker: int | None = None
    #: Who is typing (not us), and until when (the state's clock).
    typing: dict[str, float] = field(default_factory=dict)
    #: A page back found nothing more: the room's history starts here.
    history_done: bool = False

    def __post_init__(self) -> None:
        self.lines = collections.deque(maxlen=self.history_limit)

    def sorted_members(self) -> list[str]:
        return sorted(self.members)

    def oldest_seq(self) -> int | None:
        """The lowest message number shown (where a page back starts)."""
        return min((line.seq for line in self.lines if line.seq is not None), default=None)

    def newest_seq(self) -> int | None:
        return max((line.seq for line in self.lines if line.seq is not None), default=None)

    def own_last_seq(self) -> int | None:
        """The number of this user's last message shown (not deleted), for /edit and
        /delete without a number."""
        for line in reversed(self.lines):
            if line.kind == "message" and line.own and line.seq is not None and not line.deleted:
                return line.seq
        return None

    def _replace(self, seq: int, **changes: object) -> bool:
        for index, line in enumerate(self.lines):
            if line.kind == "message" and line.seq == seq:
                self.lines[index] = dataclasses.replace(line, **changes)  # type: ignore[arg-type]
                return True
        return False


@dataclass(frozen=True, slots=True)
class Update:
    """What one change touched: ``room`` (None: everything), and a new history line."""

    room: str | None
    line: ChatLine | None = None
    changed: bool = True
    redraw: bool = False  # the room's lines changed in bulk: redraw its log
    status: bool = False  # only the status line changed
    typing: bool = False  # only who is typing in the room changed
    #: redraw keeping the view on the lines it shows (older ones came in at the top,
    #: or one line changed: an edit, a deletion)
    keep_view: bool = False


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
        # The status line: protocol version, connection, the latest error or notice.
        self.version = 0  # 0: not connected yet
        self.reconnecting = False
        self.status: str = ""  # what to say besides the version ("" : all is well)
        self.status_error = False  # the status is an error (drawn in red)
        self._shutdown_msg: str | None = None

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
    def status_text(self) -> str:
        """The status line's text (the widget styles it)."""
        parts = [f"v{self.version}" if self.version else "connecting…"]
        if self.user_id is not None:
            parts.append(f"@{self.user_id}")
        if self.status:
            parts.append(self.status)
        elif not self.reconnecting and self.version:
            parts.append("connected")
        return "  ·  ".join(parts)

    def session(self, user_id: str, version: int) -> Update:
        """The session's user id and protocol version (v2: the welcome's)."""
        self.user_id = user_id
        self.version = version
        return Update(None)

    def _set_status(self, text: str, *, error: bool = False) -> Update:
        self.status, self.status_error = text, error
        return Update(None, status=True)

    def apply(self, event: StateEvent) -> Update:
        """Apply one server event (or one of the reconnecting client's).

        Events about rooms the client does not know, or has left (a message already on its
        way when the leave was sent), are ignored.
        """
        if isinstance(event, LoginSuccessful):
            return self._login(event)
        if isinstance(event, Error):
            return self._set_status(f"error {event.code}: {event.msg}", error=True)
        if isinstance(event, Shutdown):
            self._shutdown_msg = event.msg or "server restarting"
            seconds = math.ceil(event.reconnect_ms / 1000)
            return self._set_status(f"{self._shutdown_msg}, reconnecting in {seconds} s")
        if isinstance(event, RateLimited):
            return self._set_status(f"sending too fast: slowed down for {event.retry_ms} ms")
        if isinstance(event, Disconnected):
            return self._disconnected(event)
        if isinstance(event, Reconnected):
            self.reconnecting = False
            self._shutdown_msg = None
            self.user_id, self.version = event.user_id, event.version
            for joined in self.rooms.values():
                if joined.joined:
                    joined.lines.append(ChatLine("notice", "", RECONNECTED_NOTICE))
            self._set_status("")
            return Update(None)
        if isinstance(event, HistoryStart | HistoryEnd | MissedMessages):
            return self._history(event)
        if isinstance(event, RoomAdded):
            return self.add_rooms((event.room,))
        if isinstance(event, RoomRemoved):
            return self._removed(event)
        if isinstance(event, Moderated):
            return self._moderated(event)
        if isinstance(event, MessageEdited | MessageDeleted):
            return self._changed(event)
        if isinstance(event, Typing):
            return self._typing(event)
        if not isinstance(event, UserJoinedRoom | RoomParticipation | UserMessage):
            return Update(None, changed=False)  # pings, pongs, welcome: nothing to show
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
        # UserMessage: every member gets it, the sender included (docs/protocol.md, Events).
        own = event.user_id == self.user_id
        past = room.replaying == "history"
        if past and room.replayed == 0:
            room.lines.append(ChatLine("notice", "", HISTORY_NOTICE))
        if room.replaying is not None:
            room.replayed += 1
        if (
            past
            and room.read_marker is not None
            and event.seq is not None
            and event.seq > room.read_marker
        ):
            room.read_marker = None  # the separator once, before the first one unread
            room.lines.append(ChatLine("notice", "", UNREAD_NOTICE))
        room.typing.pop(event.user_id, None)
        line = ChatLine("message", event.user_id, event.content, own=own, past=past, seq=event.seq)
        room.lines.append(line)
        if room.name != self.active_room and not own and not past:
            room.unread += 1
        # A replay's lines are drawn all at once at its end (one redraw, not one a line).
        return Update(room.name, None if room.replaying else line, changed=not room.replaying)

    def _disconnected(self, event: Disconnected) -> Update:
        self.reconnecting = True
        seconds = event.retry_in
        when = f"{math.ceil(seconds)} s" if seconds >= 1 else f"{seconds:.1f} s"
        if self._shutdown_msg is not None:
            return self._set_status(f"{self._shutdown_msg}, reconnecting in {when}")
        return self._set_status(f"reconnecting… (next try in {when}: {event.reason})", error=True)

    def _history(self, event: HistoryStart | HistoryEnd | MissedMessages) -> Update:
        room = self.rooms.get(event.room)
        if room is None:
            return Update(event.room, changed=False)
        if isinstance(event, HistoryStart):
            room.replaying = "catch_up" if event.catch_up else "history"
            room.replayed = 0
            return Update(room.name, changed=False)
        if isinstance(event, HistoryEnd):
            changed = room.replayed > 0
            room.replaying, room.replayed = None, 0
            return Update(room.name, changed=changed, redraw=changed)
        # MissedMessages: some messages are lost for good (or v1: cannot be known).
        room.lines.append(ChatLine("notice", "", GAP_NOTICE))
        return Update(room.name, room.lines[-1])

    def _changed(self, event: MessageEdited | MessageDeleted) -> Update:
        """A message edited or deleted: its line changes in place (if it is shown)."""
        room = self.rooms.get(event.room)
        if room is None:
            return Update(event.room, changed=False)
        if isinstance(event, MessageEdited):
            found = room._replace(event.seq, content=event.content, edited=True)
        else:
            found = room._replace(event.seq, content="", deleted=True)
        # While a history is replayed, its end redraws everything at once.
        changed = found and room.replaying is None
        return Update(room.name, changed=changed, redraw=changed, keep_view=True)

    def _typing(self, event: Typing) -> Update:
        room = self.rooms.get(event.room)
        if room is None or not room.joined or event.user_id == self.user_id:
            return Update(event.room, changed=False)
        room.typing[event.user_id] = self._clock() + TYPING_SHOWN
        return Update(room.name, typing=True)

    def typing_text(self, room_name: str | None = None) -> str:
        """ "bob is typing…" for the room (default: the open one), or "" (expired ones
        are forgotten)."""
        room = self.rooms.get(room_name or self.active_room or "")
        if room is None:
            return ""
        now = self._clock()
        for user in [u for u, until in room.typing.items() if until <= now]:
            del room.typing[user]
        users = sorted(room.typing)
        if not users:
            return ""
        if len(users) == 1:
            return f"{users[0]} is typing…"
        if len(users) <= 3:
            return f"{', '.join(users[:-1])} and {users[-1]} are typing…"
        return f"{len(users)} people are typing…"

    def prepend(self, room_name: str, page: History) -> Update:
        """An older page of the room's history (the answer to a page back): its
        messages below the oldest shown go on top, oldest first; an empty page says the
        history starts here."""
        room = self.rooms.get(room_name)
        if room is None:
            return Update(room_name, changed=False)
        oldest = room.oldest_seq()
        if page.gap:  # the numbering restarted: "before" meant another history
            room.history_done = True
            room.lines.appendleft(ChatLine("notice", "", RESTARTED_NOTICE))
            return Update(room.name, redraw=True, keep_view=True)
        older = [m for m in page.messages if oldest is None or m.seq < oldest]
        new_lines = [self._past_line(message) for message in older]
        if not older:
            room.history_done = True
            new_lines = [ChatLine("notice", "", START_NOTICE)]
        # Keep the "history" separator on top; older pages go right under it.
        head = []
        if room.lines and room.lines[0] == ChatLine("notice", "", HISTORY_NOTICE):
            head.append(room.lines.popleft())
        elif older:
            head.append(ChatLine("notice", "", HISTORY_NOTICE))
        # Pages back make the room keep more lines (each page one the user asked for):
        # all it shows, and room for history_limit more before the oldest go.
        lines = [*head, *new_lines, *room.lines]
        room.lines = collections.deque(lines, maxlen=len(lines) + room.history_limit)
        return Update(room.name, redraw=True, keep_view=True)

    def _past_line(self, message: HistoryMessage) -> ChatLine:
        return ChatLine(
            "message",
            message.user_id,
            message.content,
            own=message.user_id == self.user_id,
            past=True,
            seq=message.seq,
            edited=message.edited is not None and not message.deleted,
            deleted=message.deleted,
        )

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

    def add_rooms(self, listings: tuple[RoomListing, ...] | list[RoomListing]) -> Update:
        """Rooms this session can see besides the login's: created at run time, private
        ones, direct messages (shown as ``dm:…``). v2 with read markers: the unread
        count and the marker of each room that has one."""
        for listing in listings:
            if listing.name not in self.rooms:
                label = f"direct messages with {listing.dm}" if listing.dm else listing.description
                self.rooms[listing.name] = RoomState(listing.name, label, self.history_limit)
            room = self.rooms[listing.name]
            if listing.unread is not None and listing.name != self.active_room:
                room.unread = listing.unread
            if listing.read is not None:
                room.read_marker = listing.read
        return Update(None)

    def _removed(self, event: RoomRemoved) -> Update:
        if self.rooms.pop(event.room, None) is None:
            return Update(None, changed=False)
        if self.active_room == event.room:
            self.active_room = None
        self._set_status(f"#{event.room} is gone: {event.why or 'removed'}")
        return Update(None)

    def _moderated(self, event: Moderated) -> Update:
        """A moderation action: a notice in the room; told plainly when it is ours."""
        whom = f" {event.user}" if event.user else ""
        details = [event.why] if event.why else []
        if event.seconds is not None:
            details.append(f"{event.seconds} s")
        if event.role is not None:
            details.append(event.role)
        text = f"{event.by}: {event.what}{whom}" + (f" ({', '.join(details)})" if details else "")
        mine = (
            event.user is not None
            and self.user_id is not None
            and (event.user.lower() == self.user_id.lower())
        )
        room = self.rooms.get(event.room)
        if mine and event.what in ("kick", "ban", "mute"):
            where = f"#{event.room}" if event.room else "this server"
            self._set_status(
                f"you were {_PAST[event.what]} in {where}: {event.why or 'no reason'}", error=True
            )
            if room is not None and event.what in ("kick", "ban"):
                room.joined = False
                room.members.discard(self.user_id or "")
        line = ChatLine("notice", "", text)
        if room is not None:
            room.lines.append(line)
        if mine or room is None:
            return Update(None)  # the status line and the room list too
        return Update(room.name, line)

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
        self.version = 0
        self.reconnecting = False
        self.status, self.status_error = "", False
        self._shutdown_msg = None
