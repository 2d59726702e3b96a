"""Why a command is refused: each error type carries its v2 error code.

A command that cannot be carried out raises (or is answered with) one of these; the
session turns it into an ``error`` event with the type's :attr:`Refused.code` for a v2
client, and ignores and logs it for a v1 client, which has no error event
(docs/protocol.md, "Errors"). These are the peer's mistakes (h11's
``RemoteProtocolError``): never a reason to stop the server.
"""

from __future__ import annotations

from typing import ClassVar

from roomchat.protocol import ErrorCode

__all__ = [
    "AlreadyJoined",
    "Archived",
    "AuthFailed",
    "BadCommand",
    "Banned",
    "Muted",
    "NameInvalid",
    "NameTaken",
    "NotAuthorised",
    "NotFound",
    "NotJoined",
    "RateLimited",
    "Refused",
    "RoomError",
    "RoomExists",
    "RoomInvalid",
    "ShuttingDown",
    "SlowModeWait",
    "Unavailable",
    "UnknownRoom",
]


class Refused(Exception):
    """A command that cannot be carried out, and the v2 error code that says why."""

    code: ClassVar[ErrorCode] = "bad_command"

    def __init__(self, msg: str) -> None:
        super().__init__(msg)
        self.msg = msg


class BadCommand(Refused):
    code = "bad_command"


class ShuttingDown(Refused):
    code = "shutting_down"

    def __init__(self, msg: str = "the server is shutting down") -> None:
        super().__init__(msg)


class NameInvalid(Refused):
    code = "name_invalid"


class NameTaken(Refused):
    code = "name_taken"


class NotAuthorised(Refused):
    code = "not_authorised"


class RateLimited(Refused):
    code = "rate_limited"


class AuthFailed(Refused):
    code = "auth_failed"


class Banned(Refused):
    code = "banned"


class Muted(Refused):
    code = "muted"


class SlowModeWait(Refused):
    code = "slow_mode"


class RoomExists(Refused):
    code = "room_exists"


class RoomInvalid(Refused):
    code = "room_invalid"


class Archived(Refused):
    code = "archived"


class Unavailable(Refused):
    """What the command needs (the community store in Redis) cannot be reached now."""

    code = "unavailable"


class NotFound(Refused):
    """No such message (never sent, deleted, or past the room's retention)."""

    code = "not_found"


class RoomError(Refused):
    """A room command that cannot be carried out."""


class UnknownRoom(RoomError):
    code = "unknown_room"


class AlreadyJoined(RoomError):
    code = "already_joined"


class NotJoined(RoomError):
    code = "not_member"

    @classmethod
    def in_room(cls, room: str) -> NotJoined:
        return cls(f"not in room {room!r}")
