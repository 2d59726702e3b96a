"""Who is in a room: the user registry, behind one interface (docs/architecture.md).

A room counts a *user* once, however many of its sessions joined (docs/protocol.md):
the first session of a user to enter a room makes the room announce ``joined``, the last
to leave makes it announce ``left``. :class:`Presence` keeps that registry and makes the
announcements; :class:`MemoryPresence` is the in-process one (everything on this
instance, answered at once). The Redis one (roomchat.server.bus.redis) keeps it in Redis,
answers after a round trip, and announces through the room's channel.

A join is answered with two calls on the room, in either order: ``room.join_reply(key,
users)`` and ``room.join_marker(key, announcement)`` (see rooms.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from roomchat.protocol import RoomParticipation, encode

if TYPE_CHECKING:
    from roomchat.server.rooms import ChatRoom, Member

__all__ = ["MemoryPresence", "Presence", "joined_event", "left_event"]


def joined_event(room: str, user_id: str) -> bytes:
    return encode(RoomParticipation(room, user_id, "joined"))


def left_event(room: str, user_id: str) -> bytes:
    return encode(RoomParticipation(room, user_id, "left"))


class Presence(Protocol):
    def join(self, room: ChatRoom, member: Member) -> None:
        """Register a session in a room; answer through join_reply and join_marker (or
        join_failed). Must not block."""

    def leave(self, room: ChatRoom, member: Member) -> None:
        """Unregister a session; announce ``left`` if it was its user's last one."""

    def users(self, room: ChatRoom) -> tuple[str, ...]:
        """The room's users as this instance last knew them (for logs and tests)."""
        ...


class MemoryPresence:
    """The registry in this process: room -> user id -> number of its sessions there."""

    __slots__ = ("_rooms",)

    def __init__(self) -> None:
        self._rooms: dict[ChatRoom, dict[str, int]] = {}

    def join(self, room: ChatRoom, member: Member) -> None:
        users = self._rooms.get(room)
        if users is None:
            users = self._rooms[room] = {}
        user_id = member.user_id
        sessions = users.get(user_id, 0)
        users[user_id] = sessions + 1
        room.join_reply(member.key, users)
        room.join_marker(member.key, None if sessions else joined_event(room.name, user_id))

    def leave(self, room: ChatRoom, member: Member) -> None:
        users = self._rooms.get(room)
        if users is None or member.user_id not in users:
            return
        user_id = member.user_id
        sessions = users[user_id] - 1
        if sessions:
            users[user_id] = sessions
        else:
            del users[user_id]
            room.announce(left_event(room.name, user_id))

    def users(self, room: ChatRoom) -> tuple[str, ...]:
        return tuple(self._rooms.get(room, ()))
