"""A thin Redis connection for the bus's hot path: RESP out, hiredis in, no task per read.

Why not redis-py's client here (it is used for URLs and key slots): measured on this
machine (docs/scaling.md), publishing through a redis-py pipeline costs 18 µs of CPU per
message even in batches of 500 (133 µs for a batch of one), and reading with
``PubSub.get_message`` another 19 µs; writing RESP ourselves and parsing with hiredis'
C reader costs well under 1 µs per publish and about 4 µs per message received. The
bus publishes and receives once per chat message, so that difference is the bus's cost.
It also lets the bus see a lost connection the moment it happens (``connection_lost``),
where redis-py would retry and re-subscribe behind our back (the silent failure of
python-socketio #1581).

A :class:`RespConnection` is an ``asyncio.Protocol``: commands are written as RESP bytes
(many per ``write``), each with a reply handler; replies are matched to handlers in order.
On a subscriber connection, pushes (``message``, ``smessage``, subscription changes) go to
``on_push`` as they are parsed, straight from ``data_received``.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, cast

import hiredis

__all__ = [
    "PushHandler",
    "ReplyError",
    "ReplyHandler",
    "RespConnection",
    "command",
    "open_connection",
    "reply_future",
]

ReplyError = hiredis.ReplyError
#: Called with the reply (a ReplyError for "-ERR ..."), or ConnectionError if none came.
ReplyHandler = Callable[[Any], None]
#: Gets each push (a list); on a subscriber connection also ``[error]`` for a refused
#: (S)SUBSCRIBE, which has no reply handler of its own.
PushHandler = Callable[[list[Any]], None]

_PUSH_KINDS = frozenset(
    (b"message", b"smessage", b"subscribe", b"ssubscribe", b"unsubscribe", b"sunsubscribe")
)


def command(*args: bytes | str | int) -> bytes:
    """One command in RESP (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _ignore(reply: Any) -> None:
    pass


def reply_future() -> tuple[asyncio.Future[Any], ReplyHandler]:
    """A future and the reply handler that settles it (an error reply raises)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def done(reply: Any) -> None:
        if future.done():
            return
        if isinstance(reply, Exception):
            future.set_exception(reply)
        else:
            future.set_result(reply)

    return future, done


class RespConnection(asyncio.Protocol):
    """One connection to one Redis node."""

    def __init__(
        self,
        name: str,
        on_lost: Callable[[RespConnection, Exception | None], None],
        on_push: PushHandler | None = None,
    ) -> None:
        self.name = name
        self._on_lost = on_lost
        self._on_push = on_push
        self._reader = hiredis.Reader()
        self._handlers: collections.deque[ReplyHandler] = collections.deque()
        self.transport: asyncio.Transport | None = None
        self.fileno = -1
        self.closed = False

    def __repr__(self) -> str:
        return f"<redis connection {self.name}>"

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self.fileno = sock.fileno() if sock is not None else -1

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        handlers = self._handlers
        on_push = self._on_push
        while (reply := reader.gets()) is not False:
            if on_push is not None and type(reply) is list and reply and reply[0] in _PUSH_KINDS:
                on_push(reply)
            elif handlers:
                handlers.popleft()(reply)
            elif on_push is not None:  # e.g. an error answering a (S)SUBSCRIBE
                on_push([reply])

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        handlers, self._handlers = self._handlers, collections.deque()
        error = ConnectionError(f"connection to {self.name} lost: {exc or 'closed by the server'}")
        for handler in handlers:
            handler(error)
        self._on_lost(self, exc)

    # -- commands --------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Replies still expected."""
        return len(self._handlers)

    @property
    def write_buffer(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport is not None else 0

    def send(self, data: bytes, handler: ReplyHandler = _ignore) -> None:
        """Write one command (RESP bytes); ``handler`` gets its reply."""
        if self.transport is None:
            handler(ConnectionError(f"not connected to {self.name}"))
            return
        self._handlers.append(handler)
        self.transport.write(data)

    def send_many(self, data: bytes, handlers: list[ReplyHandler]) -> None:
        """Write several commands at once, one handler per command, in order."""
        if self.transport is None:
            error = ConnectionError(f"not connected to {self.name}")
            for handler in handlers:
                handler(error)
            return
        self._handlers.extend(handlers)
        self.transport.write(data)

    def subscribe_write(self, data: bytes) -> None:
        """Write (S)SUBSCRIBE/(S)UNSUBSCRIBE: answered by pushes, not replies."""
        if self.transport is not None:
            self.transport.write(data)

    async def call(self, *args: bytes | str | int) -> Any:
        """Send one command and wait for its reply; raises ReplyError or ConnectionError."""
        future, handler = reply_future()
        self.send(command(*args), handler)
        return await future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def open_connection(
    host: str,
    port: int,
    on_lost: Callable[[RespConnection, Exception | None], None],
    on_push: PushHandler | None = None,
    *,
    password: str | None = None,
    username: str | None = None,
    db: int = 0,
    timeout: float = 5.0,
) -> RespConnection:
    """Connect, authenticate and select the database; raises OSError/TimeoutError/ReplyError."""
    loop = asyncio.get_running_loop()
    name = f"{host}:{port}"
    async with asyncio.timeout(timeout):
        _, connection = await loop.create_connection(
            lambda: RespConnection(name, on_lost, on_push), host, port
        )
        try:
            if password is not None:
                auth = (username, password) if username else (password,)
                await connection.call("AUTH", *auth)
            if db:
                await connection.call("SELECT", db)
            await connection.call("PING")
        except BaseException:
            connection.abort()
            raise
    return connection
