"""The client's side of a session, sans-I/O: bytes in, events and bytes out.

:class:`ClientProtocol` holds every rule of a client session (docs/protocol.md) and no
I/O: no socket, no event loop, no clock. Whoever drives it (the asyncio layer,
:mod:`roomchat.client.connection`, or a test) feeds it what the server sent with
:meth:`~ClientProtocol.receive_data` and :meth:`~ClientProtocol.receive_eof`, then takes

- :meth:`~ClientProtocol.events_received`: the events for the application, in order;
- :meth:`~ClientProtocol.replies_received`: answers to what it was told to wait for
  (:class:`JoinAnswered`, :class:`JoinRefused`, :class:`PongAnswered`,
  :class:`PageAnswered`, :class:`PageRefused`);
- :meth:`~ClientProtocol.raw_received`: in raw mode, the bytes handed over undecoded;
- :meth:`~ClientProtocol.data_to_send`: what to write to the server (commands, and what
  the protocol answers itself: the ``hello`` after login, pongs, its own pings);

and reads :attr:`~ClientProtocol.state`, :attr:`~ClientProtocol.login`,
:attr:`~ClientProtocol.welcome` and :attr:`~ClientProtocol.failure` for the handshake.

Time enters only as calls from the driver: :meth:`~ClientProtocol.hello_timed_out`
when the driver's wait for ``welcome`` is over, and
:meth:`~ClientProtocol.heartbeat_tick` every :attr:`~ClientProtocol.heartbeat_interval`
seconds. The wire format is :mod:`roomchat.protocol`'s; this module writes no JSON.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from roomchat.protocol import (
    PROTOCOL_VERSION,
    ArchiveRoom,
    AuditRequest,
    BadLine,
    Ban,
    CloseDm,
    Command,
    CreateRoom,
    DeleteMessage,
    EditMessage,
    Error,
    Event,
    EventDecoder,
    Hello,
    History,
    HistoryPage,
    Invite,
    JoinRoom,
    Kick,
    LeaveRoom,
    LineTooLong,
    LoginSuccessful,
    MarkRead,
    Mute,
    OpenDm,
    Ping,
    Pong,
    Quit,
    Role,
    RoomAdded,
    RoomListing,
    RoomRemoved,
    Rooms,
    SendMessage,
    ServerPing,
    ServerPong,
    SetRole,
    SlowMode,
    StartTyping,
    Unban,
    Unmute,
    UserJoinedRoom,
    UserMessage,
    Welcome,
    encode,
)

__all__ = [
    "DEFAULT_CLIENT_MAX_LINE_LENGTH",
    "HEARTBEAT_ID",
    "HELLO_ID",
    "ClientProtocol",
    "CommandError",
    "ConnectionClosed",
    "HelloRefused",
    "JoinAnswered",
    "JoinRefused",
    "JoinResult",
    "PageAnswered",
    "PageRefused",
    "PongAnswered",
    "ProtocolViolation",
    "Reply",
    "State",
]

#: A server's events can be long (``us`` lists every member of a room), so the
#: client accepts longer lines than the server does.
DEFAULT_CLIENT_MAX_LINE_LENGTH = 16 * 1024 * 1024

#: The id of the client's own keep-alive pings; their pongs are never delivered.
HEARTBEAT_ID = "~hb"
#: The id of the ``hello``, which the server echoes in its refusal.
HELLO_ID = "hello"

_PONG = encode(Pong())
_HEARTBEAT_PING = encode(Ping(HEARTBEAT_ID))
# Heartbeat ticks come every half heartbeat: ping after two silent ones (one heartbeat),
# give up after four (docs/protocol.md, "Heartbeats").
_PING_AFTER_TICKS = 2
_GIVE_UP_AFTER_TICKS = 4


class ConnectionClosed(Exception):
    """The connection to the server is closed; no more events will come."""


class ProtocolViolation(Exception):
    """The server did not speak protocol v1 (e.g. no ``login_successful`` first)."""


class CommandError(Exception):
    """A v2 server refused a command; ``error`` is its ``error`` event."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.msg}")
        self.error = error


class HelloRefused(CommandError):
    """A v2 server refused the ``hello`` (name taken or invalid, bad token, shutting
    down) and closed the connection."""


@dataclass(frozen=True, slots=True)
class JoinResult:
    """What a join waited for got: the reply, and in v2 the history."""

    joined: UserJoinedRoom
    history: History | None


@dataclass(frozen=True, slots=True)
class JoinAnswered:
    """The join of ``room`` that :meth:`ClientProtocol.expect_join` announced is done."""

    room: str
    result: JoinResult


@dataclass(frozen=True, slots=True)
class JoinRefused:
    """The server refused that join (a v2 ``error`` carrying the join's id)."""

    room: str
    error: Error


@dataclass(frozen=True, slots=True)
class PongAnswered:
    """The pong to :meth:`ClientProtocol.ping` with this id came."""

    id: str


@dataclass(frozen=True, slots=True)
class PageAnswered:
    """The ``history`` page that :meth:`ClientProtocol.expect_page` announced came."""

    id: str
    history: History


@dataclass(frozen=True, slots=True)
class PageRefused:
    """The server refused that page (an ``error`` carrying the page's id)."""

    id: str
    error: Error


Reply = JoinAnswered | JoinRefused | PongAnswered | PageAnswered | PageRefused


class State(enum.Enum):
    LOGIN = "login"  # waiting for login_successful, which must come first
    HELLO = "hello"  # v2: hello sent, waiting for welcome (or for hello_timed_out)
    OPEN = "open"  # the session is on: v1, v2, or v1 after a hello nobody answered
    FAILED = "failed"  # the server broke the protocol or refused the hello: see failure
    CLOSED = "closed"  # the server closed its side


_LOGGED_IN = frozenset({State.HELLO, State.OPEN})


class _PendingJoin:
    __slots__ = ("id", "joined")

    def __init__(self, ident: str | None) -> None:
        self.id = ident
        self.joined: UserJoinedRoom | None = None


class ClientProtocol:
    """One client session's rules, fed bytes, answering with events and bytes.

    ``v2``: say ``hello`` (with ``name`` and ``token``) as soon as the login came, and
    wait in :attr:`State.HELLO` until ``welcome``, a refusal, or
    :meth:`hello_timed_out`. ``raw``: after the handshake (login, and in v2 the welcome
    or the fallback), nothing is decoded any more; the bytes are handed over as they
    came, through :meth:`raw_received` (the driver then answers the server's pings).
    """

    def __init__(
        self,
        *,
        v2: bool = False,
        name: str | None = None,
        token: str | None = None,
        raw: bool = False,
        max_line_length: int = DEFAULT_CLIENT_MAX_LINE_LENGTH,
    ) -> None:
        if (name is not None or token is not None) and not v2:
            raise ValueError("name and token need v2=True")
        #: The ``hello`` said after the login (v2), or None.
        self.hello: Hello | None = Hello(PROTOCOL_VERSION, name, token, HELLO_ID) if v2 else None
        self.raw = raw
        self.state = State.LOGIN
        self.login: LoginSuccessful | None = None
        #: v2's welcome: set also when it comes after the fallback to v1 (a slow server).
        self.welcome: Welcome | None = None
        #: Why the session failed (state FAILED): the server broke the protocol, or
        #: refused the hello.
        self.failure: ProtocolViolation | HelloRefused | None = None
        #: Lines from the server that were not valid events (they are skipped).
        self.protocol_errors = 0
        #: Seconds between calls of :meth:`heartbeat_tick`, once the welcome asked for
        #: heartbeats; None until then (and in v1).
        self.heartbeat_interval: float | None = None
        self._decoder = EventDecoder(max_line_length)
        self._events: list[Event] = []
        self._replies: list[Reply] = []
        self._out: list[bytes] = []
        self._raw_in: list[bytes] = []
        self._joins: dict[str, _PendingJoin] = {}
        self._pongs: set[str] = set()
        self._pages: set[str] = set()
        self._silent_ticks = 0
        #: v2 with the ``rooms`` feature: the rooms this session can see, by name (the
        #: ``rooms`` event after ``welcome``, then each ``room_added``/``room_removed``;
        #: the events are delivered too, but ``rooms``, which ends the handshake).
        self.listing: dict[str, RoomListing] = {}

    # -- what the session is ---------------------------------------------------------
    @property
    def version(self) -> int:
        """2 once the server sent ``welcome``, else 1."""
        return 1 if self.welcome is None else self.welcome.version

    @property
    def handshake_done(self) -> bool:
        """Past the login and the hello (answered, refused or timed out)."""
        return self.state is not State.LOGIN and self.state is not State.HELLO

    @property
    def raw_open(self) -> bool:
        """Raw mode, and the handshake is over: every later byte is the caller's."""
        return self.raw and self.state is State.OPEN

    # -- input -----------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Take bytes from the server (any split: partial lines are kept)."""
        state = self.state
        if state is State.OPEN:
            if self.raw:
                self._raw_in.append(data)
            else:
                self._decode(data)
            return
        if state is State.FAILED or state is State.CLOSED:
            return  # nothing the server says now changes anything
        if not self.raw:
            self._decode(data)
            return
        # Raw mode before the handshake is done: decode line by line until the login
        # line (and in v2 the welcome), then hand over whatever follows undecoded.
        while data and not self.handshake_done:
            newline = data.find(b"\n")
            if newline < 0:
                self._decode(data)
                return
            self._decode(data[: newline + 1])
            data = data[newline + 1 :]
        if data and self.state is State.OPEN:
            self._raw_in.append(data)

    def receive_eof(self) -> None:
        """The server closed its side. An unterminated last line is dropped; pending
        joins and pings will get no answer (the driver fails their waiters)."""
        self.state = State.CLOSED
        self._joins.clear()
        self._pongs.clear()
        self._pages.clear()

    def hello_timed_out(self) -> None:
        """The driver stopped waiting for ``welcome``: a server without v2 (the original,
        or roomchat before v2). The session goes on in v1; a welcome that still comes
        switches it to v2."""
        if self.state is State.HELLO:
            self.state = State.OPEN

    # -- output ------------------------------------------------------------------------
    def events_received(self) -> list[Event]:
        """The events decoded since the last call, for the application."""
        events, self._events = self._events, []
        return events

    def replies_received(self) -> list[Reply]:
        """Answers to :meth:`expect_join`, :meth:`ping` and :meth:`expect_page` since the
        last call."""
        replies, self._replies = self._replies, []
        return replies

    def raw_received(self) -> bytes:
        """Raw mode: the undecoded bytes received since the last call (lines may be
        split across calls)."""
        raw, self._raw_in = self._raw_in, []
        return b"".join(raw)

    def data_to_send(self) -> bytes:
        """The bytes to write to the server, in order, since the last call."""
        out, self._out = self._out, []
        return b"".join(out)

    # -- commands ----------------------------------------------------------------------
    def send(self, command: Command) -> None:
        self._out.append(encode(command))

    def join(
        self,
        room: str,
        *,
        history: int | None = None,
        after: int | None = None,
        id: str | None = None,
        epoch: str | None = None,
    ) -> None:
        """``join_room``; in v2 with ``history`` (the last N messages) or ``after``
        (every message after that sequence number) and ``id``; with ``after``, ``epoch``
        is the epoch ``after`` counts in (a ``history``'s ``e``: the server then tells a
        restarted numbering by ``gap``). v1 drops them all."""
        if history is not None and after is not None:
            raise ValueError("history and after exclude each other")
        if self.version < 2:
            self.send(JoinRoom(room))
        else:
            self.send(JoinRoom(room, history, after, id, epoch if after is not None else None))

    def leave(self, room: str, *, id: str | None = None) -> None:
        self.send(LeaveRoom(room, id if self.version >= 2 else None))

    def send_message(self, room: str, content: str, *, id: str | None = None) -> None:
        if id is None or self.version < 2:
            self.send(SendMessage(room, content))
        else:
            self.send(SendMessage(room, content, id))

    def quit(self) -> None:
        self.send(Quit())

    def ping(self, id: str) -> None:
        """v2: ask the server for a pong; its arrival is a :class:`PongAnswered` reply
        (and is not delivered as an event)."""
        if self.version < 2:
            raise RuntimeError("ping needs a v2 session")
        self._pongs.add(id)
        self.send(Ping(id))

    def cancel_pong(self, id: str) -> None:
        """Stop waiting for that pong (if it comes, it is delivered as an event)."""
        self._pongs.discard(id)

    # -- rooms, moderation, direct messages (v2: docs/moderation.md) ---------------------
    def _v2(self, what: str) -> None:
        if self.version < 2:
            raise RuntimeError(f"{what} needs a v2 session")

    def create_room(
        self, room: str, description: str = "", *, private: bool = False, id: str | None = None
    ) -> None:
        self._v2("create_room")
        self.send(CreateRoom(room, description, private, id))

    def archive_room(self, room: str, *, why: str | None = None, id: str | None = None) -> None:
        self._v2("archive_room")
        self.send(ArchiveRoom(room, why, id))

    def invite(self, room: str, user: str, *, id: str | None = None) -> None:
        self._v2("invite")
        self.send(Invite(room, user, id))

    def kick(self, room: str, user: str, *, why: str | None = None, id: str | None = None) -> None:
        self._v2("kick")
        self.send(Kick(room, user, why, id))

    def ban(
        self,
        user: str,
        room: str | None = None,
        *,
        seconds: int | None = None,
        why: str | None = None,
        id: str | None = None,
    ) -> None:
        """Ban ``user`` from ``room`` (None: from the server, admins only)."""
        self._v2("ban")
        self.send(Ban(user, room, seconds, why, id))

    def unban(self, user: str, room: str | None = None, *, id: str | None = None) -> None:
        self._v2("unban")
        self.send(Unban(user, room, id))

    def mute(
        self,
        user: str,
        room: str | None = None,
        *,
        seconds: int | None = None,
        why: str | None = None,
        id: str | None = None,
    ) -> None:
        self._v2("mute")
        self.send(Mute(user, room, seconds, why, id))

    def unmute(self, user: str, room: str | None = None, *, id: str | None = None) -> None:
        self._v2("unmute")
        self.send(Unmute(user, room, id))

    def set_role(self, room: str, user: str, role: Role, *, id: str | None = None) -> None:
        self._v2("set_role")
        self.send(SetRole(room, user, role, id))

    def slow_mode(self, room: str, seconds: int, *, id: str | None = None) -> None:
        self._v2("slow_mode")
        self.send(SlowMode(room, seconds, id))

    def audit_log(self, room: str, *, limit: int | None = None, id: str | None = None) -> None:
        self._v2("audit_log")
        self.send(AuditRequest(room, limit, id))

    def open_dm(self, user: str, *, history: int | None = None, id: str | None = None) -> None:
        """Open the direct message with ``user`` (it is joined: ``user_joined_room``)."""
        self._v2("open_dm")
        self.send(OpenDm(user, history, None, id))

    def close_dm(self, user: str, *, id: str | None = None) -> None:
        self._v2("close_dm")
        self.send(CloseDm(user, id))

    # -- the lasting history (v2: docs/protocol.md, "History that lasts") ---------------
    def history_page(
        self,
        room: str,
        *,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
        epoch: str | None = None,
        id: str | None = None,
    ) -> None:
        """Ask for a page of the room's stored history: the ``limit`` messages below
        ``before`` (or above ``after``; neither: the latest), answered by a ``history``
        event with ``id``. Announce it with :meth:`expect_page` to get the answer as a
        :class:`PageAnswered` reply instead of an event."""
        self._v2("history")
        if before is not None and after is not None:
            raise ValueError("before and after exclude each other")
        self.send(HistoryPage(room, before, after, limit, epoch, id))

    def expect_page(self, id: str) -> None:
        """The ``history`` answering the page with this ``id`` is a :class:`PageAnswered`
        reply (not delivered as an event); an ``error`` with the id is a
        :class:`PageRefused` (and delivered as an event too)."""
        self._pages.add(id)

    def cancel_page(self, id: str) -> None:
        """Stop waiting for that page (if it comes, it is delivered as an event)."""
        self._pages.discard(id)

    def edit_message(self, room: str, seq: int, content: str, *, id: str | None = None) -> None:
        """Replace message ``seq``'s content (the room's members get ``message_edited``)."""
        self._v2("edit_message")
        self.send(EditMessage(room, seq, content, id))

    def delete_message(self, room: str, seq: int, *, id: str | None = None) -> None:
        """Delete message ``seq`` (the room's members get ``message_deleted``)."""
        self._v2("delete_message")
        self.send(DeleteMessage(room, seq, id))

    def mark_read(self, room: str, seq: int, *, id: str | None = None) -> None:
        """Everything up to message ``seq`` of the room is read (the marker never goes
        back)."""
        self._v2("mark_read")
        self.send(MarkRead(room, seq, id))

    def typing(self, room: str, *, id: str | None = None) -> None:
        """This user is typing in the room (the server passes it on at most every 3 s)."""
        self._v2("typing")
        self.send(StartTyping(room, id))

    def expect_join(self, room: str, id: str | None) -> None:
        """Announce a join of ``room`` to be answered with a reply: ``user_joined_room``
        (and in v2 with history, the ``history`` after it) gives :class:`JoinAnswered`,
        an ``error`` with the join's ``id`` gives :class:`JoinRefused`. The events are
        delivered as well. Send the join itself with :meth:`join`."""
        if room in self._joins:
            raise RuntimeError(f"already joining {room!r}")
        self._joins[room] = _PendingJoin(id)

    def joining(self, room: str) -> bool:
        return room in self._joins

    def cancel_join(self, room: str) -> None:
        self._joins.pop(room, None)

    # -- heartbeat ---------------------------------------------------------------------
    def heartbeat_tick(self, *, data_seen: bool, reading_paused: bool = False) -> str | None:
        """One tick of the watchdog, every :attr:`heartbeat_interval` seconds.

        ``data_seen``: whether any bytes came since the previous tick (the driver counts
        them: raw bytes, once handed over, need not pass through here). The server pings
        when it has heard nothing from us for a heartbeat; we ping when we have heard
        nothing for one (two silent ticks), and give up after two heartbeats. While
        ``reading_paused``, silence proves nothing (we are not reading). Returns why to
        give up (the driver aborts the connection), else None.
        """
        if data_seen or reading_paused:
            self._silent_ticks = 0
            return None
        self._silent_ticks += 1
        if self._silent_ticks >= _GIVE_UP_AFTER_TICKS:
            heartbeat = 0 if self.welcome is None else self.welcome.heartbeat
            return f"nothing from the server for {2 * heartbeat} s"
        if self._silent_ticks == _PING_AFTER_TICKS:
            self._out.append(_HEARTBEAT_PING)
        return None

    # -- decoding ----------------------------------------------------------------------
    def _decode(self, data: bytes) -> None:
        items = self._decoder.feed(data)
        if self.state is State.OPEN:
            # No item can leave OPEN: the loop needs no state check per event.
            events = self._events
            for item in items:
                if type(item) is UserMessage:
                    events.append(item)
                elif isinstance(item, BadLine | LineTooLong):
                    self.protocol_errors += 1
                elif not self._answer(item):
                    events.append(item)
            return
        for item in items:
            if isinstance(item, BadLine | LineTooLong):
                self.protocol_errors += 1
            elif self.state is State.LOGIN:
                if type(item) is LoginSuccessful:
                    self._logged_in(item)
                else:
                    self._fail(ProtocolViolation(f"expected login_successful first, got {item!r}"))
            elif self.state in _LOGGED_IN and (
                type(item) is UserMessage or not self._answer(item)
            ):  # (FAILED: the rest is dropped)
                self._events.append(item)

    def _logged_in(self, login: LoginSuccessful) -> None:
        self.login = login
        if self.hello is None:
            self.state = State.OPEN
        else:
            self.state = State.HELLO
            self.send(self.hello)

    def _fail(self, failure: ProtocolViolation | HelloRefused) -> None:
        self.failure = failure
        self.state = State.FAILED

    def _answer(self, item: Event) -> bool:
        """Handle what the client answers itself; True if ``item`` is not delivered."""
        if type(item) is ServerPing:
            self._out.append(_PONG)
            return True
        if type(item) is Welcome:
            self._welcomed(item)
            return True
        if type(item) is Rooms:
            self.listing = {room.name: room for room in item.rooms}
            if self.state is State.HELLO and self.welcome is not None:
                self.state = State.OPEN
            return True
        if type(item) is RoomAdded:
            self.listing[item.room.name] = item.room
            return False
        if type(item) is RoomRemoved:
            self.listing.pop(item.room, None)
            return False
        if type(item) is ServerPong and item.id is not None:
            if item.id == HEARTBEAT_ID:
                return True
            if item.id in self._pongs:
                self._pongs.discard(item.id)
                self._replies.append(PongAnswered(item.id))
                return True
            return False
        if type(item) is History and item.id is not None:
            if item.id in self._pages:
                self._pages.discard(item.id)
                self._replies.append(PageAnswered(item.id, item))
                return True
            return False  # a page nobody waits for (a join's history has no id)
        if type(item) is Error:
            if item.command == "history" and item.id is not None and item.id in self._pages:
                self._pages.discard(item.id)
                self._replies.append(PageRefused(item.id, item))
                return False
            if item.command == "hello" and self.state is State.HELLO:
                self._fail(HelloRefused(item))
                return True
            if item.command == "join_room" and item.id is not None:
                for room, pending in list(self._joins.items()):
                    if pending.id == item.id:
                        del self._joins[room]
                        self._replies.append(JoinRefused(room, item))
            return False
        if self._joins:
            if type(item) is UserJoinedRoom:
                joining = self._joins.get(item.room)
                if joining is not None:
                    joining.joined = item
                    if self.welcome is None or "history" not in self.welcome.features:
                        self._join_done(item.room, None)
            elif type(item) is History:
                self._join_done(item.room, item)
        return False

    def _welcomed(self, welcome: Welcome) -> None:
        self.welcome = welcome
        if self.state is State.HELLO and "rooms" not in welcome.features:
            self.state = State.OPEN  # else once the rooms event came, right after
        if (
            self.heartbeat_interval is None
            and welcome.heartbeat > 0
            and "heartbeat" in welcome.features
        ):
            # Half a heartbeat, so that silence is noticed within one and a half.
            self.heartbeat_interval = welcome.heartbeat / 2

    def _join_done(self, room: str, history: History | None) -> None:
        pending = self._joins.get(room)
        if pending is None or pending.joined is None:
            return
        del self._joins[room]
        self._replies.append(JoinAnswered(room, JoinResult(pending.joined, history)))
