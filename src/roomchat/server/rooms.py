"""Rooms and their members, without sockets (DESIGN.md, "The server").

- :class:`RoomManager` owns every :class:`ChatRoom`, built from the rooms file.
- :class:`ChatRoom` keeps its members and a user registry (user id -> how many of
  that user's sessions are in the room), so a user is announced "joined" on its first
  session and "left" on its last, however many sessions it has.
- :class:`UserSessionHandle` is one session's right to post to one room; the session
  hands it back to leave.

A member is anything with a ``user_id``, a ``pending`` list of encoded events and a
``deliver(bytes)`` method. Each event is encoded once; a broadcast appends the same bytes
to every member's ``pending`` list (a C-level ``list.append`` per member, no Python call)
and then tells the room's ``on_broadcast`` hook, so that the owner of the members (the
server's outbox) writes the lists out at the end of the loop turn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import msgspec

from roomchat.protocol import RoomDetail, RoomParticipation, UserJoinedRoom, encode

__all__ = [
    "AlreadyJoined",
    "BroadcastHook",
    "ChatRoom",
    "Member",
    "NotJoined",
    "RoomError",
    "RoomManager",
    "UnknownRoom",
    "UserSessionHandle",
]

_encode_json = msgspec.json.Encoder().encode


class Member(Protocol):
    """What a room needs of a session."""

    @property
    def user_id(self) -> str: ...

    @property
    def pending(self) -> list[bytes]:
        """Encoded events waiting to be written, oldest first. The same list object for
        the member's whole life (rooms keep its ``append``); its owner empties it."""
        ...

    def deliver(self, data: bytes) -> None:
        """Queue one encoded event for this member alone, and see that it is written.
        Must not block or raise."""

    def flush(self) -> None:
        """Write out (or, if the member is closing, drop) what is pending."""


#: Called after each broadcast with the room and the size of the event, so that whoever
#: owns the members can write out their pending events (see session.Outbox).
BroadcastHook = Callable[["ChatRoom", int], None]


def _ignore_broadcast(room: ChatRoom, size: int) -> None:
    pass


class RoomError(Exception):
    """A room command that cannot be carried out (ignored in v1, logged)."""


class UnknownRoom(RoomError):
    pass


class AlreadyJoined(RoomError):
    pass


class NotJoined(RoomError):
    pass


class ChatRoom:
    __slots__ = ("_appends", "_on_broadcast", "_users", "description", "name")

    def __init__(self, detail: RoomDetail, on_broadcast: BroadcastHook | None = None) -> None:
        self.name = detail.name
        self.description = detail.description
        self._on_broadcast = on_broadcast or _ignore_broadcast
        # member -> its pending list's bound append: a broadcast calls these directly.
        self._appends: dict[Member, Callable[[bytes], None]] = {}
        # The user registry: user id -> number of its sessions in this room.
        self._users: dict[str, int] = {}

    @property
    def users(self) -> tuple[str, ...]:
        """User ids in the room, each once, in order of arrival."""
        return tuple(self._users)

    @property
    def member_count(self) -> int:
        """Sessions in the room (a user with two sessions counts twice)."""
        return len(self._appends)

    @property
    def members(self) -> list[Member]:
        """The sessions in the room, in order of arrival (a copy)."""
        return list(self._appends)

    def __contains__(self, member: object) -> bool:
        return member in self._appends

    def join(self, member: Member) -> UserSessionHandle:
        """Add a session; it gets ``user_joined_room``, then everyone gets "joined"."""
        if member in self._appends:
            raise AlreadyJoined(f"already in room {self.name!r}")
        user_id = member.user_id
        self._appends[member] = member.pending.append
        sessions = self._users.get(user_id, 0)
        self._users[user_id] = sessions + 1
        member.deliver(encode(UserJoinedRoom(self.name, tuple(self._users))))
        if sessions == 0:
            self.broadcast(encode(RoomParticipation(self.name, user_id, "joined")))
        return UserSessionHandle(self, member)

    def leave(self, member: Member) -> None:
        """Remove a session; the others get "left" if it was its user's last one."""
        if self._appends.pop(member, None) is None:
            raise NotJoined(f"not in room {self.name!r}")
        user_id = member.user_id
        sessions = self._users[user_id] - 1
        if sessions:
            self._users[user_id] = sessions
        else:
            del self._users[user_id]
            self.broadcast(encode(RoomParticipation(self.name, user_id, "left")))

    def broadcast(self, data: bytes) -> None:
        """Queue the same encoded bytes for every member. The hot path: per member, one
        C-level list append."""
        for append in self._appends.values():
            append(data)
        self._on_broadcast(self, len(data))


class UserSessionHandle:
    """One session's membership of one room: post through it, hand it back to leave."""

    __slots__ = ("_message_prefix", "member", "room")

    def __init__(self, room: ChatRoom, member: Member) -> None:
        self.room = room
        self.member = member
        # Everything of a user_message but its content is fixed for this handle, so it
        # is encoded once. Same bytes as encoding UserMessage (a test checks it).
        self._message_prefix = (
            b'{"_et":"user_message","r":'
            + _encode_json(room.name)
            + b',"u":'
            + _encode_json(member.user_id)
            + b',"c":'
        )

    def send_message(self, content: str) -> None:
        self.room.broadcast(self._message_prefix + _encode_json(content) + b"}\r\n")


class RoomManager:
    """Every room of the server, in rooms-file order."""

    __slots__ = ("details", "rooms")

    def __init__(
        self, details: Iterable[RoomDetail], on_broadcast: BroadcastHook | None = None
    ) -> None:
        self.details = tuple(details)
        self.rooms = {detail.name: ChatRoom(detail, on_broadcast) for detail in self.details}

    def join_room(self, name: str, member: Member) -> UserSessionHandle:
        room = self.rooms.get(name)
        if room is None:
            raise UnknownRoom(f"no room named {name!r}")
        return room.join(member)

    def drop_user_session_handle(self, handle: UserSessionHandle) -> None:
        handle.room.leave(handle.member)
