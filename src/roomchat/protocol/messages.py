"""The commands and events of protocol v1, as immutable typed messages.

Field names on the wire are the short ones of docs/protocol.md (``r``, ``c``, ...);
in Python they have readable names. msgspec writes the tag (``_ct`` / ``_et``) first
and then the fields in declaration order, which is exactly the original's key order.
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = [
    "COMMAND_TYPES",
    "EVENT_TYPES",
    "Command",
    "Event",
    "JoinRoom",
    "LeaveRoom",
    "LoginSuccessful",
    "Message",
    "ParticipationStatus",
    "Quit",
    "RoomDetail",
    "RoomParticipation",
    "SendMessage",
    "UserJoinedRoom",
    "UserMessage",
]

# gc=False: these structs never hold reference cycles, so the garbage collector need
# not track them (cheaper to create, and they are created per message).


class _Command(msgspec.Struct, frozen=True, gc=False, tag_field="_ct"):
    pass


class _Event(msgspec.Struct, frozen=True, gc=False, tag_field="_et"):
    pass


# --- commands (client -> server) -------------------------------------------------


class JoinRoom(_Command, frozen=True, tag="join_room"):
    room: str = msgspec.field(name="r")


class LeaveRoom(_Command, frozen=True, tag="leave_room"):
    room: str = msgspec.field(name="r")


class SendMessage(_Command, frozen=True, tag="send_message"):
    room: str = msgspec.field(name="r")
    content: str = msgspec.field(name="c")


class Quit(_Command, frozen=True, tag="quit"):
    pass


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


class UserMessage(_Event, frozen=True, tag="user_message"):
    room: str = msgspec.field(name="r")
    user_id: str = msgspec.field(name="u")
    content: str = msgspec.field(name="c")


Command = JoinRoom | LeaveRoom | SendMessage | Quit
Event = LoginSuccessful | UserJoinedRoom | RoomParticipation | UserMessage
Message = Command | Event

COMMAND_TYPES: tuple[type[Command], ...] = (JoinRoom, LeaveRoom, SendMessage, Quit)
EVENT_TYPES: tuple[type[Event], ...] = (
    LoginSuccessful,
    UserJoinedRoom,
    RoomParticipation,
    UserMessage,
)
