"""The asyncio side of the client: :func:`connect` and :class:`ChatClient`.

Every rule of the session is :class:`~roomchat.client.protocol.ClientProtocol`'s; this
module only moves bytes between it and the transport, and adds what needs an event
loop: futures for the login, the hello and the replies, the hello's timeout and the
heartbeat's timer, a bounded event queue (reading pauses while too many events wait),
waiting for the transport to drain, and TLS.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import itertools
from collections.abc import Callable
from pathlib import Path
from ssl import SSLContext, create_default_context
from types import TracebackType
from typing import Generic, TypeVar, cast

from roomchat import addresses
from roomchat.client.protocol import (
    DEFAULT_CLIENT_MAX_LINE_LENGTH,
    ClientProtocol,
    CommandError,
    ConnectionClosed,
    HelloRefused,
    JoinAnswered,
    JoinRefused,
    JoinResult,
    PageAnswered,
    PageRefused,
    State,
)
from roomchat.protocol import (
    DEFAULT_PORT,
    Command,
    Event,
    History,
    LoginSuccessful,
    Role,
    RoomDetail,
    RoomListing,
    Welcome,
)

__all__ = [
    "DEFAULT_PORT",
    "ChatClient",
    "DataCallback",
    "EventCallback",
    "EventStream",
    "connect",
    "parse_address",
    "tls_context",
]


_QUEUE_HIGH = 10_000  # queued events at which reading pauses
_QUEUE_LOW = 1_000  # ... and resumes

EventCallback = Callable[[Event], None]
DataCallback = Callable[[bytes], None]


def parse_address(address: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """An address to connect to: ``host:port``, ``[::1]:8080`` or a bare IPv6 literal; a
    bare host takes ``default_port`` (:func:`roomchat.addresses.parse_address`)."""
    return addresses.parse_address(address, default_port=default_port)


def tls_context(ca: str | Path | None = None) -> SSLContext:
    """A client TLS context that checks the server's certificate and name: against the
    system's CAs, or only against the CA certificate(s) in the PEM file ``ca``.

    Raises OSError (ssl.SSLError) if ``ca`` cannot be read or is not a certificate."""
    return create_default_context(cafile=None if ca is None else str(ca))


class _Connection(asyncio.Protocol):
    """The transport's protocol: hands the bytes to the ClientProtocol and carries out
    what it says."""

    def __init__(
        self,
        protocol: ClientProtocol,
        on_event: EventCallback | None,
        on_data: DataCallback | None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.protocol = protocol
        self._on_event = on_event
        self._on_data = on_data
        # Once the protocol hands raw bytes over, they go straight to on_data: that is
        # the load tool's hot path, a million deliveries a second.
        self._handed_over: DataCallback | None = None
        self.transport: asyncio.Transport | None = None
        self.login: asyncio.Future[LoginSuccessful] = self._loop.create_future()
        # Done when the hello is answered (welcome or refusal); None without v2.
        self.hello: asyncio.Future[None] | None = None
        if protocol.hello is not None:
            self.hello = self._loop.create_future()
        self.queue: collections.deque[Event] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.reading_paused = False
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.close_reason: str | None = None
        self.joins: dict[str, asyncio.Future[JoinResult]] = {}
        self.pongs: dict[str, asyncio.Future[None]] = {}
        self.pages: dict[str, asyncio.Future[History]] = {}
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._writing_paused = False
        self._heard = False  # bytes came since the last heartbeat tick
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._heard = True
        handed_over = self._handed_over
        if handed_over is not None:
            handed_over(data)
            return
        self.protocol.receive_data(data)
        self.process()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.close_reason is None:
            self.close_reason = str(exc) if exc else "connection closed"
        reason = self.close_reason
        if self.protocol.state is not State.CLOSED:
            self.protocol.receive_eof()
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.hello is not None and not self.hello.done():
            self.hello.set_exception(ConnectionClosed(f"closed after hello: {reason}"))
            self.hello.exception()  # retrieved: connect() may have stopped waiting
        futures: list[
            asyncio.Future[None] | asyncio.Future[JoinResult] | asyncio.Future[History]
        ] = [
            *self.pongs.values(),
            *self.joins.values(),
            *self.pages.values(),
        ]
        self.pongs.clear()
        self.joins.clear()
        self.pages.clear()
        for future in futures:
            if not future.done():
                future.set_exception(ConnectionClosed(reason))
        if not self.login.done():
            self.login.set_exception(ConnectionClosed(f"closed before login: {reason}"))
        if not self.closed.done():
            self.closed.set_result(None)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ConnectionClosed(reason))
        self._drain_waiters.clear()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- carrying out what the protocol says ------------------------------------------
    def process(self) -> None:
        """After every input to the protocol: write, settle futures, deliver."""
        protocol = self.protocol
        self.flush()
        if not self.login.done():
            if protocol.login is not None:
                self.login.set_result(protocol.login)
            elif protocol.failure is not None:
                self.login.set_exception(protocol.failure)
        hello = self.hello
        if hello is not None and not hello.done() and protocol.handshake_done:
            hello.set_result(None)
        for reply in protocol.replies_received():
            if isinstance(reply, JoinAnswered | JoinRefused):
                join = self.joins.pop(reply.room, None)
                if join is not None and not join.done():
                    if isinstance(reply, JoinAnswered):
                        join.set_result(reply.result)
                    else:
                        join.set_exception(CommandError(reply.error))
            elif isinstance(reply, PageAnswered | PageRefused):
                page = self.pages.pop(reply.id, None)
                if page is not None and not page.done():
                    if isinstance(reply, PageAnswered):
                        page.set_result(reply.history)
                    else:
                        page.set_exception(CommandError(reply.error))
            else:
                pong = self.pongs.pop(reply.id, None)
                if pong is not None and not pong.done():
                    pong.set_result(None)
        events = protocol.events_received()
        if events:
            self._deliver(events)
        if self._on_data is not None:
            raw = protocol.raw_received()
            if raw:
                self._on_data(raw)
            if protocol.raw_open:
                self._handed_over = self._on_data
        if self._watchdog is None and protocol.heartbeat_interval is not None:
            self._heard = False
            interval = protocol.heartbeat_interval
            self._watchdog = self._loop.call_later(interval, self._tick, interval)

    def flush(self) -> None:
        out = self.protocol.data_to_send()
        transport = self.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out)

    def _deliver(self, events: list[Event]) -> None:
        on_event = self._on_event
        if on_event is not None:
            for event in events:
                on_event(event)
            return
        self.queue.extend(events)
        if len(self.queue) >= _QUEUE_HIGH and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _tick(self, interval: float) -> None:
        transport = self.transport
        if self.closed.done() or transport is None or transport.is_closing():
            return
        give_up = self.protocol.heartbeat_tick(
            data_seen=self._heard, reading_paused=self.reading_paused
        )
        self._heard = False
        if give_up is not None:
            self.close_reason = give_up
            transport.abort()
            return
        self.flush()
        self._watchdog = self._loop.call_later(interval, self._tick, interval)

    def hello_timed_out(self) -> None:
        if self.hello is not None and not self.hello.done():
            self.hello.cancel()
        self.protocol.hello_timed_out()
        self.process()

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


E = TypeVar("E")


class EventStream(abc.ABC, Generic[E]):
    """``async for event in stream``: :meth:`next_event` until the stream ends
    (ConnectionClosed ends the iteration)."""

    @abc.abstractmethod
    async def next_event(self, timeout: float | None = None) -> E:
        """The next event; raises ConnectionClosed at the end, TimeoutError on timeout."""

    def __aiter__(self) -> EventStream[E]:
        return self

    async def __anext__(self) -> E:
        try:
            return await self.next_event()
        except ConnectionClosed:
            raise StopAsyncIteration from None


class ChatClient(EventStream[Event]):
    """One session with a protocol v1 or v2 server. Create it with :func:`connect`."""

    def __init__(self, connection: _Connection, transport: asyncio.Transport) -> None:
        self._connection = connection
        self._protocol = connection.protocol
        self._transport = transport
        self.login: LoginSuccessful = connection.login.result()
        self._ids = itertools.count(1)

    # -- what the server told us at login (and in v2 at welcome) ------------------------
    @property
    def protocol(self) -> ClientProtocol:
        """The session's rules and state (sans-I/O); read it, do not feed it."""
        return self._protocol

    @property
    def version(self) -> int:
        """2 once the server sent ``welcome``, else 1."""
        return self._protocol.version

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

    @property
    def listing(self) -> dict[str, RoomListing]:
        """v2: the rooms this session can see now, private ones and direct messages
        included (kept up to date by ``room_added``/``room_removed``)."""
        return self._protocol.listing

    # -- rooms, moderation, direct messages (v2: docs/moderation.md) -------------------
    # Each sends its command; the outcome comes as events (room_added, moderation,
    # audit, user_joined_room of a direct message) or as an error with the given id.
    async def create_room(
        self, room: str, description: str = "", *, private: bool = False, id: str | None = None
    ) -> None:
        self._protocol.create_room(room, description, private=private, id=id)
        await self._send()

    async def archive_room(self, room: str, *, why: str | None = None) -> None:
        self._protocol.archive_room(room, why=why)
        await self._send()

    async def invite(self, room: str, user: str) -> None:
        self._protocol.invite(room, user)
        await self._send()

    async def kick(self, room: str, user: str, *, why: str | None = None) -> None:
        self._protocol.kick(room, user, why=why)
        await self._send()

    async def ban(
        self,
        user: str,
        room: str | None = None,
        *,
        seconds: int | None = None,
        why: str | None = None,
    ) -> None:
        self._protocol.ban(user, room, seconds=seconds, why=why)
        await self._send()

    async def unban(self, user: str, room: str | None = None) -> None:
        self._protocol.unban(user, room)
        await self._send()

    async def mute(
        self,
        user: str,
        room: str | None = None,
        *,
        seconds: int | None = None,
        why: str | None = None,
    ) -> None:
        self._protocol.mute(user, room, seconds=seconds, why=why)
        await self._send()

    async def unmute(self, user: str, room: str | None = None) -> None:
        self._protocol.unmute(user, room)
        await self._send()

    async def set_role(self, room: str, user: str, role: Role) -> None:
        self._protocol.set_role(room, user, role)
        await self._send()

    async def slow_mode(self, room: str, seconds: int) -> None:
        self._protocol.slow_mode(room, seconds)
        await self._send()

    async def audit_log(self, room: str, *, limit: int | None = None) -> None:
        self._protocol.audit_log(room, limit=limit)
        await self._send()

    async def open_dm(self, user: str) -> None:
        self._protocol.open_dm(user)
        await self._send()

    async def close_dm(self, user: str) -> None:
        self._protocol.close_dm(user)
        await self._send()

    # -- the lasting history (v2: docs/protocol.md, "History that lasts") ---------------
    async def history(
        self,
        room: str,
        before: int | None = None,
        after: int | None = None,
        limit: int = 50,
        epoch: str | None = None,
        *,
        timeout: float | None = 10.0,
    ) -> History:
        """A page of the room's stored history, and wait for it: the ``limit`` (1 to
        200) messages below ``before``, or above ``after`` (neither: the latest),
        oldest first; ``ms`` empty when there is nothing more. With ``epoch`` not the
        room's, the server answers the latest page with ``gap`` true.

        The answer is returned, not delivered as an event. Raises CommandError if the
        server refuses (``not_member``: join the room first; ``unavailable``), also
        delivered as an ``error`` event; TimeoutError; ConnectionClosed."""
        if self.version < 2:
            raise RuntimeError("history needs a v2 session")
        ident = f"p{self.new_id()}"
        future: asyncio.Future[History] = asyncio.get_running_loop().create_future()
        pages = self._connection.pages
        pages[ident] = future
        try:
            self._protocol.history_page(
                room, before=before, after=after, limit=limit, epoch=epoch, id=ident
            )
            self._protocol.expect_page(ident)
            await self._send()
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if pages.pop(ident, None) is not None:
                self._protocol.cancel_page(ident)

    # Each sends its command; the outcome comes as events (message_edited,
    # message_deleted, typing) or as an error with the given id (not_found,
    # not_authorised, not_member).
    async def edit_message(self, room: str, q: int, content: str, *, id: str | None = None) -> None:
        """Replace message ``q``'s content: your own, or any as a moderator."""
        self._protocol.edit_message(room, q, content, id=id)
        await self._send()

    async def delete_message(self, room: str, q: int, *, id: str | None = None) -> None:
        """Delete message ``q`` (a tombstone stays): your own, or any as a moderator."""
        self._protocol.delete_message(room, q, id=id)
        await self._send()

    async def mark_read(self, room: str, q: int, *, id: str | None = None) -> None:
        """Your read marker in the room moves to ``q`` (never back)."""
        self._protocol.mark_read(room, q, id=id)
        await self._send()

    async def typing(self, room: str, *, id: str | None = None) -> None:
        """Tell the room you are typing (the server passes on one per 3 s)."""
        self._protocol.typing(room, id=id)
        await self._send()

    # -- state -----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._connection.closed.done()

    @property
    def close_reason(self) -> str | None:
        return self._connection.close_reason

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
        epoch: str | None = None,
    ) -> None:
        """Send ``join_room``. In v2, ``history`` asks for the last N messages, ``after``
        for every message after that sequence number (catch-up), with ``epoch`` the
        epoch it counts in (a ``history``'s ``e``); v1 drops them."""
        self._protocol.join(room, history=history, after=after, id=id, epoch=epoch)
        await self._send()

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
        joins = self._connection.joins
        if room in joins:
            raise RuntimeError(f"already joining {room!r}")
        ident = self.new_id() if self.version >= 2 else None
        future: asyncio.Future[JoinResult] = asyncio.get_running_loop().create_future()
        self._protocol.expect_join(room, ident)
        joins[room] = future
        try:
            await self.join(room, history=history, after=after, id=ident)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if joins.get(room) is future:
                del joins[room]
                self._protocol.cancel_join(room)

    async def leave(self, room: str, *, id: str | None = None) -> None:
        self._protocol.leave(room, id=id)
        await self._send()

    async def send(self, room: str, content: str, *, id: str | None = None) -> None:
        self._protocol.send_message(room, content, id=id)
        await self._send()

    async def quit(self) -> None:
        """Ask the server to leave every room and end the session."""
        self._protocol.quit()
        await self._send()

    async def ping(self, timeout: float | None = 10.0) -> float:
        """v2: ask the server for a pong; return the round-trip time in seconds."""
        if self.version < 2:
            raise RuntimeError("ping needs a v2 session")
        loop = asyncio.get_running_loop()
        ident = self.new_id()
        future: asyncio.Future[None] = loop.create_future()
        pongs = self._connection.pongs
        pongs[ident] = future
        started = loop.time()
        try:
            self._protocol.ping(ident)
            await self._send()
            async with asyncio.timeout(timeout):
                await future
        finally:
            if pongs.pop(ident, None) is not None:
                self._protocol.cancel_pong(ident)
        return loop.time() - started

    async def send_command(self, command: Command) -> None:
        self._protocol.send(command)
        await self._send()

    async def _send(self) -> None:
        self.write(self._protocol.data_to_send())
        await self._connection.drain()

    def write(self, line: bytes) -> None:
        """Write already-encoded bytes (one or more whole lines) without waiting."""
        if self.closed or self._transport.is_closing():
            raise ConnectionClosed(self.close_reason or "connection closing")
        self._transport.write(line)

    # -- events ------------------------------------------------------------------------
    async def next_event(self, timeout: float | None = None) -> Event:
        """The next event; raises ConnectionClosed at the end, TimeoutError on timeout."""
        connection = self._connection
        async with asyncio.timeout(timeout):
            while not connection.queue:
                if connection.closed.done():
                    raise ConnectionClosed(connection.close_reason or "connection closed")
                connection.waiter = asyncio.get_running_loop().create_future()
                try:
                    await connection.waiter
                finally:
                    connection.waiter = None
        event = connection.queue.popleft()
        connection.resume_reading_if_low()
        return event

    # -- closing -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection (idempotent). Pending output is still sent."""
        self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once, as a crashed client would."""
        self._transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._connection.closed)

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
    protocol = ClientProtocol(
        v2=v2, name=name, token=token, raw=on_data is not None, max_line_length=max_line_length
    )
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        transport, connection = await loop.create_connection(
            lambda: _Connection(protocol, on_event, on_data),
            host,
            port,
            ssl=tls_context() if ssl is True else (ssl or None),
        )
        try:
            await connection.login
            if connection.hello is not None:
                await _wait_for_welcome(connection, hello_timeout)
        except BaseException:
            transport.abort()
            raise
    return ChatClient(connection, transport)


async def _wait_for_welcome(connection: _Connection, hello_timeout: float) -> None:
    hello = connection.hello
    assert hello is not None
    try:
        async with asyncio.timeout(hello_timeout):
            await asyncio.shield(hello)
    except TimeoutError:
        connection.hello_timed_out()  # fall back to v1; a late welcome is still taken
        return
    if isinstance(connection.protocol.failure, HelloRefused):
        raise connection.protocol.failure
