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

Version 2 (docs/protocol.md, "Version 2"): a session whose first command is a ``hello``
with ``v`` >= 2 gets ``welcome`` (or an error and the close), its decoder upgraded and its
mailbox marked v2 (rooms then send it v2 bytes). From then on the commands v1 ignores
get an ``error``; ``ping`` is answered. A v1 session stays exactly v1. Every session, v1
included, has its commands counted against a token bucket (flood.py) when flood control
is on: over budget, reading stops until the bucket has refilled.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from typing import Protocol, cast

from roomchat import tokens
from roomchat.protocol import (
    FEATURES,
    PROTOCOL_VERSION,
    BadLine,
    Command,
    CommandDecoder,
    Error,
    Hello,
    JoinRoom,
    LeaveRoom,
    LineTooLong,
    LoginSuccessful,
    Ping,
    Pong,
    Quit,
    RateLimited,
    RoomDetail,
    SendMessage,
    ServerPing,
    ServerPong,
    Shutdown,
    Welcome,
    encode,
    name_key,
    valid_name,
)
from roomchat.server.core.context import SessionContext
from roomchat.server.core.flood import Bucket
from roomchat.server.core.history import HistoryRequest
from roomchat.server.core.outbox import Mailbox
from roomchat.server.core.rooms import (
    AlreadyJoined,
    RoomError,
    RoomManager,
    UnknownRoom,
    UserSessionHandle,
)
from roomchat.server.core.stats import ServerStats

__all__ = ["Connection", "Session", "new_session_id", "new_user_id"]

log = logging.getLogger("roomchat.server")

#: Ignored commands logged per session before the log goes quiet (then every 1000th).
_IGNORED_LOGGED = 5

#: Flood-control episodes logged per server before the log goes quiet (then every 1000th).
_THROTTLES_LOGGED = 5

_Item = Command | BadLine | LineTooLong
#: ``Session._joining`` while a hello's name is being claimed: like a join in progress,
#: later commands wait (compared by identity: no room is this object).
_NAMING = "<claiming a name>"
#: ``Session._joining`` while its random id is being claimed (before the login).
_LOGGING_IN = "<claiming a random id>"
_CLAIMS = (_NAMING, _LOGGING_IN)


class _Refused(Exception):
    """A v2 command that cannot be carried out: its error code and message."""

    def __init__(self, code: str, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


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
        "_bucket",
        "_connection",
        "_context",
        "_decoder",
        "_eof",
        "_episode",
        "_fresh",
        "_handles",
        "_ignored",
        "_joining",
        "_name_held",
        "_rooms",
        "_shutting_down",
        "_stats",
        "_throttled",
        "_unread",
        "_waiting",
        "closed",
        "heard",
        "mailbox",
        "name",
        "pinged",
        "quiet_since",
        "session_id",
        "user_id",
        "v2",
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
        context: SessionContext | None = None,
    ) -> None:
        self._rooms = rooms
        self._stats = stats if stats is not None else ServerStats()
        self.mailbox = mailbox
        self.session_id = mailbox.key
        self.user_id = mailbox.user_id
        self._connection = connection
        self._context = context = context or SessionContext()
        self._decoder = CommandDecoder(max_line_length)
        self.v2 = False
        self._name_held = True  # the user id is held in context.names until the end
        self._fresh = True  # no command yet: a first hello may make the session v2
        self._shutting_down = False
        # Flood control: None when off.
        self._bucket = (
            Bucket(context.flood_rate, max(1.0, context.flood_burst), context.clock)
            if context.flood_rate > 0
            else None
        )
        self._throttled = False  # reading stopped until the bucket refills
        self._episode = False  # a v2 session was told rate_limited in this episode
        # Heartbeats (liveness.py), used once v2.
        self.heard = False
        self.quiet_since = 0.0
        self.pinged = False
        self._handles: dict[str, UserSessionHandle] = {}
        # The room of the join in progress (or _NAMING: a hello's name being claimed).
        self._joining: str | None = None
        self._waiting = False  # that join is answered later: reading is paused
        self._backlog: deque[_Item] = deque()  # commands after it, in order
        self._unread: list[bytes] = []  # what came before the login (start)
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
        """docs/protocol.md: the server speaks first, once the user id is the session's:
        at once in one process; with several instances, once the shared registry has
        it (names.py), with a new id drawn if another instance's user has this one."""
        names = self._context.names
        if names.shared is None:
            self.mailbox.send(encode(LoginSuccessful(self.session_id, self.user_id, rooms)))
            return
        self._joining = _LOGGING_IN
        names.confirm_new(self.user_id, lambda holder: self._logged_in(rooms, holder))
        if self._joining is _LOGGING_IN:
            self._waiting = True
            self._connection.pause_reading()

    def _logged_in(self, rooms: tuple[RoomDetail, ...], holder: str | None) -> None:
        if self.closed:  # gone meanwhile: _release gave the id back
            self._joining = None
            return
        if holder is not None:  # another instance's user: draw again
            names = self._context.names
            names.forget(self.user_id)
            user_id = names.draw_new(new_user_id)
            log.info("%r: user id held on another instance, now %s", self, user_id)
            self.user_id = self.mailbox.user_id = user_id
            names.confirm_new(user_id, lambda holder: self._logged_in(rooms, holder))
            return
        self._joining = None
        self.mailbox.send(encode(LoginSuccessful(self.session_id, self.user_id, rooms)))
        unread, self._unread = b"".join(self._unread), []
        if unread:  # what came before the login, read now (counted once, when it came)
            self._stats.bytes_in -= len(unread)
            self.receive_data(unread)
        if self._eof:  # as receive_eof would have, had the login been sent
            self._backlog.extend(self._decoder.feed_eof())
        if self._waiting and self._joining is None:
            self._waiting = False
            self._drain_backlog()

    def receive_data(self, data: bytes) -> None:
        self.heard = True
        self._stats.bytes_in += len(data)  # counted per read, not per line (stats.py)
        if self._fresh:
            if self._joining is _LOGGING_IN:  # a hello must be read after the login
                self._unread.append(data)
                return
            data = self._first_command(data)
        items = self._decoder.feed(data)
        bucket = self._bucket
        if bucket is not None:  # flood control: one subtraction per batch
            bucket.tokens -= len(items)
            if bucket.tokens < 0:
                self._throttle(bucket)
            elif self._episode:
                self._episode = False
        if self._joining is None:
            self._handle(items)
        else:
            self._backlog.extend(items)

    def _first_command(self, data: bytes) -> bytes:
        """Decode line by line up to the first command: a hello changes how the lines
        after it are decoded (v2). Returns the bytes after that line."""
        while self._fresh and not self.closed:
            newline = data.find(b"\n")
            if newline < 0:
                return data  # no complete line yet
            line, data = data[: newline + 1], data[newline + 1 :]
            items = self._decoder.feed(line)
            if not items:
                continue  # a blank line, or the end of a line begun earlier... kept
            self._fresh = False
            first, rest = items[0], items[1:]
            if type(first) is Hello and first.version >= 2:
                self._hello(first)
                if rest and not self.closed:
                    if self._joining is None:
                        self._handle(rest)
                    else:
                        self._backlog.extend(rest)
            elif self._joining is None:
                self._handle(items)
            else:
                self._backlog.extend(items)
        return data if not self.closed else b""

    def _throttle(self, bucket: Bucket) -> None:
        wait = bucket.refill()
        if wait <= 0 or self._throttled:
            return
        context = self._context
        context.stats["throttled"] += 1
        count = context.stats["throttled"]
        if count <= _THROTTLES_LOGGED or count % 1000 == 0:
            log.warning(
                "%r: over the flood limit (%g commands/s, burst %g): not read for %d ms "
                "(#%d on this server)",
                self,
                bucket.rate,
                bucket.burst,
                round(wait * 1000),
                count,
            )
        self._throttled = True
        self._connection.pause_reading()
        if self.v2 and not self._episode:
            self._episode = True
            self.mailbox.send(encode(RateLimited(max(1, round(wait * 1000)))))
        context.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttled = False
        if not self.closed and self._joining is None:
            self._connection.resume_reading()

    def receive_eof(self) -> None:
        """The client closed its side (e.g. nc at the end of its input): carry out a last
        unterminated command, then end the session as the original does."""
        self._eof = True
        if self._joining is _LOGGING_IN:
            return  # read with what came before, after the login (_logged_in)
        items = self._decoder.feed_eof()
        self._backlog.extend(items)
        if self._joining is None:
            self._drain_backlog()

    def connection_lost(self) -> None:
        """The connection is gone: leave every room (the others see "left")."""
        self.closed = True
        self._backlog.clear()
        self.mailbox.close()  # first: the rooms then drop its share of the turn at once
        self._leave_all()
        self._release()

    def _release(self) -> None:
        """Give back what the session held on the server (its name, its heartbeat)."""
        context = self._context
        if self._name_held:
            self._name_held = False
            context.names.release(self.user_id)
        if context.liveness is not None:
            context.liveness.discard(self)

    def _handle(self, items: list[_Item]) -> None:
        index, count = 0, len(items)
        while index < count:
            if self.closed:
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
                if handle is not None and not self._shutting_down:
                    if end == index:
                        handle.send_message(item.content)
                    else:
                        handle.send_messages(cast("list[SendMessage]", items[index - 1 : end]))
                else:  # refused: posted ones are counted by their room (ChatRoom.post)
                    self._stats.messages += end - index + 1
                    for refused in items[index - 1 : end]:  # each has its own id (v2)
                        assert isinstance(refused, SendMessage)
                        if self._shutting_down:
                            self._refuse(refused, "shutting_down", "the server is shutting down")
                        else:
                            self._refuse(refused, "not_member", f"not in room {room!r}")
                index = end
            elif type(item) is JoinRoom:
                self._join(item)
                if self._joining is not None:  # in progress: keep the rest for later
                    self._backlog.extend(items[index:])
                    return
            else:
                self._other(item)

    def _other(self, item: _Item) -> None:
        stats = self._stats
        if isinstance(item, LeaveRoom):
            self._leave(item)
        elif isinstance(item, Quit):
            self.close("quit")
        elif isinstance(item, BadLine):
            stats.bad_lines += 1
            if self.v2:
                self._error("bad_command", item.reason, item.command, item.id)
            else:
                self._ignore(f"bad line ({item.reason}): {item.line[:80]!r}")
        elif isinstance(item, LineTooLong):
            stats.lines_too_long += 1
            log.warning(
                "%r: line longer than %d bytes, closing",
                self,
                item.limit,
                extra={**self.log_fields, "reason": "line too long"},
            )
            if self.v2:
                self._error("line_too_long", f"a line passed {item.limit} bytes")
                self.close("line too long")
            else:
                self.abort("line too long")
        elif not self.v2:  # hello (not first), ping, pong: unknown to v1
            self._ignore(f"{type(item).__name__} in a v1 session")
        elif isinstance(item, Ping):
            self.mailbox.send(encode(ServerPong(item.id)))
        elif isinstance(item, Pong):
            pass
        elif isinstance(item, Hello):
            self._error("bad_command", "this session said hello already", "hello", item.id)

    # -- v2 ----------------------------------------------------------------------------
    def _error(
        self, code: str, msg: str, command: str | None = None, ident: str | None = None
    ) -> None:
        self.mailbox.send(encode(Error(code, msg, command, ident)))

    def _refuse(self, item: Command, code: str, msg: str) -> None:
        """A command that cannot be carried out: an error in v2, ignored in v1."""
        if self.v2:
            tag = type(item).__struct_config__.tag
            self._error(code, msg, tag if isinstance(tag, str) else None, item.id)
        else:
            self._ignore(f"{type(item).__name__}: {msg}")

    def _hello(self, hello: Hello) -> None:
        context = self._context
        context.stats["hellos"] += 1
        try:
            user, proven = self._check_hello(hello)
        except _Refused as refused:
            context.stats["hellos_refused"] += 1
            log.info("%r: hello refused (%s): %s", self, refused.code, refused.msg)
            self._error(refused.code, refused.msg, "hello", hello.id)
            self.close(f"hello refused: {refused.code}")
            return
        self._decoder.upgrade()  # what follows the hello is read as v2 (or dropped)
        if user == self.user_id:
            self._welcome(hello, user)
            return
        # The registry may answer after a round trip (several instances): until then
        # the session reads nothing and keeps what it has read, as during a join.
        self._joining = _NAMING
        context.names.request(user, proven, lambda holder: self._named(hello, user, holder))
        if self._joining is _NAMING:
            self._waiting = True
            self._connection.pause_reading()

    def _named(self, hello: Hello, user: str, holder: str | None) -> None:
        """The registry's answer to the name ``user``: None (it is the session's) or the
        spelling another user holds it under."""
        self._joining = None
        context = self._context
        if self.closed:  # gone while the claim was under way: give the name back
            if holder is None:
                context.names.release(user)
            self._waiting = False
            return
        if holder is not None:
            context.stats["hellos_refused"] += 1
            log.info("%r: hello refused (name_taken): %r is held by another user", self, user)
            self._error("name_taken", f"the name {user!r} is in use", "hello", hello.id)
            self.close("hello refused: name_taken")
            return
        context.names.release(self.user_id)
        self.user_id = self.mailbox.user_id = user
        self._welcome(hello, user)
        if self._waiting:
            self._waiting = False
            self._drain_backlog()

    def _welcome(self, hello: Hello, user: str) -> None:
        context = self._context
        expires = int(time.time()) + context.token_ttl
        token = tokens.mint(context.secret, user, expires)
        self.v2 = self.mailbox.v2 = True
        self.mailbox.send(
            encode(
                Welcome(
                    min(hello.version, PROTOCOL_VERSION),
                    self.session_id,
                    user,
                    token,
                    FEATURES,
                    context.announced_heartbeat,
                    hello.id,
                )
            )
        )
        if context.liveness is not None:
            context.liveness.add(self)
        log.info("%r: speaks v2", self)

    def _check_hello(self, hello: Hello) -> tuple[str, bool]:
        """The user id the session asks for and whether its token proves it; or
        _Refused."""
        context = self._context
        if self._shutting_down:
            raise _Refused("shutting_down", "the server is shutting down")
        name, token = hello.name, hello.token
        if name is None:
            if token is not None:
                raise _Refused("bad_command", "a token without a name")
            return self.user_id, False
        if not valid_name(name):
            raise _Refused("name_invalid", "a name is 1 to 32 of A-Z a-z 0-9 _ - . (no spaces)")
        limiter = context.hello_limiter
        if limiter is not None and not limiter.allow(name_key(name)):
            raise _Refused("rate_limited", f"too many hellos for the name {name!r}: wait a while")
        proven = token is not None and tokens.verify(context.secret, name, token, time.time())
        if context.require_tokens and not proven:
            raise _Refused("not_authorised", f"the name {name!r} needs a valid token")
        if name_key(name) == name_key(self.user_id):
            return self.user_id, proven  # this session's own random id
        return name, proven  # whether it is free: the name registry answers (_hello)

    # -- what the server and the sweeper ask -------------------------------------------
    def send_ping(self) -> None:
        if not self.closed:
            self.mailbox.send(encode(ServerPing()))

    def idle_timeout(self, quiet: float) -> None:
        if self.closed:
            return
        log.info("%r: nothing received for %.1f s, closing", self, quiet)
        self._context.stats["idle_timeouts"] += 1
        self._error("idle_timeout", f"nothing received for {round(quiet)} s")
        self.close("idle timeout")

    def shutdown_notice(self) -> None:
        """The server is about to close: v2 sessions are told; commands that still come
        are refused with shutting_down."""
        self._shutting_down = True
        if self.v2 and not self.closed:
            context = self._context
            self.mailbox.send(encode(Shutdown(context.reconnect_ms, context.shutdown_msg)))

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        while backlog and self._joining is None and not self.closed:
            item = backlog.popleft()
            if type(item) is JoinRoom:
                self._join(item)
            else:
                self._handle([item])
        if self._joining is None and not self.closed:
            if self._eof:
                self.close("client closed its side")
            elif not self._throttled:
                self._connection.resume_reading()

    # -- commands --------------------------------------------------------------------
    def _join(self, item: JoinRoom) -> None:
        room = item.room
        request = None
        if self.v2:
            if self._shutting_down:
                self._refuse(item, "shutting_down", "the server is shutting down")
                return
            if item.history is not None and item.after is not None:
                self._refuse(item, "bad_command", "h and after exclude each other")
                return
            request = HistoryRequest(item.history, item.after)
        if room in self._handles:
            self._refuse(item, "already_joined", f"already in room {room!r}")
            return
        self._joining = room
        try:
            self._rooms.join_room(room, self.mailbox, self._joined, request)
        except RoomError as exc:
            self._joining = None
            code = (
                "unknown_room"
                if isinstance(exc, UnknownRoom)
                else "already_joined"
                if isinstance(exc, AlreadyJoined)
                else "bad_command"
            )
            self._refuse(item, code, str(exc))
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

    def _leave(self, item: LeaveRoom) -> None:
        handle = self._handles.pop(item.room, None)
        if handle is None:
            self._refuse(item, "not_member", f"not in room {item.room!r}")
            return
        self._rooms.drop_user_session_handle(handle)

    def _leave_all(self) -> None:
        handles = list(self._handles.values())
        self._handles.clear()
        for handle in handles:
            self._rooms.drop_user_session_handle(handle)
        if self._joining is not None and self._joining not in _CLAIMS:
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
        self._release()
        self._connection.close(reason)

    def abort(self, reason: str) -> None:
        """Drop the connection at once, discarding queued output."""
        if self.closed:
            return
        self.closed = True
        self.mailbox.close()
        self._leave_all()
        self._release()
        self._connection.abort(reason)
