"""The server over real sockets on 127.0.0.1 (port 0): every behaviour of docs/protocol.md."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator

import pytest

from roomchat.client import ChatClient
from roomchat.protocol import (
    LoginSuccessful,
    RoomParticipation,
    SendMessage,
    UserJoinedRoom,
    UserMessage,
    encode,
)
from roomchat.server import ChatServer, ServerConfig, load_rooms
from tests.helpers import (
    TIMEOUT,
    client_of,
    joined,
    messages,
    next_event,
    raw_login,
    raw_socket,
    read_line,
    until,
    wait_eof,
)

# Everything here runs on both buses (conftest.bus_url): the in-process one and Redis.


@pytest.fixture
async def server(bus_url: str) -> AsyncIterator[ChatServer]:
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, bus_url=bus_url))
    try:
        yield srv
    finally:
        await srv.close()


async def test_login_lists_every_room_in_file_order(server: ChatServer) -> None:
    async with await client_of(server) as client:
        assert client.rooms == load_rooms()
        assert len(client.user_id) == 5
        assert len(client.session_id) == 21


async def test_each_connection_gets_its_own_ids(server: ChatServer) -> None:
    clients = [await client_of(server) for _ in range(5)]
    assert len({c.session_id for c in clients}) == 5
    for client in clients:
        client.close()


async def test_server_speaks_first_with_exact_login_bytes(server: ChatServer) -> None:
    sock = await raw_socket(server)
    buffer = bytearray()
    line = await read_line(sock, buffer)
    login = json.loads(line)
    assert list(login) == ["_et", "s", "u", "rs"]
    assert login["_et"] == "login_successful"
    expected = LoginSuccessful(login["s"], login["u"], load_rooms())
    assert line + b"\r\n" == encode(expected)
    sock.close()


async def test_join_replies_then_announces_own_joined(server: ChatServer) -> None:
    async with await client_of(server) as alice:
        await alice.join("general")
        assert await next_event(alice) == UserJoinedRoom("general", (alice.user_id,))
        assert await next_event(alice) == RoomParticipation("general", alice.user_id, "joined")


async def test_others_see_joined_and_left(server: ChatServer) -> None:
    alice = await client_of(server)
    bob = await client_of(server)
    await joined(alice, "general")
    reply = await joined(bob, "general")
    assert reply.users == (alice.user_id, bob.user_id)
    assert await next_event(alice) == RoomParticipation("general", bob.user_id, "joined")
    await bob.leave("general")
    assert await next_event(alice) == RoomParticipation("general", bob.user_id, "left")
    # bob gets nothing for its own leave: its next event is the reply to a new command.
    await bob.join("random")
    assert await next_event(bob) == UserJoinedRoom("random", (bob.user_id,))
    alice.close()
    bob.close()


async def test_messages_reach_every_member_in_order(server: ChatServer) -> None:
    members = [await client_of(server) for _ in range(3)]
    for index, member in enumerate(members):
        await joined(member, "general")
        for earlier in members[:index]:
            assert await next_event(earlier) == RoomParticipation(
                "general", member.user_id, "joined"
            )
    outsider = await client_of(server)
    await joined(outsider, "random")
    sender = members[0]
    for n in range(50):
        await sender.send("general", f"message {n}")
    expected = [UserMessage("general", sender.user_id, f"message {n}") for n in range(50)]
    for member in members:  # the sender's own copy included
        assert await messages(member, 50) == expected
    # Nothing leaked into another room: the outsider's next event is its own.
    await outsider.send("random", "only here")
    assert await next_event(outsider) == UserMessage("random", outsider.user_id, "only here")
    for client in [*members, outsider]:
        client.close()


async def test_non_ascii_content_travels_as_utf8(server: ChatServer) -> None:
    sock = await raw_socket(server)
    buffer = bytearray()
    await read_line(sock, buffer)  # login
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, b'{"_ct":"join_room","r":"general"}\n')
    await read_line(sock, buffer)
    login_joined = await read_line(sock, buffer)
    user = json.loads(login_joined)["u"]
    await loop.sock_sendall(sock, encode(SendMessage("general", "héllo 👋")))
    line = await read_line(sock, buffer)
    expected = b'{"_et":"user_message","r":"general","u":"' + user.encode()
    assert line == expected + '","c":"héllo 👋"}'.encode()
    sock.close()


async def test_one_stream_carries_every_joined_room(server: ChatServer) -> None:
    alice = await client_of(server)
    bob = await client_of(server)
    for room in ("general", "random", "python"):
        await joined(alice, room)
        await joined(bob, room)
        assert await next_event(alice) == RoomParticipation(room, bob.user_id, "joined")
    for room in ("general", "random", "python"):
        await bob.send(room, f"hi {room}")
    got = await messages(alice, 3)
    assert got == [UserMessage(r, bob.user_id, f"hi {r}") for r in ("general", "random", "python")]
    alice.close()
    bob.close()


@pytest.mark.parametrize("how", ["quit", "abort", "close"])
async def test_departure_announces_left_in_every_room(server: ChatServer, how: str) -> None:
    alice = await client_of(server)
    bob = await client_of(server)
    for room in ("general", "random"):
        await joined(alice, room)
        await joined(bob, room)
        assert await next_event(alice) == RoomParticipation(room, bob.user_id, "joined")
    if how == "quit":
        await bob.quit()
    elif how == "abort":
        bob.abort()
    else:
        bob.close()
    got = {await next_event(alice), await next_event(alice)}
    assert got == {
        RoomParticipation("general", bob.user_id, "left"),
        RoomParticipation("random", bob.user_id, "left"),
    }
    await asyncio.wait_for(bob.wait_closed(), 10)
    alice.close()


async def test_quit_closes_the_connection(
    server: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roomchat.server")
    client = await client_of(server)
    assert len(server.connections) == 1
    await client.quit()
    await asyncio.wait_for(client.wait_closed(), 10)
    # The server closed it cleanly (an end of stream, not a reset) ...
    assert client.close_reason == "connection closed"
    # ... dropped the session, and says why.
    await until(lambda: not server.connections, "the server dropped the session")
    ends = [r.getMessage() for r in caplog.records if client.session_id in r.getMessage()]
    assert ends[-1].endswith("disconnected: quit"), ends


BAD_LINES = [
    b"this is not json",
    b'{"_ct":"join_room","r":"general"',  # truncated
    b'{"_ct":"dance"}',  # unknown command
    b'{"_ct":"join_room"}',  # missing field
    b'{"_ct":"join_room","r":42}',  # wrongly typed field
    b'{"_ct":"send_message","r":"general"}',  # missing content
    b'{"r":"general"}',  # no tag
    b'["join_room","general"]',
    b'{"_ct":"join_room","r":"\xff\xfe"}',  # invalid UTF-8
    b"\x00\x01\x02",
    b'{"_ct":"quit","x":' + b"[" * 5000,  # nested deeper than the decoder's stack
    b'{"_et":"user_message","r":"general","u":"x","c":"forged event"}',
]


@pytest.mark.parametrize("line", BAD_LINES, ids=lambda b: repr(b[:24]))
async def test_bad_line_is_ignored_and_session_stays_open(server: ChatServer, line: bytes) -> None:
    client = await client_of(server)
    client.write(line + b"\r\n")
    # The next event answers the next command: the bad line produced nothing.
    await client.join("general")
    assert await next_event(client) == UserJoinedRoom("general", (client.user_id,))
    client.close()


@pytest.mark.parametrize(
    "command",
    [
        b'{"_ct":"join_room","r":"no-such-room"}',
        b'{"_ct":"join_room","r":"general"}',  # already joined (see setup)
        b'{"_ct":"leave_room","r":"random"}',  # not joined
        b'{"_ct":"leave_room","r":"no-such-room"}',
        b'{"_ct":"send_message","r":"random","c":"not a member"}',
        b'{"_ct":"send_message","r":"no-such-room","c":"x"}',
    ],
)
async def test_invalid_room_commands_are_ignored(server: ChatServer, command: bytes) -> None:
    client = await client_of(server)
    watcher = await client_of(server)
    await joined(watcher, "random")
    await joined(client, "general")
    client.write(command + b"\n")
    await client.send("general", "still here")
    assert await next_event(client) == UserMessage("general", client.user_id, "still here")
    # The watcher in "random" saw nothing of it: its next event is its own message.
    await watcher.send("random", "ping")
    assert await next_event(watcher) == UserMessage("random", watcher.user_id, "ping")
    client.close()
    watcher.close()


async def test_thousands_of_commands_in_one_packet(server: ChatServer) -> None:
    client = await client_of(server)
    await joined(client, "general")
    count = 5000
    burst = b"".join(encode(SendMessage("general", str(n))) for n in range(count))
    client.write(burst)
    got = await messages(client, count)
    assert [m.content for m in got] == [str(n) for n in range(count)]
    client.close()


async def test_commands_split_at_every_byte(server: ChatServer) -> None:
    client = await client_of(server)
    await joined(client, "general")
    data = encode(SendMessage("general", "byte by byte ✓"))
    for index in range(len(data)):
        client.write(data[index : index + 1])
        await asyncio.sleep(0)  # hand each byte to the loop on its own
    assert await next_event(client) == UserMessage("general", client.user_id, "byte by byte ✓")
    client.close()


async def test_newline_only_framing_is_accepted(server: ChatServer) -> None:
    # What a person typing into nc/telnet sends.
    client = await client_of(server)
    client.write(b'{"_ct":"join_room","r":"general"}\n')
    assert await next_event(client) == UserJoinedRoom("general", (client.user_id,))
    client.close()


async def test_too_long_line_closes_only_that_session(bus_url: str) -> None:
    srv = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, bus_url=bus_url, max_line_length=1024)
    )
    try:
        bystander = await client_of(srv)
        offender = await client_of(srv)
        await joined(bystander, "general")
        await joined(offender, "general")
        assert await next_event(bystander) == RoomParticipation(
            "general", offender.user_id, "joined"
        )
        # No newline ever comes: the server must not buffer it all, and must hang up.
        offender.write(b'{"_ct":"send_message","r":"general","c":"' + b"x" * 4096)
        await asyncio.wait_for(offender.wait_closed(), 10)
        assert await next_event(bystander) == RoomParticipation("general", offender.user_id, "left")
        # A line of exactly the limit is fine.
        prefix = b'{"_ct":"send_message","r":"general","c":"'
        content = "y" * (1024 - len(prefix) - 2)
        bystander.write(prefix + content.encode() + b'"}\r\n')
        assert await next_event(bystander) == UserMessage("general", bystander.user_id, content)
        bystander.close()
    finally:
        await srv.close()


async def test_client_that_disconnects_mid_line(server: ChatServer) -> None:
    watcher = await client_of(server)
    await joined(watcher, "general")
    leaver = await client_of(server)
    await joined(leaver, "general")
    assert await next_event(watcher) == RoomParticipation("general", leaver.user_id, "joined")
    leaver.write(b'{"_ct":"send_message","r":"gen')
    leaver.abort()
    assert await next_event(watcher) == RoomParticipation("general", leaver.user_id, "left")
    watcher.close()


async def test_silent_member_does_not_hold_up_its_room(server: ChatServer) -> None:
    # A member that joined and then neither sends nor reads: the room goes on.
    silent, _, silent_user = await raw_login(server)
    await asyncio.get_running_loop().sock_sendall(silent, b'{"_ct":"join_room","r":"general"}\n')
    client = await client_of(server)
    reply = await joined(client, "general")
    assert reply.users == (silent_user, client.user_id)
    for n in range(100):
        await client.send("general", f"hello {n}")
    assert [m.content for m in await messages(client, 100)] == [f"hello {n}" for n in range(100)]
    client.close()
    silent.close()


async def test_half_close_carries_out_an_unterminated_last_command(server: ChatServer) -> None:
    # What `printf '{"_ct":"join_room","r":"general"}' | nc host port` does.
    sock, buffer, user = await raw_login(server)
    await asyncio.get_running_loop().sock_sendall(sock, b'{"_ct":"join_room","r":"general"}')
    sock.shutdown(socket.SHUT_WR)
    assert json.loads(await read_line(sock, buffer)) == {
        "_et": "user_joined_room",
        "r": "general",
        "us": [user],
    }
    assert json.loads(await read_line(sock, buffer))["s"] == "joined"
    assert await read_line(sock, buffer) == b""  # then the server closes
    sock.close()


async def test_slow_consumer_is_cut_off_and_others_lose_nothing(bus_url: str) -> None:
    limit = 64 * 1024
    srv = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, bus_url=bus_url, max_pending_output=limit)
    )
    try:
        healthy = await client_of(srv)
        sender = await client_of(srv)
        await joined(healthy, "general")
        await joined(sender, "general")
        assert await next_event(healthy) == RoomParticipation("general", sender.user_id, "joined")
        # The slow one joins, then never reads again; a small receive buffer makes the
        # kernel's share small, so the server's own buffer passes the bound soon.
        slow = await raw_socket(srv, rcvbuf=4096)
        loop = asyncio.get_running_loop()
        slow_login = json.loads(await read_line(slow, bytearray()))
        await loop.sock_sendall(slow, b'{"_ct":"join_room","r":"general"}\r\n')
        slow_user = slow_login["u"]
        assert await next_event(healthy) == RoomParticipation("general", slow_user, "joined")
        assert await next_event(sender) == RoomParticipation("general", slow_user, "joined")

        payload = "z" * 1000
        total = 0
        received: list[UserMessage] = []
        left_seen = False
        # Send in rounds until the server gives up on the slow consumer; the healthy
        # member reads everything as it goes.
        while not left_seen:
            assert total < 100_000, "slow consumer was never cut off"
            for _ in range(100):
                await sender.send("general", f"{total}:{payload}")
                total += 1
            while len(received) < total:
                event = await next_event(healthy)
                if isinstance(event, RoomParticipation):
                    assert event == RoomParticipation("general", slow_user, "left")
                    left_seen = True
                else:
                    assert isinstance(event, UserMessage)
                    received.append(event)
        assert [m.content for m in received] == [f"{n}:{payload}" for n in range(total)]
        await wait_eof(slow)
        # The pending output of the slow consumer is gone with it, and the memory it held
        # is handed back to the system a moment later (server/shells/memory.py).
        assert all(c.session is None or c.session.user_id != slow_user for c in srv.connections)
        await until(lambda: srv.shell.trimmer.trims > 0, "freed memory was trimmed")
        slow.close()
        healthy.close()
        sender.close()
    finally:
        await srv.close()


async def test_close_is_idempotent_and_ends_every_session(bus_url: str) -> None:
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, bus_url=bus_url))
    clients: list[ChatClient] = [await client_of(srv) for _ in range(3)]
    await joined(clients[0], "general")
    await asyncio.gather(srv.close(), srv.close())
    for client in clients:
        await asyncio.wait_for(client.wait_closed(), 10)
    assert not srv.connections
    await srv.close()


@pytest.mark.parametrize("window", [0.0, 0.003, 0.05])
async def test_every_coalescing_window_delivers_everything_in_order(
    window: float, bus_url: str
) -> None:
    srv = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, bus_url=bus_url, coalesce_window=window)
    )
    try:
        alice = await client_of(srv)
        bob = await client_of(srv)
        await joined(alice, "general")
        await joined(bob, "general")
        assert await next_event(alice) == RoomParticipation("general", bob.user_id, "joined")
        for n in range(20):  # one at a time, each waiting for its echo: many short turns
            await alice.send("general", f"a{n}")
            assert await next_event(alice) == UserMessage("general", alice.user_id, f"a{n}")
        await bob.send("general", "b")
        expected = [f"a{n}" for n in range(20)] + ["b"]
        assert [m.content for m in await messages(bob, 21)] == expected
        # Turns that came within the window of each other were coalesced (the outbox
        # waited); with the window off it never waits. How long is for the benchmarks.
        if window:
            assert srv.outbox.pauses > 0
        else:
            assert srv.outbox.pauses == 0
        alice.close()
        bob.close()
    finally:
        await srv.close()


def _log_in_one_after_another(port: int, count: int, wake: socket.socket) -> list[dict[str, str]]:
    """Blocking clients (a thread: the server's waits hold up its own loop, and the test's
    with it), each connecting once the previous one has its login."""
    clients: list[socket.socket] = []
    logins: list[dict[str, str]] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
            clients.append(sock)
            reader = sock.makefile("rb")
            logins.append(json.loads(reader.readline()))  # TIMEOUT: fails if held up
            reader.close()
    finally:
        wake.send(b"!")  # end the server's last wait (and every later one) at once
        for sock in clients:
            sock.close()
    return logins


async def test_accepting_is_never_held_up_by_the_coalescing_window() -> None:
    # With a 30 s window every turn after the first waits: for the rest of the window,
    # or until a connection arrives. If accepting waited for the window, the third
    # client would get its login 30 s late, and its 10 s read timeout would fail.
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, coalesce_window=30.0))
    waker, wake = socket.socketpair()
    srv.outbox.watch(waker.fileno())  # so that the test can end the last wait
    try:
        count = 5
        logins = await asyncio.to_thread(_log_in_one_after_another, srv.port, count, wake)
        assert [login["_et"] for login in logins] == ["login_successful"] * count
        assert len({login["s"] for login in logins}) == count
        assert srv.outbox.pauses >= count - 1, "the server did wait between the connections"
    finally:
        await srv.close()
        waker.close()
        wake.close()
