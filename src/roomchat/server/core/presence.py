"""Who is in a room: the user registry, behind one interface (docs/architecture.md).

A room counts a *user* once, however many of its sessions joined (docs/protocol.md):
the first session of a user to enter a room makes the room announce ``joined``, the last
to leave makes it announce ``left``. :class:`Presence` keeps that registry and makes the
announcements; :class:`MemoryPresence` is the in-process one (everything on this
instance, answered at once). The Redis one (roomchat.server.bus.redis.presence) keeps it
in Redis, answers after a round trip, and announces through the room's channel.

A join is answered with two calls on the room, in either order: ``room.join_reply(key,
users)`` and ``room.join_marker(key, announcement)`` (see rooms.py). The interface,
:class:`~roomchat.server.core.ports.Presence`, is in ports.py.
"""

from __future__ import annotations

from roomchat.protocol import encode_user, encode_users, joined_event, left_event
from roomchat.server.core.ports import Participant, RoomLink

__all__ = ["MemoryPresence"]


class MemoryPresence:
    """The registry in this process: room -> user id -> number of its sessions there.

    Each room's user list is also kept encoded, as the ``user_joined_room`` of every
    join carries it: a new user appends its id, a leave drops the list (encoded again at
    the next join). A join into a room of thousands copies the list instead of encoding
    thousands of ids (a join storm's main cost after the writes)."""

    __slots__ = ("_listed", "_rooms")

    def __init__(self) -> None:
        self._rooms: dict[RoomLink, dict[str, int]] = {}
        self._listed: dict[RoomLink, bytearray] = {}  # room -> encode_users(its users)

    def join(self, room: RoomLink, member: Participant) -> None:
        users = self._rooms.get(room)
        if users is None:
            users = self._rooms[room] = {}
        user_id = member.user_id
        sessions = users.get(user_id, 0)
        users[user_id] = sessions + 1
        listed = self._listed.get(room)
        if listed is None:
            listed = self._listed[room] = bytearray(encode_users(users))
        elif not sessions:
            if listed:
                listed += b","
            listed += encode_user(user_id)
        room.join_reply(member.key, bytes(listed))
        room.join_marker(member.key, None if sessions else joined_event(room.name, user_id))

    def leave(self, room: RoomLink, member: Participant) -> None:
        users = self._rooms.get(room)
        if users is None or member.user_id not in users:
            return
        user_id = member.user_id
        sessions = users[user_id] - 1
        if sessions:
            users[user_id] = sessions
        else:
            del users[user_id]
            self._listed.pop(room, None)
            room.announce(left_event(room.name, user_id))

    def users(self, room: RoomLink) -> tuple[str, ...]:
        return tuple(self._rooms.get(room, ()))
