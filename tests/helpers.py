"""Small helpers for network tests: wait for the event you expect, with a timeout."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable

from roomchat.client import ChatClient, connect
from roomchat.protocol import Event, RoomParticipation, UserJoinedRoom, UserMessage
from roomchat.server import ChatServer

TIMEOUT = 10.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded by TIMEOUT) until ``condition()`` holds, checking once per loop turn."""
    try:
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


async def client_of(server: ChatServer) -> ChatClient:
    return await connect("127.0.0.1", server.port, timeout=TIMEOUT)


async def next_event(client: ChatClient) -> Event:
    return await client.next_event(timeout=TIMEOUT)


async def joined(client: ChatClient, room: str) -> UserJoinedRoom:
    """Join a room and consume the reply and one's own "joined"."""
    await client.join(room)
    reply = await next_event(client)
    assert isinstance(reply, UserJoinedRoom), reply
    own = await next_event(client)
    assert own == RoomParticipation(room, client.user_id, "joined"), own
    return reply


async def messages(client: ChatClient, count: int) -> list[UserMessage]:
    out: list[UserMessage] = []
    while len(out) < count:
        event = await next_event(client)
        assert isinstance(event, UserMessage), event
        out.append(event)
    return out


async def raw_socket(server: ChatServer, rcvbuf: int | None = None) -> socket.socket:
    """A plain non-blocking socket connected to the server (for byte-level tests)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    return sock


async def raw_login(server: ChatServer) -> tuple[socket.socket, bytearray, str]:
    """A raw socket past its login: the socket, its read buffer and its user id."""
    sock = await raw_socket(server)
    buffer = bytearray()
    login = json.loads(await read_line(sock, buffer))
    assert login["_et"] == "login_successful", login
    return sock, buffer, login["u"]


async def read_line(sock: socket.socket, buffer: bytearray) -> bytes:
    """One line (without its terminator) from a raw socket; b"" at EOF."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        while b"\n" not in buffer:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                return b""
            buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.rstrip(b"\r")


async def wait_eof(sock: socket.socket) -> None:
    """Read and discard until the server closes the connection."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TIMEOUT):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
