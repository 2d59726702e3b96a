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

from typing import Annotated, Final, Literal, get_args

import msgspec

__all__ = [
    "COMMAND_TAGS",
    "COMMAND_TYPES",
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

#: Longest client-chosen command ``id`` (characters).
MAX_ID_LENGTH: Final = 64

# A client-chosen correlation id, echoed in the error, pong or welcome it causes.
_Id = Annotated[str, msgspec.Meta(max_length=MAX_ID_LENGTH)]
_Count = Annotated[int, msgspec.Meta(ge=0)]

# gc=False: these structs never hold reference cycles, so the garbage collector need
# not track them (cheaper to create, and they are created per message).


# omit_defaults=True: v2's optional fields (all defaulting to None) are left out when
# unset, which keeps every v1 message byte-identical to v1.


class _Command(msgspec.Struct, frozen=True, gc=False, tag_field="_ct", omit_defaults=True):
    pass


class _Event(msgspec.Struct, frozen=True, gc=False, tag_field="_et", omit_defaults=True):
    pass


# --- commands (client -> server) -------------------------------------------------


class JoinRoom(_Command, frozen=True, tag="join_room"):
    room: str = msgspec.field(name="r")
    # v2: at most one of history / after.
    history: _Count | None = msgspec.field(default=None, name="h")  # the last N messages
    after: _Count | None = None  # every message with a sequence number above this one
    id: _Id | None = None


class LeaveRoom(_Command, frozen=True, tag="leave_room"):
    room: str = msgspec.field(name="r")
    id: _Id | None = None


class SendMessage(_Command, frozen=True, tag="send_message"):
    room: str = msgspec.field(name="r")
    content: str = msgspec.field(name="c")
    id: _Id | None = None


class Quit(_Command, frozen=True, tag="quit"):
    id: _Id | None = None


# --- v2 commands ---------------------------------------------------------------------


class Hello(_Command, frozen=True, tag="hello"):
    """v2: the first command of a session that opts in to version 2."""

    version: int = msgspec.field(name="v")
    name: str | None = None
    token: str | None = None
    id: _Id | None = None


class Ping(_Command, frozen=True, tag="ping"):
    """v2: the client asks for a :class:`ServerPong` (liveness, round-trip time)."""

    id: _Id | None = None


class Pong(_Command, frozen=True, tag="pong"):
    """v2: the client's answer to a :class:`ServerPing`."""

    id: _Id | None = None


# --- events (server -> client) ---------------------------------------------------


class RoomDetail(msgspec.Struct, frozen=True, gc=False):
    """One room as listed in ``login_successful``."""

    name: str = msgspec.field(name="n")
    description: str = msgspec.field(name="d")


class LoginSuccessful(_Event, frozen=True, tag="login_successful"):
    session_id: str = msgspec.field(name="s")
    user_id: str = msgspec.field(name="u")
    rooms: tuple[RoomDetail, ...] = msgspec.field(name="rs")


class UserJoinedRoom(_Event, frozen=True, tag="user_joined_room"):
    room: str = msgspec.field(name="r")
    users: tuple[str, ...] = msgspec.field(name="us")


ParticipationStatus = Literal["joined", "left"]


class RoomParticipation(_Event, frozen=True, tag="room_participation"):
    room: str = msgspec.field(name="r")
    user_id: str = msgspec.field(name="u")
    status: ParticipationStatus = msgspec.field(name="s")
    timestamp: int | None = msgspec.field(default=None, name="ts")  # v2: server ms since epoch


class UserMessage(_Event, frozen=True, tag="user_message"):
    room: str = msgspec.field(name="r")
    user_id: str = msgspec.field(name="u")
    content: str = msgspec.field(name="c")
    # v2 only, always both: the room's sequence number and the server time in ms.
    seq: int | None = msgspec.field(default=None, name="q")
    timestamp: int | None = msgspec.field(default=None, name="ts")


# --- v2 events -----------------------------------------------------------------------

Feature = Literal["errors", "names", "history", "heartbeat", "flood_control", "shutdown_notice"]
#: Every feature of version 2, in the order the server lists them in ``welcome``.
FEATURES: tuple[Feature, ...] = (
    "errors",
    "names",
    "history",
    "heartbeat",
    "flood_control",
    "shutdown_notice",
)

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
]
#: The stable error codes of docs/protocol.md. Clients must accept codes not listed
#: here (a later server may add some), so ``Error.code`` is typed ``str``.
ERROR_CODES: tuple[ErrorCode, ...] = get_args(ErrorCode)


class Welcome(_Event, frozen=True, tag="welcome"):
    """v2: the answer to ``hello``; from here on the session speaks version 2."""

    version: int = msgspec.field(name="v")
    session_id: str = msgspec.field(name="s")
    user_id: str = msgspec.field(name="u")
    token: str = msgspec.field(name="t")
    features: tuple[str, ...] = msgspec.field(name="f")
    heartbeat: int = msgspec.field(name="hb")  # seconds
    id: str | None = None  # the hello's id


class Error(_Event, frozen=True, tag="error"):
    """v2: a command failed (or the session is about to be closed, see the code)."""

    code: str
    msg: str
    command: str | None = msgspec.field(default=None, name="cmd")  # the command's _ct
    id: str | None = None  # the command's id


class HistoryMessage(msgspec.Struct, frozen=True, gc=False):
    """One past message of a room, in :class:`History`."""

    user_id: str = msgspec.field(name="u")
    content: str = msgspec.field(name="c")
    seq: int = msgspec.field(name="q")
    timestamp: int = msgspec.field(name="ts")


class History(_Event, frozen=True, tag="history"):
    """v2: sent on join, right after ``user_joined_room``."""

    room: str = msgspec.field(name="r")
    messages: tuple[HistoryMessage, ...] = msgspec.field(name="ms")  # oldest first
    seq: int = msgspec.field(name="q")  # the room's latest sequence number at the join
    gap: bool  # some messages after ``after`` are no longer held (always on the wire)


class ServerPing(_Event, frozen=True, tag="ping"):
    """v2: the server checks the client is alive; answer with :class:`Pong`."""


class ServerPong(_Event, frozen=True, tag="pong"):
    """v2: the answer to the client's :class:`Ping`."""

    id: str | None = None


class RateLimited(_Event, frozen=True, tag="rate_limited"):
    """v2: the client sends too fast; the server stops reading it for ``retry_ms``."""

    retry_ms: int


class Shutdown(_Event, frozen=True, tag="shutdown"):
    """v2: the server is about to close the connection; reconnect after ``reconnect_ms``."""

    reconnect_ms: int
    msg: str


#: Everything a server decodes: v1's commands and v2's. A v1 session ignores v2's
#: commands (except a first ``hello``) and v2's optional fields.
Command = JoinRoom | LeaveRoom | SendMessage | Quit | Hello | Ping | Pong
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
)
Message = Command | Event

V1_COMMAND_TYPES: tuple[type[Command], ...] = (JoinRoom, LeaveRoom, SendMessage, Quit)
V2_COMMAND_TYPES: tuple[type[Command], ...] = (Hello, Ping, Pong)
COMMAND_TYPES: tuple[type[Command], ...] = V1_COMMAND_TYPES + V2_COMMAND_TYPES
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
)
EVENT_TYPES: tuple[type[Event], ...] = V1_EVENT_TYPES + V2_EVENT_TYPES

#: Each command's ``_ct``, as the wire spells it (echoed in v2 errors as ``cmd``).
COMMAND_TAGS: dict[type[Command], str] = {
    kind: str(kind.__struct_config__.tag) for kind in COMMAND_TYPES
}
