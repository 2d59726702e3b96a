"""Who is in which room, kept in Redis by the room's scripts (scripts.py JOIN, LEAVE,
ASSERT), for the rules' Presence port (core/ports.py).

It reaches Redis only through the bus's command interface (commands.py ``Commands``):
each join or leave is one script queued on the room's node in the turn's pipeline, so
it keeps its place among the room's events. This instance's own sessions are mirrored
here too, to answer joins during an outage and to assert them again after one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from roomchat.protocol import MessageDeleted, MessageEdited, joined_event, left_event
from roomchat.server.bus.redis import scripts
from roomchat.server.bus.redis.commands import Commands, numbered_runs
from roomchat.server.bus.redis.resp import ReplyError
from roomchat.server.core.history import Change, Snapshot
from roomchat.server.core.ports import Participant, RoomLink

__all__ = ["RedisPresence"]

#: A cap on the "after" a join passes to JOIN (it comes from the client, any size).
_MAX_AFTER = 10**14


_decode_change = msgspec.json.Decoder(MessageEdited | MessageDeleted).decode


def _changes(flat: list[bytes]) -> dict[int, Change]:
    """JOIN's HGETALL of the room's changes: q -> (new content or None, when)."""
    out: dict[int, Change] = {}
    for index in range(0, len(flat) - 1, 2):
        try:
            change = _decode_change(flat[index + 1])
        except msgspec.DecodeError:
            continue
        content = change.content if isinstance(change, MessageEdited) else None
        out[change.seq] = (content, change.timestamp)
    return out


class RedisPresence:
    """Who is in a room, kept in Redis (scripts.py) and mirrored locally for this
    instance's own sessions (to answer joins during an outage and re-assert after)."""

    def __init__(self, bus: Commands) -> None:
        self._bus = bus
        # room -> session key -> user id: this instance's sessions, joined or joining.
        self._local: dict[RoomLink, dict[str, str]] = {}

    def local_rooms(self) -> list[RoomLink]:
        """The rooms this instance has sessions in (re-subscribed after an outage)."""
        return [room for room, sessions in self._local.items() if sessions]

    def rooms_to_assert(self) -> list[RoomLink]:
        """The rooms whose presence in Redis this instance asserts after an outage: those
        it has sessions in, and those its last session left without Redis confirming it
        (left during the outage, or the leave lost with the connection): there Redis may
        still list a user who is gone."""
        return list(self._local)

    def users(self, room: RoomLink) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self._local.get(room, {}).values()))

    def join(self, room: RoomLink, member: Participant) -> None:
        sessions = self._local.setdefault(room, {})
        sessions[member.key] = member.user_id
        bus = self._bus
        if not bus.connected:
            self._answer_locally(room, member)
            return
        future = bus.interest(room)
        if future is None:
            self._send_join(room, member)
            return

        def subscribed(done: asyncio.Future[None]) -> None:
            if not room.holds(member):  # left (or gone) while waiting
                return
            if done.cancelled() or done.exception() is not None:
                self._answer_locally(room, member)
            else:
                self._send_join(room, member)

        future.add_done_callback(subscribed)

    def _send_join(self, room: RoomLink, member: Participant) -> None:
        bus = self._bus
        keys = bus.room_keys(room)
        key, user = member.key, member.user_id
        v2 = member.v2

        def reply(answer: Any) -> None:
            if isinstance(answer, Exception):
                if isinstance(answer, ReplyError):
                    bus.report_error(answer, f"join of room {room.name!r}")
                if room.holds(member):
                    self._answer_locally(room, member)
                return
            users, seq, entries, epoch, changed = answer
            room.epoch = epoch.decode()
            snapshot = None
            if v2:
                held = [
                    (first + n, ts, line)
                    for first, ts, lines in numbered_runs(int(seq), entries)
                    for n, line in enumerate(lines.split(b"\r\n")[:-1])
                ]
                snapshot = Snapshot(int(seq), held, room.epoch, _changes(changed))
            room.join_reply(key, [u.decode() for u in users], snapshot)

        mode, count, after = b"", 0, 0
        if v2:
            request = room.joining_request(key)
            if request is not None and request.after is not None:
                mode, count, after = b"a", bus.history, min(request.after, _MAX_AFTER)
            elif request is not None and request.last:
                mode, count = b"h", min(request.last, bus.history)
        bus.queue(
            room,
            bus.script(
                "join",
                keys.script_keys,
                key,
                bus.instance_id,
                user,
                bus.publish_verb,
                joined_event(room.name, user),
                left_event(room.name, user),
                mode,
                count,
                after,
                bus.epoch_candidate,
            ),
            reply,
        )

    def _answer_locally(self, room: RoomLink, member: Participant) -> None:
        """Redis is not there: the room is this instance's alone until it is back."""
        sessions = self._local.get(room, {})
        users = list(dict.fromkeys(sessions.values()))
        first = list(sessions.values()).count(member.user_id) == 1
        room.join_reply(member.key, users)
        room.join_marker(member.key, joined_event(room.name, member.user_id) if first else None)

    def leave(self, room: RoomLink, member: Participant) -> None:
        sessions = self._local.get(room)
        if sessions is None or sessions.pop(member.key, None) is None:
            return
        bus = self._bus
        user = member.user_id
        if bus.connected:
            keys = bus.room_keys(room)
            bus.queue(
                room,
                bus.script("leave", keys.script_keys, member.key, user, bus.publish_verb),
                lambda reply: self._leave_reply(room, reply),
            )
        elif user not in sessions.values():
            room.announce(left_event(room.name, user))
        if not room.busy:
            bus.lose_interest(room)

    def _leave_reply(self, room: RoomLink, reply: Any) -> None:
        if isinstance(reply, ReplyError):
            self._bus.report_error(reply, f"leave of room {room.name!r}")
        elif not isinstance(reply, Exception):
            self._forget_if_empty(room)  # Redis holds nobody of this instance there

    def _forget_if_empty(self, room: RoomLink) -> None:
        if not self._local.get(room, True):
            del self._local[room]

    async def reassert(self, room: RoomLink) -> None:
        """Make Redis hold exactly this instance's sessions of ``room`` (after an
        outage; none: it had them all leave); users who appear or disappear are
        announced to the other instances."""
        bus = self._bus
        keys = bus.room_keys(room)
        args: list[bytes | str] = []
        for key, user in self._local.get(room, {}).items():
            args += [key, user, joined_event(room.name, user), left_event(room.name, user)]
        # Its own announcements this instance skips: its members saw them already.
        origin = scripts.REASSERTED + bus.instance_id.encode() + b"\n"
        await bus.call(
            room,
            bus.script(
                "assert", keys.script_keys, bus.instance_id, bus.publish_verb, origin, *args
            ),
        )
        self._forget_if_empty(room)

    async def purge(self, room: RoomLink, instance: str) -> int:
        """Remove a dead instance's sessions from ``room``; how many there were."""
        bus = self._bus
        keys = bus.room_keys(room)
        removed = await bus.call(
            room, bus.script("assert", keys.script_keys, instance, bus.publish_verb, b"")
        )
        return int(removed)
