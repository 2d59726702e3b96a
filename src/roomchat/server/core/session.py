"""The rules of one chat session, as a sans-I/O state machine (docs/protocol.md).

A :class:`Session` takes the bytes a client sent (:meth:`Session.receive_data`,
:meth:`Session.receive_eof`) and carries out what they say: it decodes commands, joins,
leaves and posts to rooms, and queues its events in its mailbox. It never touches a
socket or an event loop: what it needs of the connection (stop and start reading, close,
abort) goes through the narrow :class:`Connection` interface, so tests drive it without
sockets and the shells (roomchat.server.shells) only move bytes, as websockets'
``protocol.py`` and ``asyncio/connection.py`` share the work.

Phases (:class:`Phase`; every transition is listed once, in :data:`TRANSITIONS`, as h11
keeps its rules in ``_state.py``)::

    LOGGING_IN --(the random id is the session's)--> NEW
    NEW ------(a first command)--> READY       (a first v2 hello may make it WAITING)
    READY <---(a join or a name claim answered)--> WAITING
    READY <---(the room let it go)--> HELD      (it posts into a room with a member behind)
    any ------(quit, end of input, a refused hello, a lost connection)--> CLOSED

- LOGGING_IN: with several instances, the session's random user id is confirmed with the
  shared registry before the login is sent (names.py). Input is kept undecoded: a first
  ``hello`` is still recognised afterwards.
- NEW: logged in, nothing received yet. A first ``hello`` with ``v`` >= 2 gets
  ``welcome`` (or an error and the close), the decoder upgraded and the mailbox marked v2
  (rooms then send it v2 bytes). From then on the commands v1 ignores get an ``error``.
- WAITING: a join, or a claim of a name, is answered after a round trip (presence or
  names in Redis). The session keeps what follows, in order, and stops reading, so that
  a ``send_message`` right after a ``join_room`` goes to the room it joined.
- HELD (backpressure, rooms.py): it was about to post into a room that has a member
  behind (a connection holding more than ``--max-pending-output`` unsent). As in
  WAITING, the session keeps that run and what follows, in order, and stops reading,
  until the room lets it go (:meth:`Session.released`): then it posts them and reads
  again. So senders slow down to the pace of the readers that read, instead of growing
  their output until the slow-consumer cut (shells/shell.py). Flood control on or off.

Commands are dispatched through one table (:data:`COMMANDS`, as Ergo's
``irc/commands.go``): each command's handler and whether v1 knows it. ``send_message``,
by far the most frequent, is taken before the table, a run of them to one room at once.
A command that cannot be carried out raises or is answered with a
:class:`~roomchat.server.core.errors.Refused`, which carries its v2 error code: v2
sessions get an ``error``, v1 sessions have it ignored and logged (capped per session).

Bounds and bad input (docs/protocol.md, "What happens to bad input"): a line longer than
the limit ends the session; a client that closes its side has its last unterminated
command carried out, then the session ends as with ``quit``. Every session, v1 included,
has its commands counted against a token bucket (flood.py) when flood control is on:
over budget, reading stops until the bucket has refilled.
"""

from __future__ import annotations

import enum
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from roomchat import tokens
from roomchat.protocol import (
    COMMAND_TAGS,
    FEATURES,
    PROTOCOL_VERSION,
    ArchiveRoom,
    AuditEntry,
    AuditLog,
    AuditRequest,
    BadLine,
    Ban,
    CloseDm,
    Command,
    CommandDecoder,
    CreateRoom,
    DeleteMessage,
    EditMessage,
    Error,
    Hello,
    HistoryPage,
    Invite,
    JoinRoom,
    Kick,
    LeaveRoom,
    LineTooLong,
    LoginSuccessful,
    MarkRead,
    ModerationAction,
    Mute,
    OpenDm,
    Ping,
    Pong,
    Quit,
    RateLimited,
    Role,
    RoomDetail,
    RoomListing,
    Rooms,
    SendMessage,
    ServerPing,
    ServerPong,
    SetRetention,
    SetRole,
    Shutdown,
    SlowMode,
    StartTyping,
    Unban,
    Unmute,
    Welcome,
    encode,
    name_key,
    valid_name,
)
from roomchat.server.auth import AuthError, looks_like_jwt
from roomchat.server.core import errors
from roomchat.server.core.clock import now_ms
from roomchat.server.core.community import DM_HISTORY, moderation_event
from roomchat.server.core.context import SessionContext
from roomchat.server.core.errors import AlreadyJoined, BadCommand, NotJoined, Refused, RoomError
from roomchat.server.core.flood import Bucket, UserBucket
from roomchat.server.core.history import HistoryRequest
from roomchat.server.core.outbox import Mailbox
from roomchat.server.core.policy import Action, Actor, Outcome, refused_join
from roomchat.server.core.rooms import ChatRoom, UserSessionHandle

__all__ = ["COMMANDS", "TRANSITIONS", "Connection", "Phase", "Session", "new_session_id"]

log = logging.getLogger("roomchat.server")

#: Ignored commands logged per session before the log goes quiet (then every 1000th).
_IGNORED_LOGGED = 5

#: Flood-control episodes logged per server before the log goes quiet (then every 1000th).
_THROTTLES_LOGGED = 5

_Item = Command | BadLine | LineTooLong


class Phase(enum.Enum):
    # Hashed by identity, in C: Enum's own __hash__ is Python code, and every transition
    # looks its phase up in TRANSITIONS.
    __hash__ = object.__hash__

    LOGGING_IN = "logging in"
    NEW = "new"
    READY = "ready"
    WAITING = "waiting"
    HELD = "held"
    CLOSED = "closed"


#: Every transition a session may make (anything else is a bug in this module).
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.LOGGING_IN: frozenset({Phase.NEW, Phase.CLOSED}),
    Phase.NEW: frozenset({Phase.READY, Phase.WAITING, Phase.CLOSED}),
    Phase.READY: frozenset({Phase.WAITING, Phase.HELD, Phase.CLOSED}),
    Phase.WAITING: frozenset({Phase.READY, Phase.CLOSED}),
    Phase.HELD: frozenset({Phase.READY, Phase.CLOSED}),
    Phase.CLOSED: frozenset(),
}

_READY = Phase.READY
_WAITING = Phase.WAITING
_HELD = Phase.HELD
_CLOSED = Phase.CLOSED


def _contents_of_run(items: list[_Item], start: int, room: str) -> list[str] | None:
    """The contents of ``items[start:]`` if every one is a message to ``room`` (a busy
    sender's read is one such run): one comprehension, not a step per message; else
    None."""
    rest = items if start == 0 else items[start:]
    contents = [m.content for m in rest if type(m) is SendMessage and m.room == room]
    return contents if len(contents) == len(rest) else None


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
        "_admin",
        "_backlog",
        "_bucket",
        "_claims",
        "_community",
        "_connection",
        "_context",
        "_decoder",
        "_eof",
        "_episode",
        "_handles",
        "_held",
        "_ignored",
        "_joining",
        "_name_held",
        "_paused",
        "_phase",
        "_roles",
        "_rooms",
        "_shutting_down",
        "_stats",
        "_throttled",
        "_unread",
        "_user_bucket",
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
        self, context: SessionContext, mailbox: Mailbox, connection: Connection, *, name: str
    ) -> None:
        self._context = context
        self._rooms = context.rooms
        self._community = context.community
        self._stats = context.stats
        self.mailbox = mailbox
        self.session_id = mailbox.key
        self.user_id = mailbox.user_id
        self._connection = connection
        self._decoder = CommandDecoder(context.max_line_length)
        self._phase = Phase.LOGGING_IN
        self.v2 = False
        self._name_held = True  # the user id is held in context.names until the end
        self._shutting_down = False
        # Flood control: None when off.
        self._bucket = (
            Bucket(context.flood_rate, max(1.0, context.flood_burst), context.clock)
            if context.flood_rate > 0
            else None
        )
        self._user_bucket: UserBucket | None = None  # per-user limits: this user's
        self._throttled = False  # reading stopped until the bucket refills
        self._episode = False  # a v2 session was told rate_limited in this episode
        # Heartbeats (liveness.py), used once v2.
        self.heard = False
        self.quiet_since = 0.0
        self.pinged = False
        self._handles: dict[str, UserSessionHandle] = {}
        self._joining: str | None = None  # the room of the join in progress (WAITING)
        self._paused = False  # reading paused for a wait answered later
        # Commands that came during a wait (made at the first: an empty deque is 600
        # bytes, and most sessions never wait with commands behind).
        self._backlog: deque[_Item] | None = None
        self._unread: list[bytes] = []  # what came while LOGGING_IN
        # Events told between welcome and the rooms listing (which ends the handshake).
        self._held: list[bytes] | None = None
        self._eof = False
        self._ignored = 0
        # Who the session is to the moderation rules (policy.py): a server admin, the
        # roles and private rooms its login token gives.
        self._admin = False
        self._roles: tuple[tuple[str, str], ...] = ()
        self._claims: tuple[str, ...] = ()
        self.name = name  # for logs: the peer's address

    def __repr__(self) -> str:
        return f"<session {self.session_id} user {self.user_id} from {self.name}>"

    @property
    def phase(self) -> Phase:
        return self._phase

    @property
    def closed(self) -> bool:
        return self._phase is _CLOSED

    @property
    def log_fields(self) -> dict[str, str]:
        """The session's identity as separate log fields (``extra=``; --log-format json)."""
        return {"session": self.session_id, "user": self.user_id, "peer": self.name}

    @property
    def rooms(self) -> list[str]:
        """The rooms this session is in (joins in progress not included)."""
        return list(self._handles)

    def _enter(self, phase: Phase) -> None:
        if phase not in TRANSITIONS[self._phase]:
            raise RuntimeError(f"{self!r}: no transition from {self._phase} to {phase}")
        self._phase = phase

    def _wait(self, room: str | None) -> None:
        """A join (``room``) or a name claim (None) is under way: commands wait."""
        self._enter(Phase.WAITING)
        self._joining = room

    def _waited(self) -> bool:
        """The wait is over; whether reading was paused for it (answered later)."""
        self._joining = None
        paused, self._paused = self._paused, False
        if self._phase is not _CLOSED:
            self._enter(_READY)
        return paused

    def _pause_if_waiting(self) -> None:
        """After asking for something that may be answered at once or later: if later,
        stop reading until then."""
        if self._phase is Phase.WAITING or self._phase is Phase.LOGGING_IN:
            self._paused = True
            self._connection.pause_reading()

    # -- input -------------------------------------------------------------------------
    def start(self, rooms: tuple[RoomDetail, ...]) -> None:
        """docs/protocol.md: the server speaks first, once the user id is the session's:
        at once in one process; with several instances, once the shared registry has
        it (names.py), with a new id drawn if another instance's user has this one."""
        names = self._context.names
        if names.shared is None:
            self._enter(Phase.NEW)
            self._community.enter(self)
            self._as_user(self.user_id)
            self.mailbox.send(encode(LoginSuccessful(self.session_id, self.user_id, rooms)))
            return
        names.confirm_new(self.user_id, lambda holder: self._logged_in(rooms, holder))
        self._pause_if_waiting()

    def _logged_in(self, rooms: tuple[RoomDetail, ...], holder: str | None) -> None:
        if self._phase is _CLOSED:  # gone meanwhile: _release gave the id back
            return
        if holder is not None:  # another instance's user: draw again
            names = self._context.names
            names.forget(self.user_id)
            user_id = names.draw_new(new_user_id)
            log.info("%r: user id held on another instance, now %s", self, user_id)
            self.user_id = self.mailbox.user_id = user_id
            names.confirm_new(user_id, lambda holder: self._logged_in(rooms, holder))
            return
        self._enter(Phase.NEW)
        self._community.enter(self)
        self._as_user(self.user_id)
        paused, self._paused = self._paused, False
        self.mailbox.send(encode(LoginSuccessful(self.session_id, self.user_id, rooms)))
        unread, self._unread = b"".join(self._unread), []
        if unread:  # what came before the login, read now (counted once, when it came)
            self._stats.bytes_in -= len(unread)
            self.receive_data(unread)
        if self._eof:  # as receive_eof would have, had the login been sent
            self._take(self._decoder.feed_eof())
            self._ended_input()
        elif paused:
            self._resume()

    def _as_user(self, user: str | None) -> None:
        """Charge ``user``'s bucket from now on (None: none; per-user limits)."""
        buckets = self._context.user_buckets
        if buckets is None:
            return
        if self._user_bucket is not None:
            buckets.drop(self._user_bucket)
        self._user_bucket = None if user is None else buckets.take(name_key(user))

    def receive_data(self, data: bytes) -> None:
        self.heard = True
        self._stats.bytes_in += len(data)  # counted per read, not per line (stats.py)
        phase = self._phase
        if phase is not _READY:
            if phase is Phase.LOGGING_IN:  # a hello must be read after the login
                self._unread.append(data)
                return
            if phase is Phase.NEW:
                data = self._first_command(data)
        items = self._decoder.feed(data)
        bucket = self._bucket
        if bucket is not None:  # flood control: one subtraction per batch
            bucket.tokens -= len(items)
            if bucket.tokens < 0:
                self._throttle(bucket)
            elif self._episode:
                self._episode = False
        user = self._user_bucket
        if user is not None:  # per-user limits: the user's bucket, shared by its sessions
            user.charge(len(items))
            if user.tokens < 0:
                self._throttle(user)
        if phase is _READY:
            self._handle(items)
        else:  # NEW: what the first command left (a line too long may need READY)
            self._take(items)

    def _take(self, items: list[_Item]) -> None:
        """``items`` from anywhere but a read: the end of the input may hold a first
        command (NEW), then carried out or kept as any read's (_handle decides)."""
        if self._phase is Phase.NEW and items:
            self._enter(_READY)
        self._handle(items)

    def _first_command(self, data: bytes) -> bytes:
        """Decode line by line up to the first command: a hello changes how the lines
        after it are decoded (v2). Returns the bytes after that line."""
        while self._phase is Phase.NEW:
            newline = data.find(b"\n")
            if newline < 0:
                return data  # no complete line yet
            line, data = data[: newline + 1], data[newline + 1 :]
            items = self._decoder.feed(line)
            if not items:
                continue  # a blank line, or the end of a line begun earlier... kept
            first = items[0]
            if type(first) is Hello and first.version >= 2:
                self._hello(first)  # READY, WAITING for the name, or CLOSED
                self._take(items[1:])
            else:
                self._enter(_READY)
                self._take(items)
        return data if self._phase is not _CLOSED else b""

    def _throttle(self, bucket: Bucket) -> None:
        wait = bucket.refill()
        if wait <= 0 or self._throttled:
            return
        self._stats.throttled += 1
        count = self._stats.throttled
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
        self._context.call_later(wait, self._unthrottle)

    def _unthrottle(self) -> None:
        self._throttled = False
        if self._phase is _READY or self._phase is Phase.NEW:
            self._connection.resume_reading()

    def receive_eof(self) -> None:
        """The client closed its side (e.g. nc at the end of its input): carry out a last
        unterminated command, then end the session as the original does."""
        self._eof = True
        if self._phase is Phase.LOGGING_IN:
            return  # read with what came before, after the login (_logged_in)
        self._take(self._decoder.feed_eof())
        self._ended_input()

    def _ended_input(self) -> None:
        """After the end of input was taken: close once nothing waits any more."""
        if self._phase is _READY or self._phase is Phase.NEW:
            self.close("client closed its side")

    def connection_lost(self) -> None:
        """The connection is gone: leave every room (the others see "left")."""
        if self._phase is not _CLOSED:
            self._enter(_CLOSED)
        self._backlog = None
        self.mailbox.close()  # first: the rooms then drop its share of the turn at once
        self._leave_all()
        self._release()

    def _release(self) -> None:
        """Give back what the session held on the server (its name, its heartbeat)."""
        context = self._context
        self._community.leave(self)
        self._as_user(None)
        if self._name_held:
            self._name_held = False
            context.names.release(self.user_id)
        if context.liveness is not None:
            context.liveness.discard(self)

    def _handle(self, items: list[_Item]) -> None:
        """Carry out ``items`` now, or keep them, in order, while a wait is under way:
        the one place that decides (before each command: a join may begin a wait)."""
        index, count = 0, len(items)
        ready = _READY
        # Whether the rest of the read may still be one run: tried once per call (by the
        # first run of several messages), so that a read alternating rooms costs one
        # pass, not one per run.
        whole = True
        while index < count:
            if self._phase is not ready:  # a wait began, or the session ended
                if self._phase is not _CLOSED:
                    self._keep_back(items[index:])
                return
            item = items[index]
            index += 1
            if type(item) is SendMessage:  # by far the most frequent: before the table
                # A run of messages to one room (a busy client's read holds many) is
                # encoded and posted as one event: the members get one append for all.
                room = item.room
                end, contents = index, None
                if whole and end < count and type(items[-1]) is SendMessage:  # often
                    whole = False
                    contents = _contents_of_run(items, index - 1, room)
                if contents is not None:  # the rest of the read
                    end = count
                else:
                    while (
                        end < count and type(run := items[end]) is SendMessage and run.room == room
                    ):
                        end += 1
                handle = self._handles.get(room)
                if handle is not None and not self._shutting_down:
                    if handle.room.behind is not None:  # a member is behind: wait for it
                        self._hold(handle.room, items[index - 1 :])
                        return
                    if handle.room.restricted:  # a mute, slow mode, a DM: checked first
                        self._send_restricted(handle, items[index - 1 : end])
                    elif end == index:
                        if handle.send_message(item.content) is False:
                            self._unshared(items[index - 1 : end])
                    elif contents is not None:
                        if handle.send_contents(contents) is False:
                            self._unshared(items[index - 1 : end])
                    else:
                        sent = cast("list[SendMessage]", items[index - 1 : end])
                        if handle.send_messages(sent) is False:
                            self._unshared(sent)
                else:  # refused: posted ones are counted by their room (ChatRoom.post)
                    self._stats.messages += end - index + 1
                    refusal: Refused = (
                        errors.ShuttingDown() if self._shutting_down else NotJoined.in_room(room)
                    )
                    for refused in items[index - 1 : end]:  # each has its own id (v2)
                        self._refuse(cast(SendMessage, refused), refusal)
                index = end
                continue
            rule = COMMANDS[type(item)]
            if rule.v2_only and not self.v2:  # hello (not first), ping, pong: unknown to v1
                self._stats.ignored += 1
                self._ignore(f"{type(item).__name__} in a v1 session")
            else:
                rule.handler(self, item)

    # -- backpressure (HELD) -----------------------------------------------------------
    def _hold(self, room: ChatRoom, items: list[_Item]) -> None:
        """``items`` begin with a run for ``room``, which has a member behind: keep them
        (first: the backlog being drained is what came before them) and read nothing
        more until the room lets the session go."""
        self._enter(_HELD)
        self._stats.held += 1
        room.hold(self)
        self._connection.pause_reading()
        if self._backlog is None:
            self._backlog = deque(items)
        else:
            self._backlog.extendleft(reversed(items))

    def released(self) -> None:
        """The room that held this session lets it go (rooms.Sender): it carries on
        from a fresh turn of the loop (not from inside the room's or a shell's call)."""
        if self._phase is _HELD:
            self._context.call_later(0, self._go_on)

    def _go_on(self) -> None:
        if self._phase is _HELD:
            self._enter(_READY)
            self._resume()  # post what was kept (it may be held again), then read

    def _send_restricted(self, handle: UserSessionHandle, run: list[_Item]) -> None:
        """Messages to a restricted room (see _handle): those the community allows are
        posted, the others refused (muted, slow mode)."""
        messages = cast("list[SendMessage]", run)
        try:
            allowed = self._community.may_send(self.user_id, handle.room.name, len(messages))
        except Refused as refused:
            allowed, refusal = 0, refused
        else:
            refusal = errors.SlowModeWait("slow mode: one message at a time")
        if allowed == 1:
            if handle.send_message(messages[0].content) is False:
                self._unshared(messages[:1])
        elif allowed and handle.send_messages(messages[:allowed]) is False:
            self._unshared(messages[:allowed])
        self._stats.messages += len(messages) - allowed
        for refused_message in messages[allowed:]:
            self._refuse(refused_message, refusal)

    def _unshared(self, run: Sequence[_Item]) -> None:
        """Messages the bus delivered to this instance's members only (Redis away and
        the outage queue full): a v2 sender is told, each by its id."""
        if not self.v2:
            return
        for message in run:
            self._error(
                "unavailable",
                "the bus is away and this server's outage queue is full: the message "
                "reached the members on this server only",
                "send_message",
                cast(SendMessage, message).id,
            )

    def _keep_back(self, items: list[_Item]) -> None:
        if self._backlog is None:
            self._backlog = deque(items)
        else:
            self._backlog.extend(items)

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        while backlog and self._phase is _READY:
            item = backlog.popleft()
            run = [item]
            if type(item) is SendMessage:  # a run of them to one room: posted as one
                while backlog and type(next_ := backlog[0]) is SendMessage:
                    if next_.room != item.room:
                        break
                    run.append(backlog.popleft())
            self._handle(run)
        if not self._backlog:  # emptied (or dropped at the close): give it back
            self._backlog = None

    def _resume(self) -> None:
        """A wait answered later is over: carry on where it stopped, then read again."""
        self._drain_backlog()
        if self._phase is not _READY and self._phase is not Phase.NEW:
            return  # waiting or held again, or closed
        if self._eof:
            self.close("client closed its side")
        elif not self._throttled:
            self._connection.resume_reading()

    # -- refusals ----------------------------------------------------------------------
    def _refuse(self, item: Command, refusal: Refused) -> None:
        """A command that cannot be carried out: an error in v2, ignored in v1."""
        self._stats.ignored += 1
        if self.v2:
            self._error(refusal.code, refusal.msg, COMMAND_TAGS[type(item)], item.id)
        else:
            self._ignore(f"{type(item).__name__}: {refusal.msg}")

    def _error(
        self, code: str, msg: str, command: str | None = None, ident: str | None = None
    ) -> None:
        self.mailbox.send(encode(Error(code, msg, command, ident)))

    def _ignore(self, what: str) -> None:
        # v1 has no error event (docs/protocol.md): ignore, log, keep the session open.
        # The log is capped per session so that a flood of bad lines cannot flood it.
        before = self._ignored
        self._ignored = count = before + 1
        if before < _IGNORED_LOGGED or count % 1000 == 0:
            log.warning(
                "%r: ignored #%d: %s",
                self,
                count,
                what,
                extra={**self.log_fields, "reason": what},
            )

    # -- commands (the handlers of COMMANDS) -------------------------------------------
    def _join(self, item: JoinRoom) -> None:
        room = item.room
        request = None
        if self.v2:
            if self._shutting_down:
                self._refuse(item, errors.ShuttingDown())
                return
            if item.history is not None and item.after is not None:
                self._refuse(item, BadCommand("h and after exclude each other"))
                return
            request = HistoryRequest(item.history, item.after, item.epoch)
        if room in self._handles:
            self._refuse(item, AlreadyJoined(f"already in room {room!r}"))
            return
        # _wait, _waited and _pause_if_waiting written out: a join storm runs this
        # thousands of times a second, and in process the join is answered at once.
        self._enter(_WAITING)
        self._joining = room
        try:
            self._rooms.join_room(
                room,
                self.mailbox,
                self._joined,
                request,
                claimed=room in self._claims,
                admin=self._admin,
                now=now_ms(),
            )
        except Refused as exc:
            self._joining = None
            self._enter(_READY)
            self._refuse(item, exc)
            return
        if self._phase is _WAITING:  # answered later: read nothing more until then
            self._paused = True
            self._connection.pause_reading()

    def _joined(self, outcome: UserSessionHandle | RoomError) -> None:
        room = self._joining
        if self._phase is _CLOSED:  # the connection went while the join was under way
            self._joining = None
            if isinstance(outcome, UserSessionHandle):
                self._rooms.drop_user_session_handle(outcome)
            return
        self._joining = None
        paused, self._paused = self._paused, False
        self._enter(_READY)
        if isinstance(outcome, RoomError):
            self._stats.ignored += 1
            self._ignore(f"join_room {room!r}: {outcome}")
        else:
            self._handles[outcome.room.name] = outcome
        if paused:  # answered after a wait: carry on where the join stopped
            self._resume()

    def _leave(self, item: LeaveRoom) -> None:
        handle = self._handles.pop(item.room, None)
        if handle is None:
            self._refuse(item, NotJoined.in_room(item.room))
            return
        self._rooms.drop_user_session_handle(handle)

    def _quit(self, item: Quit) -> None:
        self.close("quit")

    def _bad_line(self, item: BadLine) -> None:
        self._stats.bad_lines += 1
        if self.v2:
            self._error("bad_command", item.reason, item.command, item.id)
        else:
            self._ignore(f"bad line ({item.reason}): {item.line[:80]!r}")

    def _line_too_long(self, item: LineTooLong) -> None:
        self._stats.lines_too_long += 1
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

    def _ping(self, item: Ping) -> None:
        self.mailbox.send(encode(ServerPong(item.id)))

    def _pong(self, item: Pong) -> None:
        pass  # heard: receive_data noted it

    def _hello_again(self, item: Hello) -> None:
        self._refuse(item, BadCommand("this session said hello already"))

    # -- community commands (v2: docs/moderation.md) ----------------------------------
    def _ask(
        self,
        item: Command,
        request: Callable[[Callable[[object], None]], None],
        answer: Callable[[object], None],
    ) -> None:
        """Ask the community service: commands wait for the answer (with Redis, after a
        round trip), as during a join, so that what follows sees its effect."""
        self._wait(None)

        def answered(result: object) -> None:
            if self._phase is _CLOSED:
                return
            paused = self._waited()
            if isinstance(result, Refused):
                self._refuse(item, result)
            else:
                answer(result)
            if paused:
                self._resume()
            else:  # answered at once: what the answer queued (a join) goes first
                self._drain_backlog()

        try:
            request(answered)
        except Refused as refused:
            self._waited()
            self._refuse(item, refused)
            return
        self._pause_if_waiting()

    def _create_room(self, item: CreateRoom) -> None:
        community = self._community
        self._ask(
            item,
            lambda done: community.create_room(
                self.actor, item.room, item.description, item.private, done
            ),
            _nothing,
        )

    def _moderate(self, item: Command, action: Action) -> None:
        def answer(result: object) -> None:
            outcome = cast(Outcome, result)
            room = outcome.action.room
            mine = outcome.action.user is not None and name_key(outcome.action.user) == name_key(
                self.user_id
            )
            if (room is None or not self.in_room(room)) and not mine:
                self.tell(moderation_event(outcome))  # the actor sees it done

        self._ask(item, lambda done: self._community.moderate(action, done), answer)

    def _moderation(self, item: Command) -> None:
        """kick, ban, unban, mute, unmute, invite, set_role, slow_mode, archive_room: their
        fields are named alike (room, user, seconds, role, why; see _ACTIONS)."""
        action = Action(
            _ACTIONS[type(item)],
            getattr(item, "room", None),
            self.actor,
            getattr(item, "user", None),
            getattr(item, "seconds", None),
            getattr(item, "role", None),
            getattr(item, "why", None),
        )
        self._moderate(item, action)

    def _audit_log(self, item: AuditRequest) -> None:
        room = self._community.directory.find(item.room)
        name = room.name if room is not None else item.room
        limit = item.limit if item.limit is not None else 100

        def answer(result: object) -> None:
            self.tell(encode(AuditLog(name, tuple(cast("list[AuditEntry]", result)), item.id)))

        self._ask(
            item, lambda done: self._community.audit(self.actor, item.room, limit, done), answer
        )

    def _open_dm(self, item: OpenDm) -> None:
        community = self._community
        self._ask(item, lambda done: community.open_dm(self.actor, item.user, done), _nothing)

    def _close_dm(self, item: CloseDm) -> None:
        self._ask(
            item, lambda done: self._community.close_dm(self.actor, item.user, done), _nothing
        )

    # -- the lasting history (v2: core/keeping.py) --------------------------------------
    def _history_page(self, item: HistoryPage) -> None:
        if item.before is not None and item.after is not None:
            self._refuse(item, BadCommand("before and after exclude each other"))
            return
        keeper = self._context.keeper
        self._ask(
            item,
            lambda done: keeper.page(
                item.room,
                item.room in self._handles,
                item.before,
                item.after,
                item.limit,
                item.epoch,
                item.id,
                done,
            ),
            self._tell_bytes,
        )

    def _tell_bytes(self, result: object) -> None:
        self.tell(cast(bytes, result))

    def _edit_message(self, item: EditMessage) -> None:
        keeper = self._context.keeper
        joined = item.room in self._handles
        self._ask(
            item,
            lambda done: keeper.edit(self.actor, item.room, joined, item.seq, item.content, done),
            _nothing,
        )

    def _delete_message(self, item: DeleteMessage) -> None:
        keeper = self._context.keeper
        joined = item.room in self._handles
        self._ask(
            item,
            lambda done: keeper.delete(self.actor, item.room, joined, item.seq, done),
            _nothing,
        )

    def _carry_out(self, item: Command, action: Callable[[], None]) -> None:
        """A command answered at once: done, or refused."""
        try:
            action()
        except Refused as refused:
            self._refuse(item, refused)

    def _mark_read(self, item: MarkRead) -> None:
        keeper, joined = self._context.keeper, item.room in self._handles
        self._carry_out(item, lambda: keeper.mark(self.user_id, item.room, joined, item.seq))

    def _typing(self, item: StartTyping) -> None:
        keeper, joined = self._context.keeper, item.room in self._handles
        self._carry_out(item, lambda: keeper.typing(self.user_id, item.room, joined))

    def _set_retention(self, item: SetRetention) -> None:
        keeper = self._context.keeper
        self._carry_out(
            item, lambda: keeper.set_retention(self.actor, item.room, item.messages, item.days)
        )

    # -- what the community service asks (community.Occupant) --------------------------
    @property
    def actor(self) -> Actor:
        return Actor(self.user_id, self._admin, cast("tuple[tuple[str, Role], ...]", self._roles))

    @property
    def claims(self) -> tuple[str, ...]:
        return self._claims

    def tell(self, event: bytes) -> None:
        if self._held is not None:
            self._held.append(event)
        elif self._phase is not _CLOSED:
            self.mailbox.send(event)

    def in_room(self, room: str) -> bool:
        return room in self._handles or self._joining == room

    def remove_from(self, room: str) -> None:
        handle = self._handles.pop(room, None)
        if handle is not None:
            self._rooms.drop_user_session_handle(handle)
            return
        if self._joining == room:  # the join's answer finds the session out of it
            chat = self._rooms.rooms.get(room)
            if chat is not None and chat.holds(self.mailbox):
                self._rooms.leave(chat, self.mailbox)

    def open_room(self, room: str, history: int) -> None:
        if self._phase is _CLOSED or not self.v2 or room in self._handles:
            return
        join = JoinRoom(room, history=history)
        if self._phase is _READY:
            self._handle([join])
        else:
            self._keep_back([join])

    def disconnect(self, code: str, why: str) -> None:
        if self._phase is _CLOSED:
            return
        log.info("%r: disconnected (%s): %s", self, code, why)
        if self.v2:
            self._error(code, why)
        self.close(f"disconnected: {why}")

    # -- v2's hello ----------------------------------------------------------------------
    def _hello(self, hello: Hello) -> None:
        """A first hello (NEW): READY as the session's own id, WAITING while a name is
        claimed, or CLOSED when refused."""
        context = self._context
        self._stats.hellos += 1
        try:
            user, proven = self._check_hello(hello)
        except Refused as refused:
            self._hello_refused(hello, refused)
            return
        self._decoder.upgrade()  # what follows the hello is read as v2 (or dropped)
        if user == self.user_id:
            self._enter(_READY)
            self._welcome(hello, user)
            return
        # The registry may answer after a round trip (several instances): until then
        # the session reads nothing and keeps what it has read, as during a join.
        self._wait(None)
        context.names.request(user, proven, lambda holder: self._named(hello, user, holder))
        self._pause_if_waiting()

    def _hello_refused(self, hello: Hello, refused: Refused) -> None:
        self._stats.hellos_refused += 1
        log.info("%r: hello refused (%s): %s", self, refused.code, refused.msg)
        self._error(refused.code, refused.msg, "hello", hello.id)
        self.close(f"hello refused: {refused.code}")

    def _named(self, hello: Hello, user: str, holder: str | None) -> None:
        """The registry's answer to the name ``user``: None (it is the session's) or the
        spelling another user holds it under."""
        context = self._context
        if self._phase is _CLOSED:  # gone while the claim was under way: give it back
            if holder is None:
                context.names.release(user)
            return
        paused = self._waited()
        if holder is not None:
            self._hello_refused(hello, errors.NameTaken(f"the name {user!r} is in use"))
            return
        context.names.release(self.user_id)
        self._community.leave(self)
        self.user_id = self.mailbox.user_id = user
        self._community.enter(self)
        self._as_user(user)
        self._welcome(hello, user)
        if paused:
            self._resume()

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
        listing = self._community.listing_for(self)
        keeper = context.keeper
        if keeper.archive is None:
            self._listed(listing)
            return
        # The unread counts come from the store: commands wait for the listing, which
        # ends the handshake (as a join's answer does), and so does what the community
        # tells the session meanwhile.
        self._held = []
        self._ask(
            hello,
            lambda done: keeper.with_unread(user, listing, done),
            lambda result: self._listed(cast("tuple[RoomListing, ...]", result)),
        )

    def _listed(self, listing: tuple[RoomListing, ...]) -> None:
        """The end of the v2 handshake: the rooms, then the direct messages re-joined."""
        self.mailbox.send(encode(Rooms(listing)))
        held, self._held = self._held, None
        for event in held or ():
            self.mailbox.send(event)
        for room in self._community.open_dms(self.user_id):  # open on this side
            self.open_room(room, DM_HISTORY)

    def _check_hello(self, hello: Hello) -> tuple[str, bool]:
        """The user id the session asks for and whether its token proves it; or
        Refused."""
        context = self._context
        if self._shutting_down:
            raise errors.ShuttingDown()
        name, token = hello.name, hello.token
        identity = None
        if token is not None and context.authenticator is not None and looks_like_jwt(token):
            try:
                identity = context.authenticator.verify(token)
            except AuthError as refused:
                raise errors.AuthFailed(f"the token is refused: {refused}") from None
            if name is None:
                name = identity.name
            elif name_key(name) != name_key(identity.name):
                raise errors.AuthFailed(f"the token is for {identity.name!r}, not {name!r}")
            self._admin = identity.admin
            self._roles = identity.roles
            self._claims = identity.rooms
        if name is None:
            if token is not None:
                raise BadCommand("a token without a name")
            return self.user_id, False
        if not valid_name(name):
            raise errors.NameInvalid("a name is 1 to 32 of A-Z a-z 0-9 _ - . (no spaces)")
        limiter = context.hello_limiter
        if limiter is not None and not limiter.allow(name_key(name)):
            raise errors.RateLimited(f"too many hellos for the name {name!r}: wait a while")
        proven = identity is not None or (
            token is not None and tokens.verify(context.secret, name, token, time.time())
        )
        if context.require_tokens and not proven:
            raise errors.NotAuthorised(f"the name {name!r} needs a valid token")
        banned = refused_join(context.community.directory.server, name, False, False, now_ms())
        if banned is not None:
            raise banned
        if proven and name_key(name) in context.community.admins:
            self._admin = True
        if name_key(name) == name_key(self.user_id):
            return self.user_id, proven  # this session's own random id
        return name, proven  # whether it is free: the name registry answers (_hello)

    # -- what the server and the sweeper ask -------------------------------------------
    def send_ping(self) -> None:
        if self._phase is not _CLOSED:
            self.mailbox.send(encode(ServerPing()))

    def idle_timeout(self, quiet: float) -> None:
        if self._phase is _CLOSED:
            return
        log.info("%r: nothing received for %.1f s, closing", self, quiet)
        self._stats.idle_timeouts += 1
        self._error("idle_timeout", f"nothing received for {round(quiet)} s")
        self.close("idle timeout")

    def shutdown_notice(self) -> None:
        """The server is about to close: v2 sessions are told; commands that still come
        are refused with shutting_down."""
        self._shutting_down = True
        if self.v2 and self._phase is not _CLOSED:
            context = self._context
            self.mailbox.send(encode(Shutdown(context.reconnect_ms, context.shutdown_msg)))

    # -- ending ------------------------------------------------------------------------
    def _leave_all(self) -> None:
        handles = list(self._handles.values())
        self._handles.clear()
        for handle in handles:
            self._rooms.drop_user_session_handle(handle)
        if self._joining is not None:  # a join under way: take the member back out
            room = self._rooms.rooms.get(self._joining)
            self._joining = None
            if room is not None and room.holds(self.mailbox):
                self._rooms.leave(room, self.mailbox)

    def close(self, reason: str, *, announce: bool = True) -> None:
        """End the session: leave every room (with ``announce`` the others see "left";
        at server shutdown that happens when the connection is gone), send what is
        queued, close."""
        if self._phase is _CLOSED:
            return
        if announce:
            self._leave_all()
        self._enter(_CLOSED)
        self.mailbox.flush()
        self._release()
        self._connection.close(reason)

    def abort(self, reason: str) -> None:
        """Drop the connection at once, discarding queued output."""
        if self._phase is _CLOSED:
            return
        self._enter(_CLOSED)
        self.mailbox.close()
        self._leave_all()
        self._release()
        self._connection.abort(reason)


class _Rule:
    """One row of the command table: its handler, and whether v1 knows the command (a
    v1 session ignores the others, logged, as the original ignores unknown lines)."""

    __slots__ = ("handler", "v2_only")

    def __init__(self, handler: Callable[[Session, Any], None], *, v2_only: bool = False) -> None:
        self.handler = handler
        self.v2_only = v2_only


#: The moderation commands and the action each asks for (Session._moderation).
_ACTIONS: dict[type[Any], ModerationAction] = {
    Kick: "kick",
    Ban: "ban",
    Unban: "unban",
    Mute: "mute",
    Unmute: "unmute",
    Invite: "invite",
    SetRole: "role",
    SlowMode: "slow_mode",
    ArchiveRoom: "archive",
}

#: What the session does with each decoded line, but ``send_message`` (see _handle).
COMMANDS: dict[type[Any], _Rule] = {
    JoinRoom: _Rule(Session._join),
    LeaveRoom: _Rule(Session._leave),
    Quit: _Rule(Session._quit),
    BadLine: _Rule(Session._bad_line),
    LineTooLong: _Rule(Session._line_too_long),
    Ping: _Rule(Session._ping, v2_only=True),
    Pong: _Rule(Session._pong, v2_only=True),
    Hello: _Rule(Session._hello_again, v2_only=True),
    CreateRoom: _Rule(Session._create_room, v2_only=True),
    **{kind: _Rule(Session._moderation, v2_only=True) for kind in _ACTIONS},
    AuditRequest: _Rule(Session._audit_log, v2_only=True),
    OpenDm: _Rule(Session._open_dm, v2_only=True),
    CloseDm: _Rule(Session._close_dm, v2_only=True),
    HistoryPage: _Rule(Session._history_page, v2_only=True),
    EditMessage: _Rule(Session._edit_message, v2_only=True),
    DeleteMessage: _Rule(Session._delete_message, v2_only=True),
    MarkRead: _Rule(Session._mark_read, v2_only=True),
    StartTyping: _Rule(Session._typing, v2_only=True),
    SetRetention: _Rule(Session._set_retention, v2_only=True),
}


def _nothing(result: object) -> None:
    """The answer to a request whose effect the session sees as events already."""
