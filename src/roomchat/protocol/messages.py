"""The commands and events of protocols v1 and v2, as immutable typed messages.

Field names on the wire are the short ones of docs/protocol.md (``r``, ``c``, ...);
in Python they have readable names. msgspec writes the tag (``_ct`` / ``_et``) first
and then the fields in declaration order, which is exactly the original's key order.

Version 2 (docs/protocol.md, "Version 2") adds messages and optional fields. Every
optional field defaults to ``None`` and is left out when it has its default
(``omit_defaults``), so a message built with v1's fields encodes to exactly v1's bytes:
v2 fields only ever appear after the v1 ones, at the end of the object.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec

__all__ = [
    "ARCHIVE_COMMAND_TYPES",
    "COMMAND_TAGS",
    "COMMAND_TYPES",
    "COMMUNITY_COMMAND_TYPES",
    "ERROR_CODES",
    "EVENT_TYPES",
    "FEATURES",
    "MAX_ID_LENGTH",
    "V1_COMMAND_TYPES",
    "V1_EVENT_TYPES",
    "V2_COMMAND_TYPES",
    "V2_EVENT_TYPES",
    "Command",
    "Error",
    "ErrorCode",
    "Event",
    "Feature",
    "Hello",
    "History",
    "HistoryMessage",
    "JoinRoom",
    "LeaveRoom",
    "LoginSuccessful",
    "Message",
    "ParticipationStatus",
    "Ping",
    "Pong",
    "Quit",
    "RateLimited",
    "RoomDetail",
    "RoomParticipation",
    "SendMessage",
    "ServerPing",
    "ServerPong",
    "Shutdown",
    "UserJoinedRoom",
    "UserMessage",
    "Welcome",
]

from roomchat.protocol.archive import (
    DeleteMessage,
    EditMessage,
    HistoryPage,
    MarkRead,
    MessageDeleted,
    MessageEdited,
    SetRetention,
    StartTyping,
    Typing,
)
from roomchat.protocol.base import MAX_ID_LENGTH, CommandBase, Count, EventBase, Id
from roomchat.protocol.community import (
    ArchiveRoom,
    AuditLog,
    AuditRequest,
    Ban,
    CloseDm,
    CreateRoom,
    Invite,
    Kick,
    Moderated,
    Mute,
    OpenDm,
    RoomAdded,
    RoomRemoved,
    Rooms,
    SetRole,
    SlowMode,
    Unban,
    Unmute,
)

# --- commands (client -> server) -------------------------------------------------


class JoinRoom(CommandBase, frozen=True, tag="join_room"):
    room: str = msgspec.field(name="r")
    # v2: at most one of history / after.
    history: Count | None = msgspec.field(default=None, name="h")  # the last N messages
    after: Count | None = None  # every message with a sequence number above this one
    id: Id | None = None
    # with ``after``: the epoch of the history ``after`` counts in (a ``history``'s ``e``;
    # after ``id``, so that v1-era positional uses keep their meaning)
    epoch: Annotated[str, msgspec.Meta(max_length=64)] | None = msgspec.field(
        default=None, name="e"
    )


class LeaveRoom(CommandBase, frozen=True, tag="leave_room"):
    room: str = msgspec.field(name="r")
    id: Id | None = None


class SendMessage(CommandBase, frozen=True, tag="send_message"):
    room: str = msgspec.field(name="r")
    content: str = msgspec.field(name="c")
    id: Id | None = None


class Quit(CommandBase, frozen=True, tag="quit"):
    id: Id | None = None


# --- v2 commands ---------------------------------------------------------------------


class Hello(CommandBase, frozen=True, tag="hello"):
    """v2: the first command of a session that opts in to version 2."""

    version: int = msgspec.field(name="v")
    name: str | None = None
    token: str | None = None
    id: Id | None = None


class Ping(CommandBase, frozen=True, tag="ping"):
    """v2: the client asks for a :class:`ServerPong` (liveness, round-trip time)."""

    id: Id | None = None


class Pong(CommandBase, frozen=True, tag="pong"):
    """v2: the client's answer to a :class:`ServerPing`."""

    id: Id | None = None


# --- events (server -> client) ---------------------------------------------------


class RoomDetail(msgspec.Struct, frozen=True, gc=False):
    """One room as listed in ``login_successful``."""

    name: str = msgspec.field(name="n")
    description: str = msgspec.field(name="d")


class LoginSuccessful(EventBase, frozen=True, tag="login_successful"):
    session_id: str = msgspec.field(name="s")
    user_id: str = msgspec.field(name="u")
    rooms: tuple[RoomDetail, ...] = msgspec.field(name="rs")


class UserJoinedRoom(EventBase, frozen=True, tag="user_joined_room"):
    room: str = msgspec.field(name="r")
    users: tuple[str, ...] = msgspec.field(name="us")


ParticipationStatus = Literal["joined", "left"]


class RoomParticipation(EventBase, frozen=True, tag="room_participation"):
    room: str = msgspec.field(name="r")
    user_id: str = msgspec.field(name="u")
    status: ParticipationStatus = msgspec.field(name="s")
    timestamp: int | None = msgspec.field(default=None, name="ts")  # v2: server ms since epoch


class UserMessage(EventBase, frozen=True, tag="user_message"):
    room: str = msgspec.field(name="r")
    user_id: str = msgspec.field(name="u")
    content: str = msgspec.field(name="c")
    # v2 only, always both: the room's sequence number and the server time in ms.
    seq: int | None = msgspec.field(default=None, name="q")
    timestamp: int | None = msgspec.field(default=None, name="ts")


# --- v2 events -----------------------------------------------------------------------

Feature = Literal[
    "errors",
    "names",
    "history",
    "heartbeat",
    "flood_control",
    "shutdown_notice",
    "rooms",
    "moderation",
    "direct_messages",
    "paging",
    "edits",
    "read_markers",
    "typing",
]
#: Every feature of version 2, in the order the server lists them in ``welcome``.
FEATURES: tuple[Feature, ...] = get_args(Feature)

ErrorCode = Literal[
    "unknown_room",
    "already_joined",
    "not_member",
    "bad_command",
    "line_too_long",
    "rate_limited",
    "name_taken",
    "name_invalid",
    "not_authorised",
    "shutting_down",
    "idle_timeout",
    "auth_failed",
    "room_exists",
    "room_invalid",
    "banned",
    "muted",
    "slow_mode",
    "archived",
    "unavailable",
    "not_found",
]
#: The stable error codes of docs/protocol.md. Clients must accept codes not listed
#: here (a later server may add some), so ``Error.code`` is typed ``str``.
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)


class Welcome(EventBase, frozen=True, tag="welcome"):
    """v2: the answer to ``hello``; from here on the session speaks version 2."""

    version: int = msgspec.field(name="v")
    session_id: str = msgspec.field(name="s")
    user_id: str = msgspec.field(name="u")
    token: str = msgspec.field(name="t")
    features: tuple[str, ...] = msgspec.field(name="f")
    heartbeat: int = msgspec.field(name="hb")  # seconds
    id: str | None = None  # the hello's id


class Error(EventBase, frozen=True, tag="error"):
    """v2: a command failed (or the session is about to be closed, see the code)."""

    code: str
    msg: str
    command: str | None = msgspec.field(default=None, name="cmd")  # the command's _ct
    id: str | None = None  # the command's id


class HistoryMessage(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One past message of a room, in :class:`History`: as it is now (an edited one with
    its last edit's time; a deleted one a tombstone, its content empty)."""

    user_id: str = msgspec.field(name="u")
    content: str = msgspec.field(name="c")
    seq: int = msgspec.field(name="q")
    timestamp: int = msgspec.field(name="ts")
    edited: int | None = msgspec.field(default=None, name="ed")
    deleted: bool = msgspec.field(default=False, name="del")


class History(EventBase, frozen=True, tag="history"):
    """v2: sent on join, right after ``user_joined_room``."""

    room: str = msgspec.field(name="r")
    messages: tuple[HistoryMessage, ...] = msgspec.field(name="ms")  # oldest first
    seq: int = msgspec.field(name="q")  # the room's latest sequence number at the join
    gap: bool  # some messages after ``after`` are no longer held (always on the wire)
    #: The epoch of the room's numbering: it changes exactly when the numbering restarts.
    epoch: str | None = msgspec.field(default=None, name="e")
    id: str | None = None  # a ``history`` command's id (a page)


class ServerPing(EventBase, frozen=True, tag="ping"):
    """v2: the server checks the client is alive; answer with :class:`Pong`."""


class ServerPong(EventBase, frozen=True, tag="pong"):
    """v2: the answer to the client's :class:`Ping`."""

    id: str | None = None


class RateLimited(EventBase, frozen=True, tag="rate_limited"):
    """v2: the client sends too fast; the server stops reading it for ``retry_ms``."""

    retry_ms: int


class Shutdown(EventBase, frozen=True, tag="shutdown"):
    """v2: the server is about to close the connection; reconnect after ``reconnect_ms``."""

    reconnect_ms: int
    msg: str


#: Everything a server decodes: v1's commands and v2's. A v1 session ignores v2's
#: commands (except a first ``hello``) and v2's optional fields.
Command = (
    JoinRoom
    | LeaveRoom
    | SendMessage
    | Quit
    | Hello
    | Ping
    | Pong
    | CreateRoom
    | ArchiveRoom
    | Invite
    | Kick
    | Ban
    | Unban
    | Mute
    | Unmute
    | SetRole
    | SlowMode
    | AuditRequest
    | OpenDm
    | CloseDm
    | HistoryPage
    | EditMessage
    | DeleteMessage
    | MarkRead
    | StartTyping
    | SetRetention
)
#: Everything a client decodes. A session that never said ``hello`` gets v1's only.
Event = (
    LoginSuccessful
    | UserJoinedRoom
    | RoomParticipation
    | UserMessage
    | Welcome
    | Error
    | History
    | ServerPing
    | ServerPong
    | RateLimited
    | Shutdown
    | Rooms
    | RoomAdded
    | RoomRemoved
    | Moderated
    | AuditLog
    | MessageEdited
    | MessageDeleted
    | Typing
)
Message = Command | Event

V1_COMMAND_TYPES: tuple[type[Command], ...] = (JoinRoom, LeaveRoom, SendMessage, Quit)
V2_COMMAND_TYPES: tuple[type[Command], ...] = (Hello, Ping, Pong)
#: v2's community commands (the rooms, moderation and direct_messages features).
COMMUNITY_COMMAND_TYPES: tuple[type[Command], ...] = (
    CreateRoom,
    ArchiveRoom,
    Invite,
    Kick,
    Ban,
    Unban,
    Mute,
    Unmute,
    SetRole,
    SlowMode,
    AuditRequest,
    OpenDm,
    CloseDm,
)
#: v2's lasting-history commands (the paging, edits, read_markers and typing features).
ARCHIVE_COMMAND_TYPES: tuple[type[Command], ...] = (
    HistoryPage,
    EditMessage,
    DeleteMessage,
    MarkRead,
    StartTyping,
    SetRetention,
)
COMMAND_TYPES: tuple[type[Command], ...] = (
    V1_COMMAND_TYPES + V2_COMMAND_TYPES + COMMUNITY_COMMAND_TYPES + ARCHIVE_COMMAND_TYPES
)
V1_EVENT_TYPES: tuple[type[Event], ...] = (
    LoginSuccessful,
    UserJoinedRoom,
    RoomParticipation,
    UserMessage,
)
V2_EVENT_TYPES: tuple[type[Event], ...] = (
    Welcome,
    Error,
    History,
    ServerPing,
    ServerPong,
    RateLimited,
    Shutdown,
    Rooms,
    RoomAdded,
    RoomRemoved,
    Moderated,
    AuditLog,
    MessageEdited,
    MessageDeleted,
    Typing,
)
EVENT_TYPES: tuple[type[Event], ...] = V1_EVENT_TYPES + V2_EVENT_TYPES

#: Each command's ``_ct``, as the wire spells it (echoed in v2 errors as ``cmd``).
COMMAND_TAGS: dict[type[Command], str] = {
    kind: str(kind.__struct_config__.tag) for kind in COMMAND_TYPES
}
