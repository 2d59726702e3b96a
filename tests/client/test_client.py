"""The client library against a real server, and against servers that misbehave."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from roomchat.client import ConnectionClosed, ProtocolViolation, connect, parse_address
from roomchat.client.connection import _QUEUE_HIGH, _QUEUE_LOW
from roomchat.protocol import Event, RoomParticipation, UserJoinedRoom, UserMessage
from roomchat.server import ChatServer
from tests.helpers import TIMEOUT, client_of, joined, until


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:8080", ("localhost", 8080)),
        ("127.0.0.1:9", ("127.0.0.1", 9)),
        ("  example.org:65535 ", ("example.org", 65535)),
        ("example.org", ("example.org", 8080)),
        ("[::1]:7000", ("::1", 7000)),
        ("[::1]", ("::1", 8080)),
        ("::1", ("::1", 8080)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text", ["", "   ", ":8080", "host:", "host:http", "host:0", "host:65536", "[::1", "[::1]x"]
)
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


async def test_async_for_ends_when_the_server_closes(server: ChatServer) -> None:
    client = await client_of(server)
    await client.join("general")
    seen: list[Event] = []

    async def collect() -> None:
        async for event in client:
            seen.append(event)
            if isinstance(event, RoomParticipation):
                await client.quit()

    await asyncio.wait_for(collect(), TIMEOUT)
    assert seen == [
        UserJoinedRoom("general", (client.user_id,)),
        RoomParticipation("general", client.user_id, "joined"),
    ]
    assert client.closed
    with pytest.raises(ConnectionClosed):
        await client.next_event(TIMEOUT)
    with pytest.raises(ConnectionClosed):
        await client.send("general", "too late")


async def test_on_event_callback_gets_every_event_in_order(server: ChatServer) -> None:
    got: list[Event] = []
    done = asyncio.Event()

    def on_event(event: Event) -> None:
        got.append(event)
        if isinstance(event, UserMessage) and event.content == "last":
            done.set()

    client = await connect("127.0.0.1", server.port, on_event=on_event, timeout=TIMEOUT)
    await client.join("general")
    for text in ("first", "second", "last"):
        await client.send("general", text)
    await asyncio.wait_for(done.wait(), TIMEOUT)
    assert [e.content for e in got if isinstance(e, UserMessage)] == ["first", "second", "last"]
    client.close()


async def test_next_event_times_out(server: ChatServer) -> None:
    client = await client_of(server)
    with pytest.raises(TimeoutError):
        await client.next_event(timeout=0.05)
    client.close()


async def test_unread_events_pause_reading_and_lose_nothing(server: ChatServer) -> None:
    # 25,000 events queue up unread: the client stops reading from the socket past
    # its high-water mark, then resumes as they are consumed; none is lost.
    client = await client_of(server)
    protocol, transport = client._connection, client._transport
    await joined(client, "general")
    count = 25_000
    client.write(
        b"".join(b'{"_ct":"send_message","r":"general","c":"%d"}\n' % n for n in range(count))
    )
    await until(lambda: protocol.reading_paused, "the client paused reading")
    assert not transport.is_reading()  # the socket itself is no longer read
    assert len(protocol.queue) >= _QUEUE_HIGH
    resumed_with = None  # events still queued when reading resumed
    for n in range(count):
        event = await client.next_event(TIMEOUT)
        assert event == UserMessage("general", client.user_id, str(n))
        if resumed_with is None and not protocol.reading_paused:
            assert transport.is_reading()
            resumed_with = len(protocol.queue)
    assert resumed_with is not None and resumed_with <= _QUEUE_LOW  # resumed at low water
    assert not protocol.reading_paused and transport.is_reading()  # ... and reads on
    assert not protocol.queue
    client.close()


async def test_refused_connection_raises_oserror() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(OSError):
            await connect("127.0.0.1", port, timeout=TIMEOUT)


async def _fake_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


async def test_server_that_does_not_log_in_first() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"_et":"user_message","r":"x","u":"y","c":"z"}\r\n')
        await writer.drain()
        await reader.read()
        writer.close()

    async for port in _fake_server(handler):
        with pytest.raises(ProtocolViolation):
            await connect("127.0.0.1", port, timeout=TIMEOUT)


async def test_server_that_hangs_up_before_login() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async for port in _fake_server(handler):
        with pytest.raises(ConnectionClosed):
            await connect("127.0.0.1", port, timeout=TIMEOUT)


async def test_server_that_never_logs_in_times_out() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    async for port in _fake_server(handler):
        with pytest.raises(TimeoutError):
            await connect("127.0.0.1", port, timeout=0.2)


async def test_garbage_from_the_server_is_counted_and_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"_et":"login_successful","s":"s","u":"u","rs":[]}\r\n')
        writer.write(b"not json\r\n")
        writer.write(b'{"_et":"user_message","r":"x","u":"y","c":"z"}\r\n')
        await writer.drain()
        await reader.read()
        writer.close()

    async for port in _fake_server(handler):
        client = await connect("127.0.0.1", port, timeout=TIMEOUT)
        assert await client.next_event(TIMEOUT) == UserMessage("x", "y", "z")
        assert client.protocol_errors == 1
        client.close()


async def test_on_data_hands_over_raw_bytes_after_login() -> None:
    # Login and the first event in one packet: the event must reach on_data intact.
    first = b'{"_et":"user_message","r":"x","u":"y","c":"first"}\r\n'

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"not json\r\n" + b'{"_et":"login_successful","s":"s","u":"u","rs":[]}\r\n')
        writer.write(first + b'{"_et":"user_message","r":"x","u":"y",')
        await writer.drain()
        writer.write(b'"c":"second"}\r\n')
        await writer.drain()
        await reader.read()
        writer.close()

    received = bytearray()
    complete = asyncio.Event()

    def on_data(data: bytes) -> None:
        received.extend(data)
        if received.count(b"\n") == 2:
            complete.set()

    async for port in _fake_server(handler):
        client = await connect("127.0.0.1", port, timeout=TIMEOUT, on_data=on_data)
        assert client.user_id == "u"
        assert client.protocol_errors == 1  # the line before login
        await asyncio.wait_for(complete.wait(), TIMEOUT)
        assert bytes(received) == first + b'{"_et":"user_message","r":"x","u":"y","c":"second"}\r\n'
        client.close()
