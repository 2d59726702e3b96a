"""The rules of one chat session, as a sans-I/O state machine (docs/protocol.md).

A :class:`Session` takes the bytes a client sent (:meth:`Session.receive_data`,
:meth:`Session.receive_eof`) and carries out what they say: it decodes commands, joins,
leaves and posts to rooms, and queues its events in its mailbox. It never touches a
socket or an event loop: what it needs of the connection (stop and start reading, close,
abort) goes through the narrow :class:`Connection` interface, so tests drive it without
sockets and ``connection.py`` only moves bytes (as websockets' ``protocol.py`` and
``asyncio/connection.py`` share the work).

Joining may take a round trip (presence in Redis): while a join is in progress the
session keeps the commands that follow it, in order, and stops reading, so that a
``send_message`` right after a ``join_room`` goes to the room it joined.

Bounds and bad input (docs/protocol.md, "What happens to bad input"): a line longer than
the limit aborts the session; a bad line or a command that cannot be carried out is
ignored and logged (capped per session); a client that closes its side has its last
unterminated command carried out, then the session ends as with ``quit``.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Iterable
from typing import Protocol, cast

from roomchat.protocol import (
    BadLine,
    Command,
    CommandDecoder,
    JoinRoom,
    LeaveRoom,
    LineTooLong,
    LoginSuccessful,
    Quit,
    RoomDetail,
    SendMessage,
    encode,
)
from roomchat.server.outbox import Mailbox
from roomchat.server.rooms import RoomError, RoomManager, UserSessionHandle
from roomchat.server.stats import ServerStats

__all__ = ["Connection", "Session", "new_session_id", "new_user_id"]

log = logging.getLogger("roomchat.server")

#: Ignored commands logged per session before the log goes quiet (then every 1000th).
_IGNORED_LOGGED = 5

_Item = Command | BadLine | LineTooLong


def new_session_id() -> str:
    """21 URL-safe random characters, like the original's nanoid."""
    return secrets.token_urlsafe(16)[:21]


def new_user_id() -> str:
    """5 URL-safe random characters, like the original (``nanoid!()[0..5]``)."""
    return secrets.token_urlsafe(4)[:5]


class Connection(Protocol):
    """What a session may ask of its connection."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self, reason: str) -> None:
        """Send what is queued, then close."""

    def abort(self, reason: str) -> None:
        """Close at once, dropping what is queued."""


class Session:
    __slots__ = (
        "_backlog",
        "_connection",
        "_decoder",
        "_eof",
        "_handles",
        "_ignored",
        "_joining",
        "_rooms",
        "_stats",
        "_waiting",
        "closed",
        "mailbox",
        "name",
        "session_id",
        "user_id",
    )

    def __init__(
        self,
        rooms: RoomManager,
        mailbox: Mailbox,
        connection: Connection,
        *,
        max_line_length: int,
        name: str = "?",
        stats: ServerStats | None = None,
    ) -> None:
        self._rooms = rooms
        self._stats = stats if stats is not None else ServerStats()
        self.mailbox = mailbox
        self.session_id = mailbox.key
        self.user_id = mailbox.user_id
        self._connection = connection
        self._decoder = CommandDecoder(max_line_length)
        self._handles: dict[str, UserSessionHandle] = {}
        self._joining: str | None = None  # the room of the join in progress
        self._waiting = False  # that join is answered later: reading is paused
        self._backlog: deque[_Item] = deque()  # commands after it, in order
        self._eof = False
        self._ignored = 0
        self.closed = False
        self.name = name  # for logs: the peer's address

    def __repr__(self) -> str:
        return f"<session {self.session_id} user {self.user_id} from {self.name}>"

    @property
    def log_fields(self) -> dict[str, str]:
        """The session's identity as separate log fields (``extra=``; --log-format json)."""
        return {"session": self.session_id, "user": self.user_id, "peer": self.name}

    @property
    def rooms(self) -> list[str]:
        """The rooms this session is in (joins in progress not included)."""
        return list(self._handles)

    # -- input -------------------------------------------------------------------------
    def start(self, rooms: tuple[RoomDetail, ...]) -> None:
        """docs/protocol.md: the server speaks first."""
        self.mailbox.send(encode(LoginSuccessful(self.session_id, self.user_id, rooms)))

    def receive_data(self, data: bytes) -> None:
        items = self._decoder.feed(data)
        stats = self._stats  # counted per read, not per line (stats.py)
        stats.bytes_in += len(data)
        stats.lines_in += len(items)
        if self._joining is None:
            self._handle(items)
        else:
            self._backlog.extend(items)

    def receive_eof(self) -> None:
        """The client closed its side (e.g. nc at the end of its input): carry out a last
        unterminated command, then end the session as the original does."""
        self._eof = True
        items = self._decoder.feed_eof()
        self._stats.lines_in += len(items)
        self._backlog.extend(items)
        if self._joining is None:
            self._drain_backlog()

    def connection_lost(self) -> None:
        """The connection is gone: leave every room (the others see "left")."""
        self.closed = True
        self._dropped(self._backlog)
        self._backlog.clear()
        self._leave_all()
        self.mailbox.close()

    def _handle(self, items: list[_Item]) -> None:
        index, count = 0, len(items)
        while index < count:
            if self.closed:
                self._dropped(items[index:])
                return
            item = items[index]
            index += 1
            if type(item) is SendMessage:  # by far the most frequent: checked first
                room = item.room
                handle = self._handles.get(room)
                # A run of messages to one room (a busy client's read holds many) is
                # encoded and posted as one event: the members get one append for all.
                end = index
                while end < count and type(run := items[end]) is SendMessage and run.room == room:
                    end += 1
                if handle is None:
                    self._ignore(f"send_message to room {room!r} not joined", end - index + 1)
                elif end == index:
                    handle.send_message(item.content)
                else:
                    handle.send_messages(cast("list[SendMessage]", items[index - 1 : end]))
                index = end
            elif type(item) is JoinRoom:
                self._join(item.room)
                if self._joining is not None:  # in progress: keep the rest for later
                    self._backlog.extend(items[index:])
                    return
            else:
                self._other(item)

    def _dropped(self, items: Iterable[_Item]) -> None:
        """Lines never carried out (the session ended first): keep the count of
        send_message lines (stats.messages_received) exact."""
        self._stats.non_messages += sum(type(item) is not SendMessage for item in items)

    def _other(self, item: _Item) -> None:
        stats = self._stats
        stats.non_messages += 1
        if isinstance(item, LeaveRoom):
            self._leave(item.room)
        elif isinstance(item, Quit):
            self.close("quit")
        elif isinstance(item, BadLine):
            stats.bad_lines += 1
            self._ignore(f"bad line ({item.reason}): {item.line[:80]!r}")
        elif isinstance(item, LineTooLong):
            stats.lines_too_long += 1
            log.warning(
                "%r: line longer than %d bytes, closing",
                self,
                item.limit,
                extra={**self.log_fields, "reason": "line too long"},
            )
            self.abort("line too long")

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        while backlog and self._joining is None and not self.closed:
            item = backlog.popleft()
            if type(item) is JoinRoom:
                self._join(item.room)
            else:
                self._handle([item])
        if self._joining is None and not self.closed:
            if self._eof:
                self.close("client closed its side")
            else:
                self._connection.resume_reading()

    # -- commands --------------------------------------------------------------------
    def _join(self, room: str) -> None:
        self._stats.non_messages += 1
        if room in self._handles:
            self._ignore(f"join_room {room!r}: already joined")
            return
        self._joining = room
        try:
            self._rooms.join_room(room, self.mailbox, self._joined)
        except RoomError as exc:
            self._joining = None
            self._ignore(f"join_room: {exc}")
            return
        if self._joining is not None:  # not answered yet: wait, reading nothing more
            self._waiting = True
            self._connection.pause_reading()

    def _joined(self, outcome: UserSessionHandle | RoomError) -> None:
        room, self._joining = self._joining, None
        if isinstance(outcome, RoomError):
            self._ignore(f"join_room {room!r}: {outcome}")
        elif self.closed:  # the connection went while the join was under way
            self._waiting = False
            self._rooms.drop_user_session_handle(outcome)
            return
        else:
            self._handles[outcome.room.name] = outcome
        if self._waiting:  # answered after a wait: carry on where the join stopped
            self._waiting = False
            self._drain_backlog()

    def _leave(self, room: str) -> None:
        handle = self._handles.pop(room, None)
        if handle is None:
            self._ignore(f"leave_room {room!r}: not joined")
            return
        self._rooms.drop_user_session_handle(handle)

    def _leave_all(self) -> None:
        handles = list(self._handles.values())
        self._handles.clear()
        for handle in handles:
            self._rooms.drop_user_session_handle(handle)
        if self._joining is not None:
            room = self._rooms.rooms.get(self._joining)
            self._joining = None
            self._waiting = False
            if room is not None and self.mailbox in room:
                self._rooms.leave(room, self.mailbox)

    def _ignore(self, what: str, times: int = 1) -> None:
        # v1 has no error event (docs/protocol.md): ignore, log, keep the session open.
        # The log is capped per session so that a flood of bad lines cannot flood it.
        before = self._ignored
        self._ignored = count = before + times
        self._stats.ignored += times
        if before < _IGNORED_LOGGED or count // 1000 > before // 1000:
            suffix = f" (x{times})" if times > 1 else ""
            log.warning(
                "%r: ignored #%d: %s%s",
                self,
                count,
                what,
                suffix,
                extra={**self.log_fields, "reason": what},
            )

    # -- ending ----------------------------------------------------------------------
    def close(self, reason: str, *, announce: bool = True) -> None:
        """End the session: leave every room (with ``announce`` the others see "left";
        at server shutdown that happens when the connection is gone), send what is
        queued, close."""
        if self.closed:
            return
        if announce:
            self._leave_all()
        self.closed = True
        self.mailbox.flush()
        self._connection.close(reason)

    def abort(self, reason: str) -> None:
        """Drop the connection at once, discarding queued output."""
        if self.closed:
            return
        self.closed = True
        self._leave_all()
        self.mailbox.close()
        self._connection.abort(reason)
