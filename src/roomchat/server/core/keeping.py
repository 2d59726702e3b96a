"""What sessions ask of the lasting history (docs/protocol.md, "History that lasts"):
pages, edits and deletions, read markers, typing indicators, a room's retention.

Sans-I/O, like the community service: the store (:class:`~roomchat.server.core.ports.
Archiving`) answers through callbacks, and every event for a room's members goes through
the bus's ``relay`` (in process: the room itself; with Redis: every instance), so that an
edit reaches the room's v2 members wherever they are and in the room's order. v1 members
never see any of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import msgspec

from roomchat.protocol import (
    PAGE_MAX,
    MessageDeleted,
    MessageEdited,
    RoomListing,
    Typing,
    encode,
    name_key,
)
from roomchat.server.core.clock import now_ms
from roomchat.server.core.directory import Directory
from roomchat.server.core.errors import (
    NotAuthorised,
    NotFound,
    NotJoined,
    Unavailable,
    UnknownRoom,
)
from roomchat.server.core.history import StoredMessage, page_event
from roomchat.server.core.policy import MODERATOR, Actor, rank_of
from roomchat.server.core.ports import Archiving, Done, StoreError
from roomchat.server.core.rooms import ChatRoom

__all__ = ["TYPING_EVERY", "Keeper"]

#: A user's typing indicator is passed on at most once per this many seconds per room.
TYPING_EVERY = 3.0
#: Typing timestamps kept before the old ones are dropped.
_TYPING_KEPT = 10_000


def _unavailable(exc: StoreError) -> Unavailable:
    return Unavailable(f"the message store cannot answer now: {exc}")


class Keeper:
    """The sessions' side of the lasting history (one per server)."""

    def __init__(
        self,
        directory: Directory,
        archive: Archiving | None,
        relay: Callable[[ChatRoom, bytes], None],
        clock: Callable[[], float],
        forget: Callable[[ChatRoom], None] | None = None,
    ) -> None:
        self.directory = directory
        self.archive = archive
        self._relay = relay
        self._forget = forget or ChatRoom.forget
        self._clock = clock
        self._typed: dict[tuple[str, str], float] = {}

    def _room(self, name: str, joined: bool) -> ChatRoom:
        room = self.directory.rooms.get(name)
        if room is None or not joined:
            raise NotJoined.in_room(name)
        return room

    def _store(self) -> Archiving:
        if self.archive is None:
            raise Unavailable("this server keeps no message store")
        return self.archive

    # -- pages ---------------------------------------------------------------------------
    def page(
        self,
        name: str,
        joined: bool,
        before: int | None,
        after: int | None,
        limit: int,
        epoch: str | None,
        ident: str | None,
        done: Done,
    ) -> None:
        """Answer ``done`` with an encoded ``history`` event (or a Refused)."""
        room = self._room(name, joined)
        archive = self._store()
        limit = min(limit, PAGE_MAX)
        gap = bool(epoch and room.epoch and epoch != room.epoch)
        if gap:  # the client's numbers are another numbering's: the latest page
            before = after = None

        def answer(result: object) -> None:
            if isinstance(result, StoreError):
                done(_unavailable(result))
                return
            stored = cast("list[StoredMessage]", result)
            done(page_event(name, stored, room.seq, room.epoch, gap, ident))

        archive.ask_page(name, room.epoch, before, after, limit, answer)

    # -- edits and deletions ---------------------------------------------------------------
    def edit(
        self, actor: Actor, name: str, joined: bool, seq: int, content: str, done: Done
    ) -> None:
        self._change(actor, name, joined, seq, content, done)

    def delete(self, actor: Actor, name: str, joined: bool, seq: int, done: Done) -> None:
        self._change(actor, name, joined, seq, None, done)

    def _change(
        self, actor: Actor, name: str, joined: bool, seq: int, content: str | None, done: Done
    ) -> None:
        room = self._room(name, joined)
        if seq > room.seq:
            raise NotFound(f"room {name!r} has no message {seq}")
        held = room.held(seq)
        if held is not None:
            self._apply(actor, room, seq, held[0], held[1] is not None, content, done)
            return
        archive = self._store()

        def found(result: object) -> None:
            if isinstance(result, StoreError):
                done(_unavailable(result))
                return
            stored = cast("StoredMessage | None", result)
            if stored is None:
                done(NotFound(f"room {name!r} keeps no message {seq}"))
                return
            try:
                self._apply(
                    actor, room, seq, stored.user, stored.content is not None, content, done
                )
            except (NotAuthorised, NotFound) as refused:
                done(refused)

        archive.ask_message(name, room.epoch, seq, found)

    def _apply(
        self,
        actor: Actor,
        room: ChatRoom,
        seq: int,
        sender: str,
        alive: bool,
        content: str | None,
        done: Done,
    ) -> None:
        if not alive:
            raise NotFound(f"message {seq} of room {room.name!r} was deleted")
        if name_key(sender) != name_key(actor.name):
            policy = self.directory.policies.get(room.name)
            if policy is None or rank_of(actor, policy, room.name) < MODERATOR:
                raise NotAuthorised("only its sender or a moderator may change a message")
        ts = now_ms()
        archive = self.archive
        if content is None:
            if archive is not None:
                archive.delete(room.name, room.epoch, seq, ts)
            event = encode(MessageDeleted(room.name, seq, actor.name, ts))
        else:
            if archive is not None:
                archive.edit(room.name, room.epoch, seq, content, ts)
            event = encode(MessageEdited(room.name, seq, actor.name, content, ts))
        self._relay(room, event)
        done(None)

    # -- read markers, typing, retention -------------------------------------------------
    def mark(self, user: str, name: str, joined: bool, seq: int) -> None:
        room = self._room(name, joined)
        self._store().mark(name_key(user), name, room.epoch, min(seq, room.seq))

    def typing(self, user: str, name: str, joined: bool) -> None:
        """Pass ``user``'s typing on to the room, at most once per TYPING_EVERY."""
        room = self._room(name, joined)
        now = self._clock()
        key = (name_key(user), name)
        last = self._typed.get(key)
        if last is not None and now - last < TYPING_EVERY:
            return
        if len(self._typed) >= _TYPING_KEPT:
            self._typed = {k: t for k, t in self._typed.items() if now - t < TYPING_EVERY}
        self._typed[key] = now
        self._relay(room, encode(Typing(name, user)))

    def set_retention(
        self, actor: Actor, name: str, messages: int | None, days: int | None
    ) -> None:
        info = self.directory.find(name)
        if info is None:
            raise NotJoined.in_room(name)
        policy = self.directory.policies[info.name]
        if rank_of(actor, policy, info.name) < MODERATOR:
            raise NotAuthorised("a room's retention needs moderator rights in it")
        self._store().retain(info.name, messages or None, days or None)

    def purge(self, name: str, done: Done) -> None:
        """An admin's purge (the operator API): every stored message of the room, and
        what every instance holds for joins, deleted; ``done`` gets how many the store
        deleted. The numbering and its epoch go on."""
        room = self.directory.rooms.get(name)
        if room is None:
            raise UnknownRoom(f"no room named {name!r}")
        archive = self._store()

        def answer(result: object) -> None:
            if isinstance(result, StoreError):
                done(_unavailable(result))
                return
            self._forget(room)
            done(result)

        archive.ask_purge(name, answer)

    # -- unread counts at login ------------------------------------------------------------
    def with_unread(self, user: str, listing: Sequence[RoomListing], done: Done) -> None:
        """``listing`` with unread counts and markers (``done`` gets a tuple); as it is
        when there is no store or it cannot answer."""
        if self.archive is None:
            done(tuple(listing))
            return
        rooms = self.directory.rooms

        def answer(result: object) -> None:
            if isinstance(result, StoreError):
                done(tuple(listing))
                return
            markers = cast("dict[str, tuple[str, int, int]]", result)
            out = []
            for item in listing:
                marker = markers.get(item.name)
                room = rooms.get(item.name)
                if marker is None or room is None:
                    out.append(item)
                    continue
                epoch, read, stored = marker
                if room.epoch and epoch != room.epoch:  # numbered again since: all new
                    read, latest = 0, room.seq
                else:  # this instance may not follow the room (Redis): the store knows
                    latest = max(room.seq if room.epoch else 0, stored)
                out.append(msgspec.structs.replace(item, unread=max(0, latest - read), read=read))
            done(tuple(out))

        self.archive.ask_reading(name_key(user), answer)
