"""One chat session per TCP connection, and the outbox that flushes them.

A :class:`ChatSession` is an :class:`asyncio.Protocol`: it decodes commands as bytes
arrive, keeps one :class:`~roomchat.server.rooms.UserSessionHandle` per joined room, and
owns the session's single outbound stream into which every room's events merge
(``deliver`` appends to a list; no task per session or per room).

The :class:`Outbox` writes each session's pending bytes with one ``transport.write``
per turn of the event loop, however many events the turn produced: at high rates this
is what saves the server from one syscall per event.

Bounds (docs/protocol.md, "What happens to bad input"): a line longer than
``max_line_length`` closes the session; a session whose unsent output passes
``max_pending_output`` is a slow consumer and is cut off, so it never slows its rooms
down nor grows the server's memory.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, cast

from roomchat.protocol import (
    BadLine,
    Command,
    CommandDecoder,
    JoinRoom,
    LeaveRoom,
    LineTooLong,
    LoginSuccessful,
    Quit,
    SendMessage,
    encode,
)
from roomchat.server.rooms import ChatRoom, RoomError, UserSessionHandle

if TYPE_CHECKING:
    from roomchat.server.app import ChatServer

__all__ = ["ChatSession", "Outbox", "new_session_id", "new_user_id"]

log = logging.getLogger("roomchat.server")

#: Pending output past which a session writes at once instead of waiting for the end
#: of the loop turn, so one turn's burst cannot pile up unbounded before the check.
_FLUSH_AT = 256 * 1024
#: Bad lines logged per session before the log goes quiet (then every 1000th).
_BAD_LINES_LOGGED = 5


def new_session_id() -> str:
    """21 URL-safe random characters, like the original's nanoid."""
    return secrets.token_urlsafe(16)[:21]


def new_user_id() -> str:
    """5 URL-safe random characters, like the original (``nanoid!()[0..5]``)."""
    return secrets.token_urlsafe(4)[:5]


class Outbox:
    """What is waiting to be written, flushed once at the end of the loop turn.

    Two kinds of entries: rooms that broadcast this turn (their members' ``pending``
    lists were appended to directly, see rooms.py), and single sessions that were sent
    an event of their own (login, the reply to a join). A session in several busy rooms
    is flushed by the first and finds nothing left to write by the others.

    With a coalescing window W > 0, a flush that comes less than W after the previous
    turn began pauses the loop for the rest of W: what arrives meanwhile waits in the
    kernel and is then read, routed and written in one turn. Under steady traffic this
    replaces a wake-up (a context switch: the largest single cost at moderate load) per
    message by one per W, for at most W of added latency. Sparse traffic (turns further
    apart than W) and saturation (turns longer than W) never pause.
    """

    __slots__ = ("_call_soon", "_rooms", "_scheduled", "_sessions", "_turn_started", "_window")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float = 0.0) -> None:
        self._call_soon = loop.call_soon
        self._sessions: list[ChatSession] = []
        self._rooms: dict[ChatRoom, int] = {}  # room -> bytes it broadcast this turn
        self._scheduled = False
        self._window = window
        self._turn_started = 0.0

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self.flush)

    def add(self, session: ChatSession) -> None:
        """A session has an event of its own pending."""
        self._sessions.append(session)
        self._schedule()

    def room_broadcast(self, room: ChatRoom, size: int) -> None:
        """A room appended ``size`` bytes to each member's pending list (rooms.py hook)."""
        queued = self._rooms.get(room)
        if queued is None:
            self._rooms[room] = size
            self._schedule()
        elif queued + size > _FLUSH_AT:
            # So much in one turn: write it now, so that a burst cannot pile up unbounded
            # before the slow-consumer check (the transport's high-water mark) sees it.
            self._rooms[room] = 0
            for member in room.members:
                member.flush()
        else:
            self._rooms[room] = queued + size

    def flush(self) -> None:
        self._scheduled = False
        rooms, self._rooms = self._rooms, {}
        sessions, self._sessions = self._sessions, []
        for room in rooms:
            for member in room.members:
                member.flush()
        for session in sessions:
            session.flush()
        if self._window:
            now = time.monotonic()
            rest = self._window - (now - self._turn_started)
            if rest > 0:
                time.sleep(rest)  # deliberate: see the class docstring
                now += rest
            self._turn_started = now


class ChatSession(asyncio.Protocol):
    __slots__ = (
        "_bad_lines",
        "_closing",
        "_decoder",
        "_handles",
        "_outbox",
        "_own_size",
        "_peer",
        "_reason",
        "_server",
        "_transport",
        "pending",
        "session_id",
        "user_id",
    )

    def __init__(self, server: ChatServer) -> None:
        self._server = server
        self._outbox = server.outbox
        self._decoder = CommandDecoder(server.config.max_line_length)
        self.session_id = new_session_id()
        self.user_id = new_user_id()
        self._handles: dict[str, UserSessionHandle] = {}
        # Encoded events waiting for the end of the turn. Rooms keep this list's append
        # (rooms.py), so it is emptied in place, never replaced.
        self.pending: list[bytes] = []
        self._own_size = 0  # bytes of events of its own (deliver) in pending
        self._transport: asyncio.Transport | None = None
        self._closing = False
        self._peer = "?"
        self._bad_lines = 0
        self._reason = "connection lost"

    def __repr__(self) -> str:
        return f"<session {self.session_id} user {self.user_id} from {self._peer}>"

    # -- asyncio.Protocol ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._peer = f"{peer[0]}:{peer[1]}"
        # pause_writing fires when the transport holds more than this: a slow consumer.
        transport.set_write_buffer_limits(high=self._server.config.max_pending_output)
        self._server.sessions.add(self)
        log.info("%r connected", self)
        # docs/protocol.md: the server speaks first.
        self.deliver(
            encode(LoginSuccessful(self.session_id, self.user_id, self._server.rooms.details))
        )

    def data_received(self, data: bytes) -> None:
        self._handle(self._decoder.feed(data))

    def eof_received(self) -> bool:
        # The client closed its side (e.g. nc at the end of its input): carry out a last
        # unterminated command, then end the session as the original does; output
        # already queued is still sent before the socket closes.
        self._handle(self._decoder.feed_eof())
        self.close("client closed its side")
        return True

    def _handle(self, items: list[Command | BadLine | LineTooLong]) -> None:
        for item in items:
            if self._closing:
                return
            if type(item) is SendMessage:  # by far the most frequent: checked first
                handle = self._handles.get(item.room)
                if handle is not None:
                    handle.send_message(item.content)
                else:
                    self._ignore(f"send_message to room {item.room!r} not joined")
            elif isinstance(item, JoinRoom):
                self._join(item.room)
            elif isinstance(item, LeaveRoom):
                self._leave(item.room)
            elif isinstance(item, Quit):
                self.close("quit")
            elif isinstance(item, BadLine):
                self._ignore(f"bad line ({item.reason}): {item.line[:80]!r}")
            elif isinstance(item, LineTooLong):
                log.warning("%r: line longer than %d bytes, closing", self, item.limit)
                self.abort("line too long")

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._leave_all()
        self.pending.clear()
        self._server.sessions.discard(self)
        self._transport = None
        log.info("%r disconnected: %s", self, f"{self._reason} ({exc})" if exc else self._reason)

    def pause_writing(self) -> None:
        # More than max_pending_output is waiting in the transport: a slow consumer.
        # Cut it off on the next turn (not from inside a broadcast that is iterating
        # over room members).
        if not self._closing:
            self._closing = True
            log.warning(
                "%r: slow consumer, more than %d bytes pending, disconnecting",
                self,
                self._server.config.max_pending_output,
            )
            asyncio.get_running_loop().call_soon(self.abort, "slow consumer")

    def resume_writing(self) -> None:
        pass

    # -- output ----------------------------------------------------------------------
    def deliver(self, data: bytes) -> None:
        """Queue an event for this session alone; the outbox writes it at the end of
        the turn. (Broadcasts append to ``pending`` directly, see rooms.py.)"""
        if not self._own_size:
            self._outbox.add(self)
        self.pending.append(data)
        self._own_size += len(data)
        if self._own_size > _FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        pending = self.pending
        if not pending:
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._own_size = 0
        if not self._closing and self._transport is not None:
            self._transport.write(data)

    # -- commands --------------------------------------------------------------------
    def _join(self, room: str) -> None:
        if room in self._handles:
            self._ignore(f"join_room {room!r}: already joined")
            return
        try:
            self._handles[room] = self._server.rooms.join_room(room, self)
        except RoomError as exc:
            self._ignore(f"join_room: {exc}")

    def _leave(self, room: str) -> None:
        handle = self._handles.pop(room, None)
        if handle is None:
            self._ignore(f"leave_room {room!r}: not joined")
            return
        self._server.rooms.drop_user_session_handle(handle)

    def _leave_all(self) -> None:
        handles = list(self._handles.values())
        self._handles.clear()
        for handle in handles:
            self._server.rooms.drop_user_session_handle(handle)

    def _ignore(self, what: str) -> None:
        # v1 has no error event (docs/protocol.md): ignore, log, keep the session open.
        # The log is capped per session so that a flood of bad lines cannot flood it.
        self._bad_lines += 1
        count = self._bad_lines
        if count <= _BAD_LINES_LOGGED or count % 1000 == 0:
            log.warning("%r: ignored #%d: %s", self, count, what)

    # -- closing ---------------------------------------------------------------------
    def close(self, reason: str, *, announce: bool = True) -> None:
        """End the session: leave every room (with ``announce``, the others see "left";
        at server shutdown nobody is left to tell), send what is queued, close."""
        if self._transport is None or self._transport.is_closing():
            return
        self._reason = reason
        if announce:
            self._leave_all()
        self.flush()
        self._closing = True
        self._transport.close()

    def abort(self, reason: str) -> None:
        """Drop the connection at once, discarding queued output."""
        self._closing = True
        self._reason = reason
        if self._transport is not None:
            self._leave_all()
            self._transport.abort()
