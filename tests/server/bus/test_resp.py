"""resp.py: RESP encoding, and RespConnection against a real redis-server.

Every wait is for the reply or push it expects, bounded by TIMEOUT; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from roomchat.server.bus.redis.resp import (
    ReplyError,
    RespConnection,
    command,
    open_connection,
    reply_future,
)
from tests.helpers import TIMEOUT, until
from tests.redis_servers import HOST, RedisServer, free_port


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    """One redis-server for the module's tests that leave its configuration alone."""
    srv = RedisServer.launch()
    try:
        yield srv
    finally:
        srv.close(kill=True)


@pytest.fixture(autouse=True)
def _empty(request: pytest.FixtureRequest) -> None:
    if "redis" in request.fixturenames:
        request.getfixturevalue("redis").command("FLUSHALL")


class Lost:
    """An on_lost callback that remembers its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[RespConnection, Exception | None]] = []

    def __call__(self, connection: RespConnection, exc: Exception | None) -> None:
        self.calls.append((connection, exc))


class Replies:
    """Reply handlers that record what each got, by its index."""

    def __init__(self) -> None:
        self.got: dict[int, Any] = {}

    def handler(self, index: int) -> Any:
        def handle(reply: Any) -> None:
            assert index not in self.got, f"handler {index} called twice"
            self.got[index] = reply

        return handle

    async def wait(self, count: int) -> None:
        await until(lambda: len(self.got) == count, f"{count} replies")


@pytest.fixture
async def conn(redis: RedisServer) -> AsyncIterator[RespConnection]:
    connection = await open_connection(HOST, redis.port, Lost())
    try:
        yield connection
    finally:
        connection.close()


# -- command ---------------------------------------------------------------------------


def test_command_encodes_bytes_str_and_int() -> None:
    assert command(b"SET", "key", 12) == b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$2\r\n12\r\n"


def test_command_lengths_are_bytes_not_characters() -> None:
    assert command("é") == b"*1\r\n$2\r\n\xc3\xa9\r\n"


def test_command_edge_arguments() -> None:
    assert command() == b"*0\r\n"
    assert command(b"") == b"*1\r\n$0\r\n\r\n"
    assert command(-7, 0) == b"*2\r\n$2\r\n-7\r\n$1\r\n0\r\n"
    # Binary data is length-prefixed, so CR LF inside it needs no escaping.
    assert command(b"a\r\nb") == b"*1\r\n$4\r\na\r\nb\r\n"


async def test_binary_values_round_trip(conn: RespConnection) -> None:
    value = bytes(range(256)) + b"\r\n*1\r\n$-1\r\n"
    assert await conn.call(b"SET", b"k\r\n", value) == b"OK"
    assert await conn.call(b"GET", b"k\r\n") == value
    assert await conn.call("GET", "missing") is None


# -- replies in order --------------------------------------------------------------------


async def test_pipelined_replies_reach_their_handlers_in_order(conn: RespConnection) -> None:
    replies = Replies()
    data: list[bytes] = []
    handlers = []
    for i in range(1000):
        # Replies of different types, so that a shift by one could not go unnoticed.
        data.append(command("INCR", "counter") if i % 2 else command("ECHO", f"e{i}"))
        handlers.append(replies.handler(i))
    conn.send_many(b"".join(data), handlers)
    assert conn.pending == 1000
    await replies.wait(1000)
    for i in range(1000):
        assert replies.got[i] == ((i + 1) // 2 if i % 2 else f"e{i}".encode())
    assert conn.pending == 0


async def test_send_and_send_many_share_one_order(conn: RespConnection) -> None:
    replies = Replies()
    conn.send(command("RPUSH", "list", "a"), replies.handler(0))
    conn.send_many(
        command("RPUSH", "list", "b") + command("LRANGE", "list", 0, -1),
        [replies.handler(1), replies.handler(2)],
    )
    conn.send(command("LLEN", "list"), replies.handler(3))
    await replies.wait(4)
    assert replies.got == {0: 1, 1: 2, 2: [b"a", b"b"], 3: 2}


async def test_an_error_reply_goes_to_its_own_handler(conn: RespConnection) -> None:
    replies = Replies()
    conn.send_many(
        command("SET", "string", "x")
        + command("LPUSH", "string", "y")  # WRONGTYPE
        + command("GET", "string")
        + command("NOSUCHCOMMAND")
        + command("PING"),
        [replies.handler(i) for i in range(5)],
    )
    await replies.wait(5)
    assert replies.got[0] == b"OK"
    assert isinstance(replies.got[1], ReplyError)
    assert str(replies.got[1]).startswith("WRONGTYPE")
    assert replies.got[2] == b"x"
    assert isinstance(replies.got[3], ReplyError)
    assert "unknown command" in str(replies.got[3])
    assert replies.got[4] == b"PONG"


async def test_call_raises_an_error_reply(conn: RespConnection) -> None:
    await conn.call("SET", "string", "x")
    with pytest.raises(ReplyError, match="WRONGTYPE"):
        await conn.call("LPUSH", "string", "y")
    assert await conn.call("PING") == b"PONG"  # the connection goes on


async def test_reply_future_settles_once() -> None:
    future, handler = reply_future()
    handler(b"first")
    handler(ReplyError("ERR later"))  # ignored: the future is done
    assert await future == b"first"
    failing, handler = reply_future()
    handler(ReplyError("ERR boom"))
    with pytest.raises(ReplyError, match="boom"):
        await failing


# -- pushes ------------------------------------------------------------------------------


class Pushes:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[Any]] = asyncio.Queue()

    def __call__(self, push: list[Any]) -> None:
        self.queue.put_nowait(push)

    async def next(self) -> list[Any]:
        async with asyncio.timeout(TIMEOUT):
            return await self.queue.get()


async def test_pushes_go_to_on_push_and_replies_to_handlers(
    redis: RedisServer, conn: RespConnection
) -> None:
    pushes = Pushes()
    sub = await open_connection(HOST, redis.port, Lost(), pushes)
    try:
        sub.subscribe_write(command("SUBSCRIBE", "ch1", "ch2"))
        assert await pushes.next() == [b"subscribe", b"ch1", 1]
        assert await pushes.next() == [b"subscribe", b"ch2", 2]
        assert sub.pending == 0  # a subscription has no reply handler
        assert await conn.call("PUBLISH", "ch2", b"hello\n") == 1
        assert await conn.call("PUBLISH", "ch1", b"") == 1
        assert await pushes.next() == [b"message", b"ch2", b"hello\n"]
        assert await pushes.next() == [b"message", b"ch1", b""]
        # A command on a subscribed connection still gets its reply (not a push).
        assert await sub.call("PING") == [b"pong", b""]
        sub.subscribe_write(command("UNSUBSCRIBE", "ch1"))
        assert await pushes.next() == [b"unsubscribe", b"ch1", 1]
        assert pushes.queue.empty()
    finally:
        sub.close()


async def test_sharded_pushes(redis: RedisServer, conn: RespConnection) -> None:
    pushes = Pushes()
    sub = await open_connection(HOST, redis.port, Lost(), pushes)
    try:
        sub.subscribe_write(command("SSUBSCRIBE", "{t}c"))
        assert await pushes.next() == [b"ssubscribe", b"{t}c", 1]
        assert await conn.call("SPUBLISH", "{t}c", b"M1 2\nx") == 1
        assert await pushes.next() == [b"smessage", b"{t}c", b"M1 2\nx"]
        sub.subscribe_write(command("SUNSUBSCRIBE", "{t}c"))
        assert await pushes.next() == [b"sunsubscribe", b"{t}c", 0]
    finally:
        sub.close()


async def test_a_refused_subscription_reaches_on_push_as_an_error(redis: RedisServer) -> None:
    pushes = Pushes()
    sub = await open_connection(HOST, redis.port, Lost(), pushes)
    try:
        sub.subscribe_write(command("SUBSCRIBE"))  # no channel: an error, no handler
        (error,) = await pushes.next()
        assert isinstance(error, ReplyError)
        assert "wrong number of arguments" in str(error)
    finally:
        sub.close()


# -- losing the connection ---------------------------------------------------------------


async def test_a_lost_connection_fails_every_pending_handler(redis: RedisServer) -> None:
    lost = Lost()
    connection = await open_connection(HOST, redis.port, lost)
    own_id = await connection.call("CLIENT", "ID")
    replies = Replies()
    # BLPOP on an empty list blocks: the commands behind it wait unanswered.
    connection.send_many(
        command("BLPOP", "never", 0) + command("PING") + command("ECHO", "x"),
        [replies.handler(i) for i in range(3)],
    )
    assert connection.pending == 3
    assert redis.command("CLIENT", "KILL", "ID", own_id) == 1
    await until(lambda: bool(lost.calls), "on_lost")
    assert lost.calls == [(connection, None)]  # closed by the server: no OS error
    assert len(replies.got) == 3
    for reply in replies.got.values():
        assert isinstance(reply, ConnectionError)
        assert "lost" in str(reply)
    assert connection.closed and connection.pending == 0
    # Writing after the loss fails at once, to the handler.
    late = Replies()
    connection.send(command("PING"), late.handler(0))
    connection.send_many(command("PING"), [late.handler(1)])
    assert all(isinstance(reply, ConnectionError) for reply in late.got.values())
    assert len(late.got) == 2
    with pytest.raises(ConnectionError):
        await connection.call("PING")


async def test_closing_reports_the_loss_too(redis: RedisServer) -> None:
    lost = Lost()
    connection = await open_connection(HOST, redis.port, lost)
    connection.close()
    await until(lambda: bool(lost.calls), "on_lost")
    assert lost.calls == [(connection, None)]
    assert connection.closed and connection.write_buffer == 0


# -- opening -----------------------------------------------------------------------------


@pytest.fixture
def locked() -> Iterator[RedisServer]:
    """A server of its own with a password and an ACL user (set after it started,
    since the helper's readiness check sends PING without AUTH)."""
    srv = RedisServer.launch()
    try:
        srv.command("ACL", "SETUSER", "alice", "on", ">alicepw", "~*", "&*", "+@all")
        srv.command("CONFIG", "SET", "requirepass", "s3cret")
        yield srv
    finally:
        srv.close(kill=True)


async def test_open_with_the_right_password(locked: RedisServer) -> None:
    connection = await open_connection(HOST, locked.port, Lost(), password="s3cret")
    try:
        assert await connection.call("ACL", "WHOAMI") == b"default"
    finally:
        connection.close()


async def test_open_with_a_user_and_password(locked: RedisServer) -> None:
    connection = await open_connection(
        HOST, locked.port, Lost(), username="alice", password="alicepw"
    )
    try:
        assert await connection.call("ACL", "WHOAMI") == b"alice"
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("username", "password", "error"),
    [
        (None, "wrong", "WRONGPASS"),
        ("alice", "s3cret", "WRONGPASS"),
        ("nobody", "alicepw", "WRONGPASS"),
        (None, None, "NOAUTH"),  # no AUTH: the PING that ends the opening is refused
    ],
)
async def test_open_refused(
    locked: RedisServer, username: str | None, password: str | None, error: str
) -> None:
    lost = Lost()
    with pytest.raises(ReplyError, match=error):
        await open_connection(HOST, locked.port, lost, username=username, password=password)
    # The half-open connection was dropped, not left behind.
    await until(lambda: bool(lost.calls), "the refused connection to close")
    assert lost.calls[0][0].closed


async def test_open_selects_the_database(redis: RedisServer) -> None:
    connection = await open_connection(HOST, redis.port, Lost(), db=3)
    try:
        assert await connection.call("SET", "where", "three") == b"OK"
        assert b" db=3 " in await connection.call("CLIENT", "INFO")
    finally:
        connection.close()
    with redis.client(db=3) as three, redis.client() as zero:
        assert three.get("where") == "three"
        assert zero.get("where") is None


async def test_open_a_database_that_does_not_exist(redis: RedisServer) -> None:
    with pytest.raises(ReplyError, match="DB index is out of range"):
        await open_connection(HOST, redis.port, Lost(), db=100000)


async def test_open_nothing_listening() -> None:
    with pytest.raises(OSError):
        await open_connection(HOST, free_port(), Lost())


async def test_open_times_out_when_the_server_never_answers() -> None:
    # A listener that accepts and never writes: the opening PING gets no answer.
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(TimeoutError):
            await open_connection(HOST, port, Lost(), timeout=0.2)
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
