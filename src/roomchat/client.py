"""asyncio client library for protocol v1 servers (roomchat or rust-chat-server).

    async with await connect("127.0.0.1", 8080) as client:
        print(client.user_id, [room.name for room in client.rooms])
        await client.join("general")
        await client.send("general", "hello")
        async for event in client:
            print(event)

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
from collections.abc import Callable
from pathlib import Path
from ssl import SSLContext, create_default_context
from types import TracebackType
from typing import cast

from roomchat.protocol import (
    BadLine,
    Command,
    Event,
    EventDecoder,
    JoinRoom,
    LeaveRoom,
    LineTooLong,
    LoginSuccessful,
    Quit,
    RoomDetail,
    SendMessage,
    encode,
)

__all__ = [
    "DEFAULT_CLIENT_MAX_LINE_LENGTH",
    "ChatClient",
    "ConnectionClosed",
    "DataCallback",
    "EventCallback",
    "ProtocolViolation",
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

    # -- asyncio.Protocol -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        on_data = self._on_data
        if on_data is None:
            self._decode(data)
            return
        if self.login.done():
            on_data(data)
            return
        # Raw mode before login: decode line by line until the login line, then hand
        # over whatever follows it undecoded.
        while data and not self.login.done():
            newline = data.find(b"\n")
            if newline < 0:
                self._decode(data)
                return
            self._decode(data[: newline + 1])
            data = data[newline + 1 :]
        if data and self.login.done() and self.login.exception() is None:
            on_data(data)

    def _decode(self, data: bytes) -> None:
        for item in self._decoder.feed(data):
            if isinstance(item, BadLine | LineTooLong):
                self.protocol_errors += 1
            elif not self.login.done():
                if isinstance(item, LoginSuccessful):
                    self.login.set_result(item)
                else:
                    self.login.set_exception(
                        ProtocolViolation(f"expected login_successful first, got {item!r}")
                    )
            elif self._on_event is not None:
                self._on_event(item)
            else:
                self.queue.append(item)
                if len(self.queue) >= _QUEUE_HIGH and self.transport is not None:
                    self.transport.pause_reading()
                    self.reading_paused = True
        if self.queue and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_reason = str(exc) if exc else "connection closed"
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
    """One session with a protocol v1 server. Create it with :func:`connect`."""

    def __init__(self, protocol: _ClientProtocol, transport: asyncio.Transport) -> None:
        self._protocol = protocol
        self._transport = transport
        self.login: LoginSuccessful = protocol.login.result()

    # -- what the server told us at login ------------------------------------------
    @property
    def user_id(self) -> str:
        return self.login.user_id

    @property
    def session_id(self) -> str:
        return self.login.session_id

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

    # -- commands ----------------------------------------------------------------------
    async def join(self, room: str) -> None:
        await self.send_command(JoinRoom(room))

    async def leave(self, room: str) -> None:
        await self.send_command(LeaveRoom(room))

    async def send(self, room: str, content: str) -> None:
        await self.send_command(SendMessage(room, content))

    async def quit(self) -> None:
        """Ask the server to leave every room and end the session."""
        await self.send_command(Quit())

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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await self.wait_closed()


async def connect(
    host: str,
    port: int,
    *,
    timeout: float | None = 10.0,
    on_event: EventCallback | None = None,
    on_data: DataCallback | None = None,
    max_line_length: int = DEFAULT_CLIENT_MAX_LINE_LENGTH,
    ssl: SSLContext | bool | None = None,
) -> ChatClient:
    """Connect and wait for ``login_successful``.

    ``ssl``: None or False for plain TCP; True for TLS checked against the system's CAs;
    an SSLContext (e.g. :func:`tls_context` with a CA file) for anything else. The
    server's name is checked against ``host``.

    With ``on_event``, every later event is passed to it (in order, on the event loop)
    instead of being queued for ``async for``. With ``on_data``, every byte received
    after the login line is passed to it undecoded, as it arrives (lines may be split
    across calls); ``async for`` then yields nothing.
    Raises OSError if the connection fails, TimeoutError, ConnectionClosed or
    ProtocolViolation if no proper login arrives.
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout):
        transport, protocol = await loop.create_connection(
            lambda: _ClientProtocol(max_line_length, on_event, on_data),
            host,
            port,
            ssl=tls_context() if ssl is True else (ssl or None),
        )
        try:
            await protocol.login
        except BaseException:
            transport.abort()
            raise
    return ChatClient(protocol, transport)
