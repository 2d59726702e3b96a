"""asyncio client library for protocol v1 servers (roomchat or rust-chat-server), and
roomchat's opt-in v2 (docs/protocol.md, "Version 2") with fallback to v1.

    async with await connect("127.0.0.1", 8080) as client:
        print(client.user_id, [room.name for room in client.rooms])
        await client.join("general")
        await client.send("general", "hello")
        async for event in client:
            print(event)

With ``connect(..., v2=True, name="alice")`` the client sends ``hello`` and waits up to
``hello_timeout`` for ``welcome``; a server that does not answer (the original, or
roomchat before v2) leaves the session in v1 (``client.version == 1``) and everything
v1 works as before. In v2 the client answers the server's pings itself, and errors
arrive as :class:`~roomchat.protocol.Error` events in the event stream.
:class:`ReconnectingClient` adds reconnection with catch-up on top.

Events arrive either through ``async for`` (queued; reading from the socket pauses
while too many wait, so memory stays bounded) or, for callers that must not pay a
task switch per event, through an ``on_event`` callback. A caller that must not even
pay for decoding every event (the load tool, receiving a million deliveries a second)
can take the raw bytes after login with ``on_data`` and scan them itself.
This module knows nothing of the server; it uses only :mod:`roomchat.protocol`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from ssl import SSLContext, create_default_context
from types import TracebackType
from typing import cast

from roomchat.protocol import (
    PROTOCOL_VERSION,
    BadLine,
    Command,
    Error,
    Event,
    EventDecoder,
    Hello,
    History,
    JoinRoom,
    LeaveRoom,
    LineTooLong,
    LoginSuccessful,
    Ping,
    Pong,
    Quit,
    RoomDetail,
    SendMessage,
    ServerPing,
    ServerPong,
    Shutdown,
    UserJoinedRoom,
    UserMessage,
    Welcome,
    encode,
)

__all__ = [
    "DEFAULT_CLIENT_MAX_LINE_LENGTH",
    "ChatClient",
    "ClientEvent",
    "CommandError",
    "ConnectionClosed",
    "DataCallback",
    "Disconnected",
    "EventCallback",
    "HelloRefused",
    "JoinResult",
    "MissedMessages",
    "ProtocolViolation",
    "Reconnected",
    "ReconnectingClient",
    "connect",
    "parse_address",
    "tls_context",
]

#: A server's events can be long (``us`` lists every member of a room), so the
#: client accepts longer lines than the server does.
DEFAULT_CLIENT_MAX_LINE_LENGTH = 16 * 1024 * 1024

_QUEUE_HIGH = 10_000  # queued events at which reading pauses
_QUEUE_LOW = 1_000  # ... and resumes

EventCallback = Callable[[Event], None]
DataCallback = Callable[[bytes], None]


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
    """What :meth:`ChatClient.join_and_wait` got: the reply, and in v2 the history."""

    joined: UserJoinedRoom
    history: History | None


_HEARTBEAT_ID = "~hb"  # the id of the client's own keep-alive pings (never shown)


class _JoinWaiter:
    __slots__ = ("future", "id", "joined")

    def __init__(self, future: asyncio.Future[JoinResult], ident: str | None) -> None:
        self.future = future
        self.id = ident
        self.joined: UserJoinedRoom | None = None


def parse_address(address: str, default_port: int = 8080) -> tuple[str, int]:
    """Split ``host:port`` (``[::1]:8080`` for IPv6; a bare host takes ``default_port``)."""
    address = address.strip()
    if not address:
        raise ValueError("empty address")
    if address.startswith("["):
        host, sep, rest = address[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"invalid address {address!r}")
        port_text = rest[1:] if rest else str(default_port)
    elif address.count(":") == 1:
        host, port_text = address.split(":")
    elif ":" in address:
        host, port_text = address, str(default_port)  # a bare IPv6 address
    else:
        host, port_text = address, str(default_port)
    if not host:
        raise ValueError(f"invalid address {address!r}: no host")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid address {address!r}: port is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid address {address!r}: port out of range")
    return host, port


def tls_context(ca: str | Path | None = None) -> SSLContext:
    """A client TLS context that checks the server's certificate and name: against the
    system's CAs, or only against the CA certificate(s) in the PEM file ``ca``.

    Raises OSError (ssl.SSLError) if ``ca`` cannot be read or is not a certificate."""
    return create_default_context(cafile=None if ca is None else str(ca))


class _ClientProtocol(asyncio.Protocol):
    def __init__(
        self,
        max_line_length: int,
        on_event: EventCallback | None,
        on_data: DataCallback | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._decoder = EventDecoder(max_line_length)
        self._on_event = on_event
        self._on_data = on_data
        self.transport: asyncio.Transport | None = None
        self.login: asyncio.Future[LoginSuccessful] = self._loop.create_future()
        self.queue: collections.deque[Event] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.close_reason: str | None = None
        self.protocol_errors = 0
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._writing_paused = False
        # v2
        self.handshake_done = False  # login, and the hello's answer (or its timeout)
        self.hello: asyncio.Future[Welcome | Error] | None = None  # while hello is pending
        self.welcome: Welcome | None = None
        self.pings: dict[str, asyncio.Future[None]] = {}
        self.joins: dict[str, _JoinWaiter] = {}
        self._received = 0  # data_received calls, for the heartbeat watchdog
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._received += 1
        on_data = self._on_data
        if on_data is None:
            self._decode(data)
            return
        if self.handshake_done:
            on_data(data)
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
        if data and self.handshake_done and self.login.exception() is None:
            on_data(data)

    def _decode(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, BadLine | LineTooLong):
                self.protocol_errors += 1
            elif not self.login.done():
                if isinstance(item, LoginSuccessful):
                    self.login.set_result(item)
                    if self.hello is None:  # no hello will be sent: v1
                        self.handshake_done = True
                else:
                    self.login.set_exception(
                        ProtocolViolation(f"expected login_successful first, got {item!r}")
                    )
            elif type(item) is UserMessage or not self._v2_event(item):
                self._deliver(item)
        if self.queue and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _deliver(self, item: Event) -> None:
        if self._on_event is not None:
            self._on_event(item)
        else:
            self.queue.append(item)
            if len(self.queue) >= _QUEUE_HIGH and self.transport is not None:
                self.transport.pause_reading()
                self.reading_paused = True

    def _v2_event(self, item: Event) -> bool:
        """Handle what the client answers itself; True if ``item`` is not delivered."""
        if type(item) is ServerPing:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(encode(Pong()))
            return True
        if type(item) is Welcome:
            self.welcome = item  # also when it comes after the fallback to v1
            if self.hello is not None and not self.hello.done():
                self.hello.set_result(item)
            self.handshake_done = True
            self._start_watchdog()
            return True
        if type(item) is ServerPong and item.id is not None:
            if item.id == _HEARTBEAT_ID:
                return True
            future = self.pings.pop(item.id, None)
            if future is not None:
                if not future.done():
                    future.set_result(None)
                return True
            return False
        if type(item) is Error:
            if item.command == "hello" and self.hello is not None and not self.hello.done():
                self.hello.set_result(item)
                self.handshake_done = True
                return True
            if item.command == "join_room" and item.id is not None:
                for room, failed in list(self.joins.items()):
                    if failed.id == item.id:
                        del self.joins[room]
                        if not failed.future.done():
                            failed.future.set_exception(CommandError(item))
            return False
        if self.joins:
            if type(item) is UserJoinedRoom:
                waiter = self.joins.get(item.room)
                if waiter is not None:
                    waiter.joined = item
                    welcome = self.welcome
                    if welcome is None or "history" not in welcome.features:
                        self._join_done(item.room, None)
            elif type(item) is History:
                self._join_done(item.room, item)
        return False

    def _join_done(self, room: str, history: History | None) -> None:
        waiter = self.joins.get(room)
        if waiter is None or waiter.joined is None:
            return
        del self.joins[room]
        if not waiter.future.done():
            waiter.future.set_result(JoinResult(waiter.joined, history))

    def _start_watchdog(self) -> None:
        # The server pings after hb seconds without hearing from us; we ping when we
        # have heard nothing for hb seconds, and give up after 2 hb (docs/protocol.md).
        welcome = self.welcome
        if (
            self._watchdog is not None
            or welcome is None
            or welcome.heartbeat <= 0
            or "heartbeat" not in welcome.features
        ):
            return
        tick = welcome.heartbeat / 2
        state = {"seen": self._received, "silent": 0}

        def check() -> None:
            transport = self.transport
            if self.closed.done() or transport is None or transport.is_closing():
                return
            if self._received != state["seen"] or self.reading_paused:
                # (paused: we are not reading, so the server's silence proves nothing)
                state["seen"], state["silent"] = self._received, 0
            else:
                state["silent"] += 1
                if state["silent"] >= 4:
                    self.close_reason = f"nothing from the server for {2 * welcome.heartbeat} s"
                    transport.abort()
                    return
                if state["silent"] == 2:
                    transport.write(encode(Ping(_HEARTBEAT_ID)))
            self._watchdog = self._loop.call_later(tick, check)

        self._watchdog = self._loop.call_later(tick, check)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_reason is None:
            self.close_reason = str(exc) if exc else "connection closed"
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.hello is not None and not self.hello.done():
            self.hello.set_exception(ConnectionClosed(f"closed after hello: {self.close_reason}"))
            self.hello.exception()  # retrieved: connect() may have stopped waiting
        futures: list[asyncio.Future[None] | asyncio.Future[JoinResult]] = [
            *self.pings.values(),
            *(waiter.future for waiter in self.joins.values()),
        ]
        for future in futures:
            if not future.done():
                future.set_exception(ConnectionClosed(self.close_reason))
        self.pings.clear()
        self.joins.clear()
        if not self.login.done():
            self.login.set_exception(ConnectionClosed(f"closed before login: {self.close_reason}"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionClosed(self.close_reason))
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- used by ChatClient -----------------------------------------------------
    async def drain(self) -> None:
        if self._writing_paused and not self.closed.done():
            waiter = self._loop.create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def resume_reading_if_low(self) -> None:
        if self.reading_paused and len(self.queue) <= _QUEUE_LOW and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()


class ChatClient:
    """One session with a protocol v1 or v2 server. Create it with :func:`connect`."""

    def __init__(self, protocol: _ClientProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport
        self.login: LoginSuccessful = protocol.login.result()
        self._ids = itertools.count(1)

    # -- what the server told us at login (and in v2 at welcome) ------------------------
    @property
    def version(self) -> int:
        """2 once the server sent ``welcome``, else 1."""
        return 1 if self._protocol.welcome is None else self._protocol.welcome.version

    @property
    def welcome(self) -> Welcome | None:
        return self._protocol.welcome

    @property
    def user_id(self) -> str:
        """In v2 the welcome's ``u`` (the name, or the random id), else the login's."""
        welcome = self._protocol.welcome
        return self.login.user_id if welcome is None else welcome.user_id

    @property
    def session_id(self) -> str:
        return self.login.session_id

    @property
    def token(self) -> str | None:
        """v2: the token proving :attr:`user_id`, for a second session or a reconnect."""
        welcome = self._protocol.welcome
        return None if welcome is None else welcome.token

    @property
    def features(self) -> frozenset[str]:
        welcome = self._protocol.welcome
        return frozenset() if welcome is None else frozenset(welcome.features)

    @property
    def rooms(self) -> tuple[RoomDetail, ...]:
        return self.login.rooms

    # -- state -----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._protocol.closed.done()

    @property
    def close_reason(self) -> str | None:
        return self._protocol.close_reason

    @property
    def protocol_errors(self) -> int:
        """Lines from the server that were not valid events (they are skipped)."""
        return self._protocol.protocol_errors

    def new_id(self) -> str:
        """A fresh command id (``"1"``, ``"2"``, ...) for this session."""
        return str(next(self._ids))

    # -- commands ----------------------------------------------------------------------
    async def join(
        self,
        room: str,
        *,
        history: int | None = None,
        after: int | None = None,
        id: str | None = None,
    ) -> None:
        """Send ``join_room``. In v2, ``history`` asks for the last N messages, ``after``
        for every message after that sequence number (catch-up); v1 drops them."""
        if history is not None and after is not None:
            raise ValueError("history and after exclude each other")
        if self.version < 2:
            await self.send_command(JoinRoom(room))
        else:
            await self.send_command(JoinRoom(room, history, after, id))

    async def join_and_wait(
        self,
        room: str,
        *,
        history: int | None = None,
        after: int | None = None,
        timeout: float | None = 10.0,
    ) -> JoinResult:
        """Join and wait for the reply (``user_joined_room``, and in v2 ``history``).

        The events still arrive in the event stream as well. Raises CommandError if a v2
        server refuses (unknown room, already joined...); a v1 server says nothing then,
        so this raises TimeoutError.
        """
        if room in self._protocol.joins:
            raise RuntimeError(f"already joining {room!r}")
        ident = self.new_id() if self.version >= 2 else None
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        self._protocol.joins[room] = _JoinWaiter(future, ident)
        try:
            await self.join(room, history=history, after=after, id=ident)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            waiter = self._protocol.joins.get(room)
            if waiter is not None and waiter.future is future:
                del self._protocol.joins[room]

    async def leave(self, room: str, *, id: str | None = None) -> None:
        await self.send_command(LeaveRoom(room, id if self.version >= 2 else None))

    async def send(self, room: str, content: str, *, id: str | None = None) -> None:
        if id is None or self.version < 2:
            await self.send_command(SendMessage(room, content))
        else:
            await self.send_command(SendMessage(room, content, id))

    async def quit(self) -> None:
        """Ask the server to leave every room and end the session."""
        await self.send_command(Quit())

    async def ping(self, timeout: float | None = 10.0) -> float:
        """v2: ask the server for a pong; return the round-trip time in seconds."""
        if self.version < 2:
            raise RuntimeError("ping needs a v2 session")
        loop = asyncio.get_running_loop()
        ident = self.new_id()
        future: asyncio.Future[None] = loop.create_future()
        self._protocol.pings[ident] = future
        started = loop.time()
        try:
            await self.send_command(Ping(ident))
            async with asyncio.timeout(timeout):
                await future
        finally:
            self._protocol.pings.pop(ident, None)
        return loop.time() - started

    async def send_command(self, command: Command) -> None:
        self.write(encode(command))
        await self._protocol.drain()

    def write(self, line: bytes) -> None:
        """Write already-encoded bytes (one or more whole lines) without waiting."""
        if self.closed or self._transport.is_closing():
            raise ConnectionClosed(self.close_reason or "connection closing")
        self._transport.write(line)

    # -- events ------------------------------------------------------------------------
    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event; raises ConnectionClosed at the end, TimeoutError on timeout."""
        protocol = self._protocol
        async with asyncio.timeout(timeout):
            while not protocol.queue:
                if protocol.closed.done():
                    raise ConnectionClosed(protocol.close_reason or "connection closed")
                protocol.waiter = asyncio.get_running_loop().create_future()
                try:
                    await protocol.waiter
                finally:
                    protocol.waiter = None
        event = protocol.queue.popleft()
        protocol.resume_reading_if_low()
        return event

    def __aiter__(self) -> ChatClient:
        return self

    async def __anext__(self) -> Event:
        try:
            return await self.next_event()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent). Pending output is still sent."""
        self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, as a crashed client would."""
        self._transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._protocol.closed)

    async def __aenter__(self) -> ChatClient:
        return self

    async def aclose(self) -> None:
        """Close, and wait (up to 5 s) until the connection is gone."""
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.wait_closed()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def connect(
    host: str,
    port: int,
    *,
    timeout: float | None = 10.0,
    on_event: EventCallback | None = None,
    on_data: DataCallback | None = None,
    max_line_length: int = DEFAULT_CLIENT_MAX_LINE_LENGTH,
    ssl: SSLContext | bool | None = None,
    v2: bool = False,
    name: str | None = None,
    token: str | None = None,
    hello_timeout: float = 1.0,
) -> ChatClient:
    """Connect and wait for ``login_successful``; with ``v2``, then say ``hello``.

    With ``v2`` the client sends ``hello`` (with ``name`` and ``token`` if given) and
    waits up to ``hello_timeout`` seconds for ``welcome``. No answer in time means a
    server without v2: the session goes on in v1 (``client.version == 1``); a welcome
    that comes later still switches the client to v2. A refused hello raises
    HelloRefused (the server closes the connection).

    ``ssl``: None or False for plain TCP; True for TLS checked against the system's CAs;
    an SSLContext (e.g. :func:`tls_context` with a CA file) for anything else. The
    server's name is checked against ``host``.

    With ``on_event``, every later event is passed to it (in order, on the event loop)
    instead of being queued for ``async for``. With ``on_data``, every byte received
    after the login line (in v2: after the welcome) is passed to it undecoded, as it
    arrives (lines may be split across calls); ``async for`` then yields nothing. (With
    ``v2`` too, the caller must then answer the server's ``{"_et":"ping"}`` itself.)
    Raises OSError if the connection fails, TimeoutError, ConnectionClosed or
    ProtocolViolation if no proper login arrives.
    """
    if (name is not None or token is not None) and not v2:
        raise ValueError("name and token need v2=True")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        transport, protocol = await loop.create_connection(
            lambda: _ClientProtocol(max_line_length, on_event, on_data),
            host,
            port,
            ssl=tls_context() if ssl is True else (ssl or None),
        )
        try:
            if v2:
                protocol.hello = loop.create_future()
            await protocol.login
            if protocol.hello is not None:
                await _say_hello(protocol, transport, name, token, hello_timeout)
        except BaseException:
            transport.abort()
            raise
    return ChatClient(protocol, transport)


async def _say_hello(
    protocol: _ClientProtocol,
    transport: asyncio.Transport,
    name: str | None,
    token: str | None,
    hello_timeout: float,
) -> None:
    hello = protocol.hello
    assert hello is not None
    transport.write(encode(Hello(PROTOCOL_VERSION, name, token, "hello")))
    try:
        async with asyncio.timeout(hello_timeout):
            answer = await asyncio.shield(hello)
    except TimeoutError:
        hello.cancel()  # fall back to v1; a late welcome is still taken
        protocol.handshake_done = True
        return
    if isinstance(answer, Error):
        raise HelloRefused(answer)


# --- reconnection with catch-up ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection was lost; the next attempt is in ``retry_in`` seconds."""

    reason: str
    retry_in: float


@dataclass(frozen=True, slots=True)
class Reconnected:
    """Connected again, rooms re-joined (their replies and missed messages follow)."""

    version: int
    user_id: str


@dataclass(frozen=True, slots=True)
class MissedMessages:
    """Some messages of ``room`` after sequence number ``after`` are lost for good (the
    server's history no longer holds them, or it has none: v1). Those it still holds
    follow as ``user_message`` events."""

    room: str
    after: int | None


ClientEvent = Event | Disconnected | Reconnected | MissedMessages

#: Codes of a refused hello that trying again will not cure.
_FATAL_HELLO = frozenset({"name_taken", "name_invalid", "not_authorised"})


class ReconnectingClient:
    """A v2 session that survives connection loss.

    It connects with ``hello``; when the connection is lost it reconnects with
    exponential backoff and full jitter (or after a ``shutdown`` notice's
    ``reconnect_ms``), says ``hello`` with the same user id and the latest token,
    re-joins its rooms with ``after`` = the last sequence number it saw in each, and
    turns the ``history`` answers into the ``user_message`` events it missed, skipping
    any it already delivered. Every ``user_message`` of a room is thus delivered once, in
    sequence order, across reconnects; :class:`MissedMessages` says where that could
    not be kept. ``history`` events themselves are not delivered (their messages are).

    The event stream (``async for`` / :meth:`next_event`) carries the server's events
    and :class:`Disconnected`, :class:`Reconnected`, :class:`MissedMessages`. Commands
    sent while disconnected raise ConnectionClosed (nothing is queued or re-sent).

    The rules are meant to be mirrored by other clients (the TUI, the web client): keep
    ``last_seq[room]``; on ``history`` raise it to ``history.q`` after delivering each of
    ``ms`` whose ``q`` is above it; drop a live ``user_message`` whose ``q`` is not above
    it; re-join with ``after=last_seq[room]``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        name: str | None = None,
        token: str | None = None,
        hello_timeout: float = 1.0,
        connect_timeout: float = 10.0,
        backoff_initial: float = 0.25,
        backoff_max: float = 15.0,
        max_line_length: int = DEFAULT_CLIENT_MAX_LINE_LENGTH,
        random_fraction: Callable[[], float] = random.random,
        ssl: SSLContext | bool | None = None,
    ) -> None:
        self.host, self.port = host, port
        self._ssl = ssl  # as connect()'s
        self._name, self._token = name, token
        self._hello_timeout = hello_timeout
        self._connect_timeout = connect_timeout
        self._backoff_initial, self._backoff_max = backoff_initial, backoff_max
        self._max_line_length = max_line_length
        self._random = random_fraction
        self.client: ChatClient | None = None
        #: The rooms to be in (joined or being joined), in the order they were joined.
        self.rooms: dict[str, None] = {}
        #: The highest sequence number delivered per room.
        self.last_seq: dict[str, int] = {}
        self.reconnects = 0
        self._events: collections.deque[ClientEvent] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: BaseException | None = None
        self._shutdown_delay: float | None = None
        self._connected = asyncio.Event()
        self._join_ids: dict[str, str] = {}  # join_room id -> room, to drop refused rooms

    # -- state -------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.client is not None and not self.client.closed

    @property
    def user_id(self) -> str | None:
        return self.client.user_id if self.client is not None else self._name

    @property
    def token(self) -> str | None:
        return self._token

    @property
    def version(self) -> int:
        return self.client.version if self.client is not None else 0

    async def wait_connected(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    # -- life cycle --------------------------------------------------------------------
    async def start(self) -> None:
        """The first connection: errors (refused, timeout, HelloRefused) are raised."""
        await self._connect()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.client is not None:
            await self.client.aclose()
        self._wake()

    async def __aenter__(self) -> ReconnectingClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- commands ----------------------------------------------------------------------
    def _current(self) -> ChatClient:
        client = self.client
        if client is None or client.closed:
            raise ConnectionClosed("not connected")
        return client

    async def join(self, room: str, *, history: int | None = None) -> None:
        """Join ``room`` now and after every reconnect (``history``: the first time)."""
        client = self._current()
        self.rooms[room] = None
        ident = client.new_id() if client.version >= 2 else None
        if ident is not None:
            self._join_ids[ident] = room
        await client.join(room, history=history, id=ident)

    async def leave(self, room: str) -> None:
        self.rooms.pop(room, None)
        self.last_seq.pop(room, None)
        await self._current().leave(room)

    async def send(self, room: str, content: str) -> None:
        await self._current().send(room, content)

    # -- events ------------------------------------------------------------------------
    async def next_event(self, timeout: float | None = None) -> ClientEvent:
        """The next event; raises ConnectionClosed once closed (or the failure that
        ended reconnecting, e.g. HelloRefused), TimeoutError on timeout."""
        async with asyncio.timeout(timeout):
            while not self._events:
                if self._failure is not None:
                    raise self._failure
                if self._closing:
                    raise ConnectionClosed("closed")
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        return self._events.popleft()

    def __aiter__(self) -> ReconnectingClient:
        return self

    async def __anext__(self) -> ClientEvent:
        try:
            return await self.next_event()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    def _emit(self, event: ClientEvent) -> None:
        self._events.append(event)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _on_event(self, event: Event) -> None:
        if type(event) is UserMessage:
            if event.seq is not None:
                if event.seq <= self.last_seq.get(event.room, -1):
                    return  # already delivered (from a history)
                self.last_seq[event.room] = event.seq
        elif type(event) is History:
            self._catch_up(event)
            return
        elif type(event) is Shutdown:
            self._shutdown_delay = event.reconnect_ms / 1000
        elif type(event) is Error and event.command == "join_room" and event.id is not None:
            room = self._join_ids.pop(event.id, None)
            if room is not None and event.code == "unknown_room":
                self.rooms.pop(room, None)  # not to be joined again at reconnect
        elif type(event) is UserJoinedRoom:
            for ident in [i for i, r in self._join_ids.items() if r == event.room]:
                del self._join_ids[ident]
        self._emit(event)

    def _catch_up(self, history: History) -> None:
        room = history.room
        last = self.last_seq.get(room)
        if last is not None and history.seq < last:
            # The room's count restarted (the server lost its history): all is new.
            self._emit(MissedMessages(room, last))
            last = None
        elif history.gap:
            self._emit(MissedMessages(room, last))
        floor = -1 if last is None else last
        for message in history.messages:
            if message.seq > floor:
                floor = message.seq
                self._emit(
                    UserMessage(
                        room, message.user_id, message.content, message.seq, message.timestamp
                    )
                )
        self.last_seq[room] = max(floor, history.seq)

    # -- connecting --------------------------------------------------------------------
    async def _connect(self) -> None:
        client = await connect(
            self.host,
            self.port,
            timeout=self._connect_timeout,
            on_event=self._on_event,
            max_line_length=self._max_line_length,
            v2=True,
            name=self._name,
            token=self._token,
            hello_timeout=self._hello_timeout,
            ssl=self._ssl,
        )
        if client.version >= 2:
            # Keep the same user (a random id is a valid name) and the newest token.
            self._name, self._token = client.user_id, client.token
        self.client = client
        self._connected.set()

    async def _rejoin(self, client: ChatClient) -> None:
        self._join_ids.clear()
        for room in list(self.rooms):
            after = self.last_seq.get(room)
            if client.version < 2:
                self._emit(MissedMessages(room, after))
                await client.join(room)
            else:
                ident = client.new_id()
                self._join_ids[ident] = room
                await client.join(room, after=after, id=ident)

    async def _run(self) -> None:
        attempt = 0
        try:
            while not self._closing:
                client = self.client
                assert client is not None
                await client.wait_closed()
                self._connected.clear()
                if self._closing:
                    return
                reason = client.close_reason or "connection closed"
                while True:
                    delay = self._delay(attempt)
                    attempt += 1
                    self._emit(Disconnected(reason, delay))
                    await asyncio.sleep(delay)
                    try:
                        await self._connect()
                    except HelloRefused as exc:
                        if exc.error.code in _FATAL_HELLO:
                            self._failure = exc
                            self._wake()
                            return
                        reason = str(exc)
                    except (OSError, TimeoutError, ConnectionClosed, ProtocolViolation) as exc:
                        reason = str(exc) or type(exc).__name__
                    else:
                        break
                attempt = 0
                self.reconnects += 1
                client = self.client
                assert client is not None
                self._emit(Reconnected(client.version, client.user_id))
                with contextlib.suppress(ConnectionClosed):
                    await self._rejoin(client)
        except Exception as exc:  # a bug: end the stream with it rather than hang
            self._failure = exc
        finally:
            self._wake()

    def _delay(self, attempt: int) -> float:
        if self._shutdown_delay is not None:
            delay, self._shutdown_delay = self._shutdown_delay, None
            # spread the reconnects of everyone told the same: up to +50%
            return delay * (1 + self._random() / 2)
        ceiling = min(self._backoff_max, self._backoff_initial * 2.0**attempt)
        return ceiling * self._random()  # "full jitter"
