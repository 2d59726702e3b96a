"""Protocol v2 through the real server (docs/protocol.md, "Version 2"): exact bytes of
every v2 event, v1 sessions untouched next to v2 ones, every error code, names and
tokens, history and catch-up, heartbeats, flood control and the shutdown notice.

The room behaviour (sequence numbers, history, catch-up) runs on both buses
(conftest.bus_url): in-process and a real Redis.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from roomchat import tokens
from roomchat.client import HelloRefused, MissedMessages, ReconnectingClient, connect
from roomchat.protocol import (
    FEATURES,
    History,
    HistoryMessage,
    RoomListing,
    RoomParticipation,
    Rooms,
    ServerPing,
    ServerPong,
    Shutdown,
    UserMessage,
    Welcome,
    encode,
)
from roomchat.server import ChatServer, ServerConfig
from tests.helpers import TIMEOUT, raw_login, raw_socket, read_line, until, wait_eof

SECRET = b"0123456789abcdef0123456789abcdef"
ROOM = "general"


def config(bus_url: str = "memory://", **changes: Any) -> ServerConfig:
    return replace(ServerConfig(host="127.0.0.1", port=0, bus_url=bus_url), **changes)


@pytest.fixture
async def server(bus_url: str) -> AsyncIterator[ChatServer]:
    srv = await ChatServer.start(config(bus_url))
    try:
        yield srv
    finally:
        await srv.close()


class Raw:
    """A raw socket: exact bytes in and out."""

    def __init__(self, sock: socket.socket, buffer: bytearray, user: str) -> None:
        self.sock, self.buffer, self.user = sock, buffer, user
        self.session = ""

    async def send(self, *lines: bytes) -> None:
        data = b"".join(line + b"\n" for line in lines)
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def line(self) -> bytes:
        line = await read_line(self.sock, self.buffer)
        assert line, "connection closed"
        return line + b"\r\n"

    async def event(self) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(await self.line())
        return event

    async def until(self, kind: str) -> bytes:
        """Lines up to and including the first event of type ``kind``; returns it."""
        while True:
            line = await self.line()
            if json.loads(line)["_et"] == kind:
                return line

    def close(self) -> None:
        self.sock.close()


async def raw(server: ChatServer, hello: bytes | None = b'{"_ct":"hello","v":2}') -> Raw:
    sock, buffer, user = await raw_login(server)
    conn = Raw(sock, buffer, user)
    if hello is not None:
        await conn.send(hello)
        welcome = await conn.event()
        assert welcome["_et"] == "welcome", welcome
        conn.user, conn.session = welcome["u"], welcome["s"]
        assert (await conn.event())["_et"] == "rooms"
    return conn


async def raw_join(conn: Raw, room: str = ROOM, extra: bytes = b"") -> list[bytes]:
    """Join; the lines up to one's own "joined" (user_joined_room, [history,] joined)."""
    await conn.send(b'{"_ct":"join_room","r":"%s"%s}' % (room.encode(), extra))
    lines = [await conn.line()]
    while b'"room_participation"' not in lines[-1] or conn.user.encode() not in lines[-1]:
        lines.append(await conn.line())
    return lines


# -- handshake and exact bytes --------------------------------------------------------------


async def test_welcome_exact_bytes_and_pipelined_commands(server: ChatServer) -> None:
    sock, buffer, user = await raw_login(server)
    conn = Raw(sock, buffer, user)
    # The hello and commands pipelined after it, in one write: handled as v2.
    await conn.send(
        b'{"_ct":"hello","v":3,"id":"h1"}', b'{"_ct":"ping","id":"p1"}', b'{"_ct":"join_room"}'
    )
    line = await conn.line()
    welcome = json.loads(line)
    expected = Welcome(2, welcome["s"], user, welcome["t"], FEATURES, 30, "h1")
    assert line == encode(expected)
    assert tokens.verify(server.context.secret, user, welcome["t"], 0)
    listing = tuple(RoomListing(d.name, d.description) for d in server.rooms.details)
    assert await conn.line() == encode(Rooms(listing))
    assert await conn.line() == encode(ServerPong("p1"))
    error = await conn.event()
    assert error["code"] == "bad_command" and error["cmd"] == "join_room"
    conn.close()


async def _kinds_until(sock: socket.socket, buffer: bytearray, last: str) -> list[str]:
    kinds: list[str] = []
    while not kinds or kinds[-1] != last:
        line = await read_line(sock, buffer)
        assert line, f"closed after {kinds}"
        kinds.append(json.loads(line)["_et"])
    return kinds


async def test_commands_sent_before_the_login_are_carried_out_in_order(
    server: ChatServer,
) -> None:
    """Clients that do not wait for their login (with the Redis bus the login waits for
    the shared name registry): what they sent is carried out in order."""
    loop = asyncio.get_running_loop()
    sock, buffer = await raw_socket(server), bytearray()
    await loop.sock_sendall(
        sock,
        b'{"_ct":"hello","v":2,"name":"early","id":"h"}\n'
        b'{"_ct":"join_room","r":"general"}\n'
        b'{"_ct":"send_message","r":"general","c":"first"}\n',
    )
    assert await _kinds_until(sock, buffer, "user_message") == [
        "login_successful",
        "welcome",
        "rooms",
        "user_joined_room",
        "history",
        "room_participation",
        "user_message",
    ]
    sock.close()
    # v1, a last command without its newline, then the end of the input: carried out,
    # then the session ends.
    sock, buffer = await raw_socket(server), bytearray()
    await loop.sock_sendall(sock, b'{"_ct":"join_room","r":"general"}')
    sock.shutdown(socket.SHUT_WR)
    assert await _kinds_until(sock, buffer, "room_participation") == [
        "login_successful",
        "user_joined_room",
        "room_participation",
    ]
    await wait_eof(sock)
    sock.close()


async def test_v2_events_exact_bytes(server: ChatServer) -> None:
    alice = await raw(server, b'{"_ct":"hello","v":2,"name":"alice"}')
    lines = await raw_join(alice)
    assert lines[0] == b'{"_et":"user_joined_room","r":"general","us":["alice"]}\r\n'
    epoch = json.loads(lines[1])["e"]  # opaque, fixed for the room's numbering
    assert isinstance(epoch, str) and epoch
    assert lines[1] == encode(History(ROOM, (), 0, False, epoch))
    joined = json.loads(lines[2])
    assert lines[2] == encode(RoomParticipation(ROOM, "alice", "joined", joined["ts"]))
    await alice.send(b'{"_ct":"send_message","r":"general","c":"hi \xf0\x9f\x91\x8b"}')
    message = await alice.line()
    ts = json.loads(message)["ts"]
    assert message == encode(UserMessage(ROOM, "alice", "hi 👋", 1, ts))
    await alice.send(b'{"_ct":"ping"}')
    assert await alice.line() == b'{"_et":"pong"}\r\n'
    await alice.send(b'{"_ct":"pong"}', b'{"_ct":"ping","id":"x"}')  # pong: no answer
    assert await alice.line() == encode(ServerPong("x"))

    bob = await raw(server, b'{"_ct":"hello","v":2,"name":"bob"}')
    lines = await raw_join(bob, extra=b',"h":5')
    assert lines[1] == encode(
        History(ROOM, (HistoryMessage("alice", "hi 👋", 1, ts),), 1, False, epoch)
    )
    left = await alice.until("room_participation")  # bob's joined
    await bob.send(b'{"_ct":"leave_room","r":"general"}')
    left = await alice.line()
    assert left == encode(RoomParticipation(ROOM, "bob", "left", json.loads(left)["ts"]))
    alice.close()
    bob.close()


async def test_v1_session_next_to_v2_gets_v1_bytes_only(server: ChatServer) -> None:
    sock, buffer, v1_user = await raw_login(server)
    v1 = Raw(sock, buffer, v1_user)
    v2 = await raw(server)
    await raw_join(v2)
    # v1: h/after/id ignored, ping/pong/a late hello ignored, bad commands ignored.
    await v1.send(
        b'{"_ct":"ping","id":"1"}',
        b'{"_ct":"join_room","r":"general","h":5,"id":7}',
    )
    assert await v1.line() == (
        b'{"_et":"user_joined_room","r":"general","us":["%s","%s"]}\r\n'
        % (v2.user.encode(), v1_user.encode())
    )
    assert await v1.line() == encode(RoomParticipation(ROOM, v1_user, "joined"))
    await v1.send(
        b'{"_ct":"hello","v":2}',
        b'{"_ct":"join_room","r":"nowhere"}',
        b'{"_ct":"leave_room","r":"random"}',
        b"not json",
        b'{"_ct":"send_message","r":"general","c":"from v1"}',
    )
    assert await v1.line() == encode(UserMessage(ROOM, v1_user, "from v1"))
    await v2.send(b'{"_ct":"send_message","r":"general","c":"from v2"}')
    assert await v1.line() == encode(UserMessage(ROOM, v2.user, "from v2"))
    await v2.send(b'{"_ct":"leave_room","r":"general"}')
    assert await v1.line() == encode(RoomParticipation(ROOM, v2.user, "left"))
    # And v2 saw the same messages with their numbers.
    await v2.until("user_message")
    second = json.loads(await v2.until("user_message"))
    assert (second["c"], second["q"]) == ("from v2", 2)
    v1.close()
    v2.close()


async def test_a_run_of_messages_in_one_read_is_numbered_one_by_one(server: ChatServer) -> None:
    # One read of five send_message lines is posted as one piece (the hot path): each
    # message still gets its own number, and v1 members their exact v1 lines.
    sock, buffer, v1_user = await raw_login(server)
    v1 = Raw(sock, buffer, v1_user)
    v2 = await raw(server)
    await raw_join(v2)
    await v1.send(b'{"_ct":"join_room","r":"general"}')
    await v1.until("room_participation")
    await v2.until("room_participation")
    await v1.send(*[b'{"_ct":"send_message","r":"general","c":"%d"}' % n for n in range(5)])
    for n in range(5):
        assert await v1.line() == encode(UserMessage(ROOM, v1_user, str(n)))
    seen = [json.loads(await v2.until("user_message")) for _ in range(5)]
    assert [(m["c"], m["q"]) for m in seen] == [(str(n), n + 1) for n in range(5)]
    # The history holds them one by one too.
    late = await raw(server)
    lines = await raw_join(late, extra=b',"h":3')
    history = json.loads(next(line for line in lines if b'"history"' in line))
    assert [(m["c"], m["q"]) for m in history["ms"]] == [("2", 3), ("3", 4), ("4", 5)]
    for conn in (v1, v2, late):
        conn.close()


# -- errors -----------------------------------------------------------------------------------


async def test_every_command_error(server: ChatServer) -> None:
    conn = await raw(server)
    await raw_join(conn)
    cases = [
        (b'{"_ct":"join_room","r":"nowhere","id":"1"}', "unknown_room", "join_room", "1"),
        (b'{"_ct":"join_room","r":"general","id":"2"}', "already_joined", "join_room", "2"),
        (b'{"_ct":"leave_room","r":"random","id":"3"}', "not_member", "leave_room", "3"),
        (
            b'{"_ct":"send_message","r":"random","c":"x","id":"4"}',
            "not_member",
            "send_message",
            "4",
        ),
        (b"not json", "bad_command", None, None),
        (b'{"_ct":"dance","id":"5"}', "bad_command", "dance", "5"),
        (
            b'{"_ct":"join_room","r":"random","h":1,"after":2,"id":"6"}',
            "bad_command",
            "join_room",
            "6",
        ),
        (b'{"_ct":"join_room","r":"random","h":-1}', "bad_command", "join_room", None),
        (b'{"_ct":"hello","v":2,"id":"7"}', "bad_command", "hello", "7"),
    ]
    for line, code, cmd, ident in cases:
        await conn.send(line)
        error = await conn.event()
        assert error["_et"] == "error", error
        assert (error["code"], error.get("cmd"), error.get("id")) == (code, cmd, ident), line
    # Two joins of one room pipelined: the second is refused (a join in progress counts).
    await conn.send(b'{"_ct":"join_room","r":"random"}', b'{"_ct":"join_room","r":"random"}')
    await conn.until("room_participation")
    assert (await conn.event())["code"] == "already_joined"
    conn.close()


async def test_a_name_that_says_hello_too_often_is_rate_limited(bus_url: str) -> None:
    """A client reconnecting in a loop under one name: its burst of hellos, then
    rate_limited (and the close), for that name only (any case)."""
    srv = await ChatServer.start(config(bus_url, hello_rate=0.001))
    try:
        for _ in range(10):  # HELLO_BURST
            client = await connect("127.0.0.1", srv.port, v2=True, name="loopy")
            client.close()
            await client.wait_closed()
        with pytest.raises(HelloRefused) as refused:
            await connect("127.0.0.1", srv.port, v2=True, name="LOOPY")
        assert refused.value.error.code == "rate_limited"
        assert refused.value.error.command == "hello"
        other = await connect("127.0.0.1", srv.port, v2=True, name="calm")
        assert other.user_id == "calm"
        other.close()
    finally:
        await srv.close()


async def test_line_too_long_is_an_error_then_the_close(bus_url: str) -> None:
    srv = await ChatServer.start(config(bus_url, max_line_length=100))
    try:
        conn = await raw(srv)
        await conn.send(b'{"_ct":"send_message","r":"general","c":"' + b"x" * 200 + b'"}')
        error = await conn.event()
        assert error["code"] == "line_too_long"
        await wait_eof(conn.sock)
    finally:
        await srv.close()


@pytest.mark.parametrize(
    ("hello", "code"),
    [
        (b'{"_ct":"hello","v":2,"name":"no spaces","id":"a"}', "name_invalid"),
        (b'{"_ct":"hello","v":2,"name":"' + b"n" * 33 + b'"}', "name_invalid"),
        (b'{"_ct":"hello","v":2,"token":"1.x"}', "bad_command"),
    ],
)
async def test_refused_hello_then_closed(server: ChatServer, hello: bytes, code: str) -> None:
    sock, buffer, user = await raw_login(server)
    conn = Raw(sock, buffer, user)
    await conn.send(hello)
    error = await conn.event()
    assert (error["code"], error["cmd"]) == (code, "hello")
    await wait_eof(sock)


# -- names and tokens -------------------------------------------------------------------------


async def test_names_taken_case_insensitive_second_session_with_token(server: ChatServer) -> None:
    alice = await connect("127.0.0.1", server.port, v2=True, name="Alice")
    assert alice.user_id == "Alice" and alice.token is not None
    for name in ("alice", "ALICE"):
        with pytest.raises(HelloRefused) as refused:
            await connect("127.0.0.1", server.port, v2=True, name=name)
        assert refused.value.error.code == "name_taken"
    # A token for another spelling does not help; the right one does: the same user.
    other = tokens.mint(server.context.secret, "alice", 2**33)
    with pytest.raises(HelloRefused):
        await connect("127.0.0.1", server.port, v2=True, name="alice", token=other)
    again = await connect("127.0.0.1", server.port, v2=True, name="Alice", token=alice.token)
    assert again.user_id == "Alice"
    first = await alice.join_and_wait(ROOM)
    second = await again.join_and_wait(ROOM)
    assert second.joined.users == ("Alice",) == first.joined.users  # one user, two sessions
    # A connected random id is a taken name.
    v1 = await connect("127.0.0.1", server.port)
    with pytest.raises(HelloRefused):
        await connect("127.0.0.1", server.port, v2=True, name=v1.user_id.upper())
    # Released when the last session goes.
    alice.close()
    again.close()
    await alice.wait_closed()
    await again.wait_closed()
    await until(lambda: server.context.names.holder("alice") is None, "alice released")
    third = await connect("127.0.0.1", server.port, v2=True, name="alice")
    assert third.user_id == "alice"
    for client in (v1, third):
        client.close()


async def test_tokens_required(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET + b"\n")
    srv = await ChatServer.start(config(auth_secret_file=secret_file))
    try:
        with pytest.raises(HelloRefused) as refused:
            await connect("127.0.0.1", srv.port, v2=True, name="carol")
        assert refused.value.error.code == "not_authorised"
        wrong = tokens.mint(SECRET, "dave", 2**33)
        with pytest.raises(HelloRefused):
            await connect("127.0.0.1", srv.port, v2=True, name="carol", token=wrong)
        good = tokens.mint(SECRET, "carol", 2**33)  # what `roomchat token` mints
        carol = await connect("127.0.0.1", srv.port, v2=True, name="carol", token=good)
        assert carol.user_id == "carol"
        assert tokens.verify(SECRET, "carol", carol.token or "", 0)
        anonymous = await connect("127.0.0.1", srv.port, v2=True)  # no name: a random id
        assert anonymous.version == 2 and len(anonymous.user_id) == 5
        for client in (carol, anonymous):
            client.close()
    finally:
        await srv.close()


# -- sequence numbers, history, catch-up ------------------------------------------------------


async def test_history_bounded_and_ordered(bus_url: str) -> None:
    srv = await ChatServer.start(config(bus_url, history=5))
    try:
        sender = await connect("127.0.0.1", srv.port, v2=True, name="sender")
        await sender.join_and_wait(ROOM)
        for n in range(1, 9):
            await sender.send(ROOM, f"m{n}")
        seen: list[UserMessage] = []
        while len(seen) < 8:
            event = await sender.next_event(TIMEOUT)
            if isinstance(event, UserMessage):
                seen.append(event)
        assert [(m.content, m.seq) for m in seen] == [(f"m{n}", n) for n in range(1, 9)]
        reader = await connect("127.0.0.1", srv.port, v2=True)
        result = await reader.join_and_wait(ROOM, history=100)
        history = result.history
        assert history is not None and (history.seq, history.gap) == (8, False)
        assert [(m.content, m.seq) for m in history.messages] == [(f"m{n}", n) for n in range(4, 9)]
        assert [m.timestamp for m in history.messages] == [m.timestamp for m in seen[3:]]
        late = await connect("127.0.0.1", srv.port, v2=True)
        for after, first, gap in ((6, 7, False), (1, 4, True), (8, None, False), (20, 4, True)):
            result = await late.join_and_wait(ROOM, after=after)
            assert result.history is not None
            got = [m.seq for m in result.history.messages]
            assert (got[0] if got else None, result.history.gap) == (first, gap), after
            await late.leave(ROOM)
        for client in (sender, reader, late):
            client.close()
    finally:
        await srv.close()


async def test_history_off_still_counts(bus_url: str) -> None:
    srv = await ChatServer.start(config(bus_url, history=0))
    try:
        sender = await connect("127.0.0.1", srv.port, v2=True)
        await sender.join_and_wait(ROOM)
        await sender.send(ROOM, "one")
        await sender.send(ROOM, "two")
        seqs: list[int | None] = []
        while len(seqs) < 2:
            event = await sender.next_event(TIMEOUT)
            if isinstance(event, UserMessage):
                seqs.append(event.seq)
        assert seqs == [1, 2]
        reader = await connect("127.0.0.1", srv.port, v2=True)
        result = await reader.join_and_wait(ROOM, after=0)
        assert result.history is not None and result.history.epoch
        assert result.history == History(ROOM, (), 2, True, result.history.epoch)
        for client in (sender, reader):
            client.close()
    finally:
        await srv.close()


async def _messages(client: ReconnectingClient, count: int) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(TIMEOUT):
        while len([e for e in out if isinstance(e, UserMessage)]) < count:
            out.append(await client.next_event())
    return out


async def test_catch_up_across_a_restart(tmp_path: Path) -> None:
    """ReconnectingClient against the real server restarted on the same port: in one
    server's life the history fills the gap; after a restart (memory history lost) the
    client is told of the gap."""
    first = await ChatServer.start(config())
    port = first.port
    cfg = config(port=port)
    client = ReconnectingClient("127.0.0.1", port, name="reader", backoff_initial=0.05)
    await client.start()
    await client.join(ROOM, history=10)
    writer = await connect("127.0.0.1", port, v2=True, name="writer")
    await writer.join_and_wait(ROOM)
    await writer.send(ROOM, "before")
    events = await _messages(client, 1)
    assert [e.content for e in events if isinstance(e, UserMessage)] == ["before"]
    # The reader's connection breaks; the room goes on meanwhile; it catches up.
    assert client.client is not None
    client.client.abort()
    await writer.send(ROOM, "while away 1")
    await writer.send(ROOM, "while away 2")
    events = await _messages(client, 2)
    got = [(e.content, e.seq) for e in events if isinstance(e, UserMessage)]
    assert got == [("while away 1", 2), ("while away 2", 3)]
    assert not any(isinstance(e, MissedMessages) for e in events)
    # The server restarts on the same port: the count restarts, the client sees a gap.
    writer.close()
    await first.close()
    second = await ChatServer.start(cfg)
    try:
        writer = await connect("127.0.0.1", port, v2=True, name="writer")
        await client.wait_connected(TIMEOUT)
        await writer.join_and_wait(ROOM)
        await until(
            lambda: "reader" in second.bus.presence.users(second.rooms.rooms[ROOM]), "rejoined"
        )
        await writer.send(ROOM, "after restart")
        events = await _messages(client, 1)
        assert any(isinstance(e, MissedMessages) for e in events)
        got = [(e.content, e.seq) for e in events if isinstance(e, UserMessage)]
        assert got == [("after restart", 1)]
        writer.close()
    finally:
        await client.close()
        await second.close()


# -- heartbeats, flood control, shutdown --------------------------------------------------------


async def test_silent_v2_peer_is_pinged_then_closed_silent_v1_stays() -> None:
    srv = await ChatServer.start(config(heartbeat=0.2, idle_timeout=0.6))
    try:
        sock, buffer, user = await raw_login(srv)
        v1 = Raw(sock, buffer, user)
        v2 = await raw(srv)
        assert await v2.line() == encode(ServerPing())
        error = await v2.event()
        assert error["_et"] == "error" and error["code"] == "idle_timeout"
        await wait_eof(v2.sock)
        assert srv.stats.idle_timeouts == 1
        # The silent v1 session is still there and served.
        await v1.send(b'{"_ct":"join_room","r":"general"}')
        assert b"user_joined_room" in await v1.line()
        # A v2 session that answers pings stays.
        v2b = await raw(srv)
        for _ in range(3):
            assert await v2b.line() == encode(ServerPing())
            await v2b.send(b'{"_ct":"pong"}')
        assert srv.stats.idle_timeouts == 1
        v1.close()
        v2b.close()
    finally:
        await srv.close()


async def test_flooder_is_slowed_and_a_member_loses_nothing() -> None:
    srv = await ChatServer.start(config(flood_rate=200, flood_burst=20))
    try:
        flooder = await raw(srv)
        await raw_join(flooder)
        sock, buffer, user = await raw_login(srv)
        member = Raw(sock, buffer, user)
        await member.send(b'{"_ct":"join_room","r":"general"}')
        await member.until("room_participation")
        count = 300
        lines = [b'{"_ct":"send_message","r":"general","c":"m%d"}' % n for n in range(count)]
        await flooder.send(*lines)
        notice = await flooder.until("rate_limited")
        assert json.loads(notice)["retry_ms"] >= 1
        for n in range(count):
            assert await member.line() == encode(UserMessage(ROOM, flooder.user, f"m{n}"))
        assert srv.stats.throttled >= 1
        flooder.close()
        member.close()
    finally:
        await srv.close()


async def test_shutdown_notice_comes_before_the_close() -> None:
    srv = await ChatServer.start(config())
    v2 = await raw(srv)
    sock, buffer, user = await raw_login(srv)
    v1 = Raw(sock, buffer, user)
    await srv.close()
    assert await v2.line() == encode(Shutdown(2000, "server shutting down"))
    await wait_eof(v2.sock)
    assert await read_line(v1.sock, v1.buffer) == b""  # v1: just the close
    v1.close()
    v2.close()


async def test_two_instances_share_numbers_and_history(shared_redis: Any) -> None:
    shared_redis.command("FLUSHALL")
    one = await ChatServer.start(config(shared_redis.url))
    two = await ChatServer.start(config(shared_redis.url))
    try:
        a = await connect("127.0.0.1", one.port, v2=True, name="ann")
        b = await connect("127.0.0.1", two.port, v2=True, name="ben")
        await a.join_and_wait(ROOM)
        await b.join_and_wait(ROOM)
        for n in range(3):
            await a.send(ROOM, f"a{n}")
            await b.send(ROOM, f"b{n}")

        async def six(client: Any) -> list[tuple[str, int | None, int | None]]:
            got: list[tuple[str, int | None, int | None]] = []
            while len(got) < 6:
                event = await client.next_event(TIMEOUT)
                if isinstance(event, UserMessage):
                    got.append((event.content, event.seq, event.timestamp))
            return got

        seen_a, seen_b = await six(a), await six(b)
        assert seen_a == seen_b
        assert [q for _, q, _ in seen_a] == [1, 2, 3, 4, 5, 6]
        # A late joiner on either instance gets the same history from Redis.
        histories = []
        for srv in (one, two):
            late = await connect("127.0.0.1", srv.port, v2=True)
            result = await late.join_and_wait(ROOM, history=4)
            histories.append(result.history)
            late.close()
        assert histories[0] == histories[1]
        assert histories[0] is not None and histories[0].seq == 6
        expected = [(c, q, ts) for c, q, ts in seen_a[2:]]
        assert [(m.content, m.seq, m.timestamp) for m in histories[0].messages] == expected
        a.close()
        b.close()
    finally:
        await one.close()
        await two.close()
