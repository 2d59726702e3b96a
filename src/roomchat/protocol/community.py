"""Version 2's community messages: rooms at run time, private rooms, roles and
moderation, direct messages (docs/protocol.md, "Rooms, moderation and direct messages";
docs/moderation.md).

They are granted by the ``rooms``, ``moderation`` and ``direct_messages`` features of
``welcome``; a v1 session never receives one and has these commands ignored (as v1
ignores any unknown ``_ct``). Rooms it may join are still listed in its
``login_successful`` and are joined with v1's ``join_room``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from roomchat.protocol.base import CommandBase as _C
from roomchat.protocol.base import Count, EventBase, Id

__all__ = [
    "ROLES",
    "ArchiveRoom",
    "AuditEntry",
    "AuditLog",
    "AuditRequest",
    "Ban",
    "CloseDm",
    "CreateRoom",
    "Invite",
    "Kick",
    "Moderated",
    "ModerationAction",
    "Mute",
    "OpenDm",
    "Role",
    "RoomAdded",
    "RoomListing",
    "RoomRemoved",
    "Rooms",
    "SetRole",
    "SlowMode",
    "Unban",
    "Unmute",
]

Role = Literal["owner", "moderator", "member"]
#: Roles from the highest; server-wide admins rank above every room's owner.
ROLES: tuple[Role, ...] = ("owner", "moderator", "member")

#: A moderator's reason, shown to the user it concerns (and in the audit log).
_Why = Annotated[str, msgspec.Meta(max_length=500)]
#: Room descriptions.
_Description = Annotated[str, msgspec.Meta(max_length=500)]
#: Seconds a ban or a mute lasts (absent: until lifted), or slow mode's interval.
_Seconds = Annotated[int, msgspec.Meta(ge=0, le=10 * 365 * 24 * 3600)]


# --- commands ---------------------------------------------------------------------------


class CreateRoom(_C, frozen=True, tag="create_room"):
    room: str = msgspec.field(name="r")
    description: _Description = msgspec.field(default="", name="d")
    private: bool = msgspec.field(default=False, name="p")
    id: Id | None = None


class ArchiveRoom(_C, frozen=True, tag="archive_room"):
    room: str = msgspec.field(name="r")
    why: _Why | None = None
    id: Id | None = None


class Invite(_C, frozen=True, tag="invite"):
    room: str = msgspec.field(name="r")
    user: str = msgspec.field(name="u")
    id: Id | None = None


class Kick(_C, frozen=True, tag="kick"):
    room: str = msgspec.field(name="r")
    user: str = msgspec.field(name="u")
    why: _Why | None = None
    id: Id | None = None


class Ban(_C, frozen=True, tag="ban"):
    """``r`` absent: a server-wide ban (admins only)."""

    user: str = msgspec.field(name="u")
    room: str | None = msgspec.field(default=None, name="r")
    seconds: _Seconds | None = msgspec.field(default=None, name="s")
    why: _Why | None = None
    id: Id | None = None


class Unban(_C, frozen=True, tag="unban"):
    user: str = msgspec.field(name="u")
    room: str | None = msgspec.field(default=None, name="r")
    id: Id | None = None


class Mute(_C, frozen=True, tag="mute"):
    """``r`` absent: a server-wide mute (admins only)."""

    user: str = msgspec.field(name="u")
    room: str | None = msgspec.field(default=None, name="r")
    seconds: _Seconds | None = msgspec.field(default=None, name="s")
    why: _Why | None = None
    id: Id | None = None


class Unmute(_C, frozen=True, tag="unmute"):
    user: str = msgspec.field(name="u")
    room: str | None = msgspec.field(default=None, name="r")
    id: Id | None = None


class SetRole(_C, frozen=True, tag="set_role"):
    room: str = msgspec.field(name="r")
    user: str = msgspec.field(name="u")
    role: Role
    id: Id | None = None


class SlowMode(_C, frozen=True, tag="slow_mode"):
    """One message per ``s`` seconds per user in the room (0: off)."""

    room: str = msgspec.field(name="r")
    seconds: _Seconds = msgspec.field(name="s")
    id: Id | None = None


class AuditRequest(_C, frozen=True, tag="audit_log"):
    room: str = msgspec.field(name="r")
    limit: Count | None = None
    id: Id | None = None


class OpenDm(_C, frozen=True, tag="open_dm"):
    """Join the direct-message room with ``u`` (as a ``join_room`` of it)."""

    user: str = msgspec.field(name="u")
    history: Count | None = msgspec.field(default=None, name="h")
    after: Count | None = None
    id: Id | None = None


class CloseDm(_C, frozen=True, tag="close_dm"):
    """Leave the direct-message room with ``u`` on every session of this user, until
    the next message in it."""

    user: str = msgspec.field(name="u")
    id: Id | None = None


# --- events -------------------------------------------------------------------------------


class RoomListing(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """One room a session can see, in ``rooms`` and ``room_added``."""

    name: str = msgspec.field(name="n")
    description: str = msgspec.field(name="d")
    private: bool = msgspec.field(default=False, name="p")
    #: A direct-message room: the other user.
    dm: str | None = None
    #: This user's role in the room (absent: member).
    role: Role | None = None
    #: In ``rooms`` at login, for a room this user has a read marker in: messages after
    #: it (``un``), and the marker itself (``rd``, the highest ``q`` read).
    unread: int | None = msgspec.field(default=None, name="un")
    read: int | None = msgspec.field(default=None, name="rd")


class Rooms(EventBase, frozen=True, tag="rooms"):
    """Right after ``welcome``: every room this session can see (public ones, private
    ones it may join, its open direct messages)."""

    rooms: tuple[RoomListing, ...] = msgspec.field(name="rs")


class RoomAdded(EventBase, frozen=True, tag="room_added"):
    """A room became visible: created, an invitation, a direct message opened."""

    room: RoomListing = msgspec.field(name="rm")


class RoomRemoved(EventBase, frozen=True, tag="room_removed"):
    """A room is gone for this session: archived, or a direct message closed."""

    room: str = msgspec.field(name="r")
    why: str | None = None


ModerationAction = Literal[
    "kick", "ban", "unban", "mute", "unmute", "role", "slow_mode", "invite", "archive", "create"
]


class Moderated(EventBase, frozen=True, tag="moderation"):
    """A moderation action in a room, for its v2 members (the user it concerns included,
    before a kick or ban takes it out). ``u`` is the user it concerns, ``until`` when a
    timed ban or mute ends (ms since the epoch), ``s`` slow mode's interval."""

    room: str = msgspec.field(name="r")
    by: str
    what: ModerationAction
    user: str | None = msgspec.field(default=None, name="u")
    until: int | None = None
    role: Role | None = None
    seconds: int | None = msgspec.field(default=None, name="s")
    why: str | None = None
    timestamp: int | None = msgspec.field(default=None, name="ts")


class AuditEntry(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    timestamp: int = msgspec.field(name="ts")
    by: str
    what: ModerationAction
    user: str | None = msgspec.field(default=None, name="u")
    until: int | None = None
    role: Role | None = None
    seconds: int | None = msgspec.field(default=None, name="s")
    why: str | None = None


class AuditLog(EventBase, frozen=True, tag="audit"):
    """The answer to ``audit_log``: the room's moderation actions, newest last."""

    room: str = msgspec.field(name="r")
    entries: tuple[AuditEntry, ...] = msgspec.field(name="es")
    id: str | None = None
