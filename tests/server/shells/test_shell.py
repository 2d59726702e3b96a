"""The connection shell: TCP and WebSocket sessions get the same admission, limits,
keepalive, slow-consumer rule, TLS, counters and log lines (server/shells/shell.py).

Every test runs once per transport, with a raw client of that transport (a socket; for
WebSocket it does the upgrade and reads and writes frames itself), so that nothing but
the framing differs between the two runs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import socket
import ssl
import warnings
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomchat.client import tls_context
from roomchat.server import ChatServer, ServerConfig
from roomchat.server.shells import shell as shell_module
from roomchat.server.shells.shell import ShellConnection
from tests.conftest import Pki
from tests.helpers import TIMEOUT, until

LOG = "roomchat.server"
TRANSPORTS = ["tcp", "ws"]


class Raw:
    """A client of one transport that reads only when told to."""

    def __init__(self, transport: str, reader: asyncio.StreamReader, writer: Any) -> None:
        self.transport = transport
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(
        cls,
        server: ChatServer,
        transport: str,
        *,
        rcvbuf: int | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> Raw:
        """Connected, and for WebSocket upgraded; not logged in (see login)."""
        port = server.port if transport == "tcp" else _web_port(server)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=tls, server_hostname="127.0.0.1" if tls else None, limit=1 << 22
        )
        raw = cls(transport, reader, writer)
        if transport == "ws":
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            async with asyncio.timeout(TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101 "), head
        return raw

    async def login(self) -> str:
        event = await self.event()
        assert event["_et"] == "login_successful", event
        user = event["u"]
        assert isinstance(user, str)
        return user

    def send(self, line: bytes) -> None:
        self.writer.write(self.framed(line))

    def framed(self, line: bytes) -> bytes:
        """One command as this transport sends it (a line; a masked text frame)."""
        if self.transport == "tcp":
            return line + b"\r\n"
        mask = os.urandom(4)
        size = len(line)
        head = bytes((0x81, 0x80 | size)) if size < 126 else bytes((0x81, 0xFE)) + size.to_bytes(2)
        # XOR with the mask repeated, as one big integer (a flood is framed quickly).
        key = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(line) ^ int.from_bytes(key)).to_bytes(size)
        return head + mask + masked

    async def event(self) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT):
            if self.transport == "tcp":
                line = await self.reader.readuntil(b"\r\n")
            else:
                first, length = await self.reader.readexactly(2)
                assert first == 0x81, first
                if length == 126:
                    length = int.from_bytes(await self.reader.readexactly(2))
                elif length == 127:
                    length = int.from_bytes(await self.reader.readexactly(8))
                line = await self.reader.readexactly(length)
        event = json.loads(line)
        assert isinstance(event, dict)
        return event

    async def closed_at_once(self) -> bool:
        """Whether the server closes the connection without sending anything."""
        async with asyncio.timeout(TIMEOUT):
            try:
                return await self.reader.read(1) == b""
            except ConnectionError:
                return True

    def close(self) -> None:
        self.writer.close()


def _web_port(server: ChatServer) -> int:
    assert server.web is not None
    return server.web.port


async def refused_at_once(server: ChatServer, transport: str) -> bool:
    """A new connection of ``transport`` is closed before its login (or upgrade)."""
    port = server.port if transport == "tcp" else _web_port(server)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(TIMEOUT):
            try:
                return await reader.read(1) == b""
            except ConnectionError:
                return True
    finally:
        writer.close()


async def start(**settings: Any) -> ChatServer:
    return await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, ws="127.0.0.1:0", **settings)
    )


@pytest.fixture
async def limited() -> AsyncIterator[ChatServer]:
    server = await start(max_connections=2, metrics=("127.0.0.1", 0))
    try:
        yield server
    finally:
        await server.close()


def connection_of(server: ChatServer, user: str) -> ShellConnection:
    for connection in server.connections:
        if connection.session is not None and connection.session.user_id == user:
            return connection
    raise AssertionError(f"no connection of {user}")


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_connection_limit_counts_both_transports(
    limited: ChatServer, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG)
    other = "ws" if transport == "tcp" else "tcp"
    first, second = await Raw.open(limited, transport), await Raw.open(limited, other)
    await first.login()
    await second.login()
    assert await refused_at_once(limited, transport)
    assert await refused_at_once(limited, other)
    assert limited.shell.refused == {"max_connections": 2}
    lines = [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]
    assert len(lines) == 1 and "--max-connections 2 reached" in lines[0], lines
    assert len(limited.connections) == 2
    assert sorted(type(c).__name__ for c in limited.connections) == [
        "TcpConnection",
        "WebConnection",
    ]
    first.close()
    second.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_per_ip_limit(transport: str) -> None:
    server = await start(max_connections_per_ip=1)
    try:
        client = await Raw.open(server, transport)
        await client.login()
        assert await refused_at_once(server, transport)
        assert server.shell.refused == {"max_connections_per_ip": 1}
        assert server.shell.per_ip == {"127.0.0.1": 1}
        client.close()
        await until(lambda: not server.connections, "the connection is released")
        assert server.shell.per_ip == {}
    finally:
        await server.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connect_and_disconnect_lines_and_counters(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG)
    server = await start()
    try:
        client = await Raw.open(server, transport)
        user = await client.login()
        connection = connection_of(server, user)
        sock = connection.transport.get_extra_info("socket") if connection.transport else None
        assert sock is not None and sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        client.send(b'{"_ct":"quit"}')
        await until(lambda: not server.connections, "the session is gone")
        assert server.stats.connections_accepted == 1
    finally:
        await server.close()
    prefix = "ws " if transport == "ws" else ""
    pattern = rf"<session \S+ user {user} from {prefix}127\.0\.0\.1:\d+>"
    records = [r for r in caplog.records if re.match(pattern, r.getMessage())]
    assert [re.sub(pattern, "S", r.getMessage()) for r in records] == [
        "S connected",
        "S disconnected: quit",
    ]
    for record in records:  # the same fields for --log-format json, both transports
        assert record.user == user and record.peer.startswith(prefix + "127.0.0.1:")
    assert records[1].reason == "quit"


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_slow_consumer_is_counted_cut_off_and_its_memory_given_back(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG)
    server = await start(max_pending_output=64 * 1024, flood_rate=0)
    try:
        sender = await Raw.open(server, "tcp")
        await sender.login()
        sender.send(b'{"_ct":"join_room","r":"general"}')
        assert (await sender.event())["_et"] == "user_joined_room"
        await sender.event()  # its own joined
        slow = await Raw.open(server, transport, rcvbuf=4096)
        slow_user = await slow.login()
        slow.send(b'{"_ct":"join_room","r":"general"}')
        assert (await sender.event())["u"] == slow_user  # slow joined: it reads no more
        payload = "z" * 1000
        sent = 0
        while not any(r.getMessage().endswith("disconnecting") for r in caplog.records):
            assert sent < 100_000, "the slow consumer was never cut off"
            for _ in range(50):
                line = {"_ct": "send_message", "r": "general", "c": f"{sent}:{payload}"}
                sender.send(json.dumps(line).encode())
                sent += 1
            await sender.writer.drain()
            while (event := await sender.event())["_et"] == "user_message":
                if event["c"].startswith(f"{sent - 1}:"):
                    break
            else:
                assert event == {
                    "_et": "room_participation",
                    "r": "general",
                    "u": slow_user,
                    "s": "left",
                }
        assert server.stats.slow_consumers == 1
        line = next(r for r in caplog.records if r.getMessage().endswith("disconnecting"))
        assert "slow consumer, more than 65536 bytes pending" in line.getMessage()
        assert line.reason == "slow consumer" and line.user == slow_user
        await until(lambda: server.shell.trimmer.trims > 0, "freed memory is given back")
        slow.close()
        sender.close()
    finally:
        await server.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_tls_on_both_ports_with_the_same_rules(
    transport: str, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOG)
    server = await start(tls_cert=pki.cert, tls_key=pki.key, tls_handshake_timeout=0.5)
    try:
        assert server.web is not None and server.web.url.startswith("https://")
        client = await Raw.open(server, transport, tls=tls_context(pki.ca))
        await client.login()
        client.close()
        # TLS 1.1 at most: refused by the TLS 1.2 minimum, logged with the peer.
        old = tls_context(pki.ca)
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await Raw.open(server, transport, tls=old)
        # Plain text on the TLS port: dropped, logged with the peer.
        plain = await Raw.open(server, transport) if transport == "tcp" else None
        if plain is None:
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError, AssertionError)):
                await Raw.open(server, transport)
        else:
            plain.send(b'{"_ct":"quit"}')
            assert await plain.closed_at_once()
            plain.close()
        await until(
            lambda: sum("TLS handshake failed" in r.getMessage() for r in caplog.records) >= 2,
            "both failed handshakes are logged",
        )
    finally:
        await server.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_reader_that_takes_a_burst_late_but_takes_it_is_not_cut_off(
    transport: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of ~6 MB while the reader is not reading yet (its socket takes 4 KB):
    more than --max-pending-output (64 KiB) waits in the server, which used to cut it
    off at once. Now what counts is what it does not take: it reads the burst within
    the stall time, the unsent output shrinks, and it keeps its session and every
    message (issue 20). The memory bound (STALL_BOUND times the limit) is lifted here
    so that only the reading counts; a reader that never reads is still cut off (the
    test above)."""
    monkeypatch.setattr(shell_module, "STALL_BOUND", 1000)
    caplog.set_level(logging.INFO, LOG)
    server = await start(max_pending_output=64 * 1024, flood_rate=0)
    try:
        sender = await Raw.open(server, "tcp")
        await sender.login()
        sender.send(b'{"_ct":"join_room","r":"general"}')
        assert (await sender.event())["_et"] == "user_joined_room"
        await sender.event()  # its own joined
        reader = await Raw.open(server, transport, rcvbuf=4096)
        reader_user = await reader.login()
        reader.send(b'{"_ct":"join_room","r":"general"}')
        assert (await sender.event())["u"] == reader_user
        payload = "z" * 1000
        count = 6000
        sender.writer.write(
            b"".join(
                json.dumps({"_ct": "send_message", "r": "general", "c": f"{n}:{payload}"}).encode()
                + b"\n"
                for n in range(count)
            )
        )
        await sender.writer.drain()
        stalled = [c for c in server.shell.connections if c.session is not None]
        await until(
            lambda: any(c._stall is not None for c in stalled),
            "more than --max-pending-output waits for the reader",
        )
        got = 0
        async with asyncio.timeout(TIMEOUT):
            while got < count:
                event = await reader.event()
                if event["_et"] == "user_message":
                    assert event["c"].startswith(f"{got}:"), event["c"][:20]
                    got += 1
        assert server.stats.slow_consumers == 0
        assert not any("slow consumer" in r.getMessage() for r in caplog.records)
        for conn in (sender, reader):
            conn.close()
    finally:
        await server.close()


class FloodedRoom:
    """Members of "general" that all flood it at once and read at once (``clients``, of
    one transport, with 16 KiB socket buffers on both sides: the kernel's share is
    small), and one more member that never reads (``silent``: a plain socket, which
    reads its login and nothing more; a stream reader would read for it)."""

    def __init__(self, server: ChatServer, clients: list[Raw], silent: socket.socket) -> None:
        self.server, self.clients, self.silent = server, clients, silent
        self.users: list[str] = []
        self.silent_user = ""

    @classmethod
    async def open(cls, server: ChatServer, transport: str, members: int) -> FloodedRoom:
        clients = [await Raw.open(server, transport, rcvbuf=16 * 1024) for _ in range(members)]
        silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        silent.setblocking(False)
        room = cls(server, clients, silent)
        room.users = [await client.login() for client in clients]
        for client in clients:  # one after the other: each reply comes before any event
            client.send(b'{"_ct":"join_room","r":"general"}')
            assert (await client.event())["_et"] == "user_joined_room"
        loop = asyncio.get_running_loop()
        await loop.sock_connect(silent, ("127.0.0.1", server.port))
        login = b""
        async with asyncio.timeout(TIMEOUT):
            while not login.endswith(b"\n"):
                login += await loop.sock_recv(silent, 1)
        room.silent_user = json.loads(login)["u"]
        await loop.sock_sendall(silent, b'{"_ct":"join_room","r":"general"}\r\n')
        general = server.rooms.rooms["general"]
        await until(lambda: general.member_count == members + 1, "the non-reader is in")
        for user in (*room.users, room.silent_user):  # the server's side takes 4 MB else
            transport = connection_of(server, user).transport
            assert transport is not None
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        return room

    def flood(self, count: int) -> None:
        """Each client sends ``count`` messages at once ("sender:n:payload")."""
        payload = "z" * 200
        for index, client in enumerate(self.clients):
            client.writer.write(
                b"".join(
                    client.framed(
                        json.dumps(
                            {"_ct": "send_message", "r": "general", "c": f"{index}:{n}:{payload}"}
                        ).encode()
                    )
                    for n in range(count)
                )
            )

    async def read_everything(self, count: int) -> None:
        """Every client reads, at once, every client's ``count`` messages, in order."""

        async def read(client: Raw) -> None:
            expected = [0] * len(self.clients)  # each sender's next message
            while sum(expected) < len(self.clients) * count:
                event = await client.event()
                if event["_et"] == "user_message":
                    sender, n, _ = event["c"].split(":", 2)
                    assert int(n) == expected[int(sender)], (sender, n, expected)
                    expected[int(sender)] += 1
                else:  # those who joined after it, the non-reader leaving when cut off
                    assert event["_et"] == "room_participation", event
                    assert event["s"] == "joined" or event["u"] == self.silent_user, event

        await asyncio.gather(*(read(client) for client in self.clients))

    def readers_are_in(self) -> bool:
        for user in self.users:
            session = connection_of(self.server, user).session
            if session is None or session.closed:
                return False
        return True

    def silent_is_gone(self) -> bool:
        return all(
            c.session is None or c.session.user_id != self.silent_user
            for c in self.server.connections
        )

    def close(self) -> None:
        self.silent.close()
        for client in self.clients:
            client.close()


def cut_off(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    """(user, message) of each slow-consumer cut logged."""
    return [
        (r.user, r.getMessage())
        for r in caplog.records
        if "slow consumer" in r.getMessage() and r.getMessage().endswith("disconnecting")
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_flooding_senders_are_slowed_to_the_readers_pace_and_only_a_non_reader_is_cut(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 20: flood control off, every member of a room floods it at once, far more
    than the others' sockets take, and reads at once; one more member never reads. Each
    reader's unsent output passes --max-pending-output again and again, and each time
    the room holds its senders back (does not read them) until it has drained, instead
    of letting it grow until the cut (before, the readers were cut off with the
    non-reader). Nobody who reads is cut off, each gets every message in order; the
    non-reader still is (its output stops shrinking), and holds the room back no more."""
    caplog.set_level(logging.INFO, LOG)
    server = await start(max_pending_output=256 * 1024, flood_rate=0)
    try:
        room = await FloodedRoom.open(server, transport, members=4)
        room.flood(2000)
        await room.read_everything(2000)
        assert server.stats.held > 0  # the senders were held back
        assert server.stats.slow_consumers == 1
        assert [user for user, _ in cut_off(caplog)] == [room.silent_user]
        assert room.readers_are_in()
        await until(room.silent_is_gone, "the non-reader is gone")
        room.close()
    finally:
        await server.close()


async def test_a_member_holds_its_room_back_for_a_bounded_time(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member that is behind holds its room's senders back for HOLD_SECONDS at most
    (made short here), however long before it would be cut for not reading (made long):
    then the room goes on without waiting for it, its output grows, and it is cut off
    at STALL_BOUND times the limit. The readers get everything and stay."""
    monkeypatch.setattr(shell_module, "HOLD_SECONDS", 0.2)
    monkeypatch.setattr(shell_module, "STALL_SECONDS", 3600.0)
    caplog.set_level(logging.INFO, LOG)
    limit = 256 * 1024
    server = await start(max_pending_output=limit, flood_rate=0)
    try:
        room = await FloodedRoom.open(server, "tcp", members=2)
        room.flood(4000)
        await room.read_everything(4000)
        await until(room.silent_is_gone, "the non-reader is cut off")
        [(user, line)] = cut_off(caplog)
        assert user == room.silent_user
        pending = int(re.findall(r"\((\d+)\)", line)[-1])
        assert pending > shell_module.STALL_BOUND * limit  # by the bound, not the time
        assert room.readers_are_in()
        room.close()
    finally:
        await server.close()
