"""A v2 session that survives connection loss: :class:`ReconnectingClient`, and the
catch-up rules it follows, :class:`CatchUp`, for any client to reuse."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from types import TracebackType

from roomchat.client.connection import ChatClient, EventStream, connect
from roomchat.client.protocol import (
    DEFAULT_CLIENT_MAX_LINE_LENGTH,
    ConnectionClosed,
    HelloRefused,
    ProtocolViolation,
)
from roomchat.protocol import (
    Error,
    Event,
    History,
    MessageDeleted,
    MessageEdited,
    Shutdown,
    UserJoinedRoom,
    UserMessage,
)

__all__ = [
    "CatchUp",
    "ClientEvent",
    "Disconnected",
    "HistoryEnd",
    "HistoryStart",
    "MissedMessages",
    "Reconnected",
    "ReconnectingClient",
]


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


@dataclass(frozen=True, slots=True)
class HistoryStart:
    """The messages of a room's v2 ``history`` follow (as user_message events): the
    room's past on a first join, or (``catch_up``) what was missed while disconnected.
    Only with ``history_markers=True`` (:class:`CatchUp`, :class:`ReconnectingClient`)."""

    room: str
    catch_up: bool


@dataclass(frozen=True, slots=True)
class HistoryEnd:
    """The messages of the room's ``history`` are over; live messages follow."""

    room: str


#: What a :class:`ReconnectingClient` delivers: the server's events and its own.
ClientEvent = Event | Disconnected | Reconnected | MissedMessages | HistoryStart | HistoryEnd

#: Codes of a refused hello that trying again will not cure.
_FATAL_HELLO = frozenset({"name_taken", "name_invalid", "not_authorised"})


class CatchUp:
    """The catch-up rules of docs/protocol.md, for every room of one user, sans-I/O.

    It keeps :attr:`last_seq` (the highest sequence number delivered per room) and
    :attr:`epochs` (the epoch of each room's numbering, a ``history``'s ``e``):

    - :meth:`accept` a live ``user_message`` only if its ``q`` is above it (else it was
      delivered already, from a history);
    - :meth:`replay` a ``history`` as the ``user_message`` events whose ``q`` is above
      it, then raise it to the history's ``q``; a gap, or a restarted count (a ``q``
      below it, or an epoch other than the one it had: the server lost its history, so
      everything is new) comes first as :class:`MissedMessages`. A message of the
      history that was edited is followed by a ``message_edited`` (its ``ts``: the
      edit's time; its ``u``: the author, the history does not say who edited), one
      deleted by a ``message_deleted``: the state the history shows;
    - re-join with ``after`` = :meth:`after` and ``e`` = :meth:`epoch` (v2), or report
      :meth:`missed` (v1, which cannot catch up).

    With ``history_markers``, a replay is framed by :class:`HistoryStart` and
    :class:`HistoryEnd`, so that a UI can show the past apart from live messages (the
    TUI does). The web client (``web/client.js``) mirrors these rules.
    """

    __slots__ = ("epochs", "history_markers", "last_seq")

    def __init__(self, *, history_markers: bool = False) -> None:
        self.history_markers = history_markers
        self.last_seq: dict[str, int] = {}
        self.epochs: dict[str, str] = {}

    def accept(self, message: UserMessage) -> bool:
        """Whether to deliver this live message (and if so, it is now the room's last)."""
        seq = message.seq
        if seq is None:  # v1: no sequence numbers, nothing to compare
            return True
        if seq <= self.last_seq.get(message.room, -1):
            return False
        self.last_seq[message.room] = seq
        return True

    def replay(self, history: History) -> list[ClientEvent]:
        """The events to deliver for ``history``, in order."""
        room = history.room
        last = self.last_seq.get(room)
        known_epoch = self.epochs.get(room)
        if history.epoch is not None:
            self.epochs[room] = history.epoch
        out: list[ClientEvent] = []
        if self.history_markers:
            out.append(HistoryStart(room, catch_up=last is not None))
        restarted = history.seq < (-1 if last is None else last) or (
            known_epoch is not None and history.epoch is not None and history.epoch != known_epoch
        )
        if last is not None and restarted:
            out.append(MissedMessages(room, last))
            last = None
        elif history.gap:
            out.append(MissedMessages(room, last))
        floor = -1 if last is None else last
        for message in history.messages:
            if message.seq > floor:
                floor = message.seq
                out.append(
                    UserMessage(
                        room, message.user_id, message.content, message.seq, message.timestamp
                    )
                )
                changed = message.edited if message.edited is not None else message.timestamp
                if message.deleted:
                    out.append(MessageDeleted(room, message.seq, message.user_id, changed))
                elif message.edited is not None:
                    out.append(
                        MessageEdited(room, message.seq, message.user_id, message.content, changed)
                    )
        self.last_seq[room] = max(floor, history.seq)
        if self.history_markers:
            out.append(HistoryEnd(room))
        return out

    def after(self, room: str) -> int | None:
        """The ``after`` of a re-join of ``room``: None if nothing was delivered yet."""
        return self.last_seq.get(room)

    def epoch(self, room: str) -> str | None:
        """The ``e`` of a re-join of ``room``: the epoch its :meth:`after` counts in."""
        return self.epochs.get(room)

    def missed(self, room: str) -> MissedMessages:
        """What a re-join that cannot catch up (a v1 server) loses: everything since."""
        return MissedMessages(room, self.last_seq.get(room))

    def forget(self, room: str) -> None:
        """The room was left: a later join starts afresh."""
        self.last_seq.pop(room, None)
        self.epochs.pop(room, None)


class ReconnectingClient(EventStream[ClientEvent]):
    """A v2 session that survives connection loss.

    It connects with ``hello``; when the connection is lost it reconnects with
    exponential backoff and full jitter (or after a ``shutdown`` notice's
    ``reconnect_ms``), says ``hello`` with the same user id and the latest token,
    re-joins its rooms with ``after`` = the last sequence number it saw in each (and
    ``e`` = the epoch that number counts in, so that the server can say when the
    room's numbering restarted), and
    turns the ``history`` answers into the ``user_message`` events it missed, skipping
    any it already delivered (the rules are :attr:`catch_up`'s, a :class:`CatchUp`).
    Every ``user_message`` of a room is thus delivered once, in sequence order, across
    reconnects; :class:`MissedMessages` says where that could not be kept. ``history``
    events themselves are not delivered (their messages are); with
    ``history_markers=True`` each is framed by :class:`HistoryStart` and
    :class:`HistoryEnd` instead. Pages of older history (:meth:`history`) are returned
    to the caller and change nothing of the catch-up.

    The event stream (``async for`` / :meth:`next_event`) carries the server's events
    and :class:`Disconnected`, :class:`Reconnected`, :class:`MissedMessages` (and the
    markers). Commands sent while disconnected raise ConnectionClosed (nothing is queued
    or re-sent).
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
        history_markers: bool = False,
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
        self.catch_up = CatchUp(history_markers=history_markers)
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
    def last_seq(self) -> dict[str, int]:
        """The highest sequence number delivered per room (:attr:`catch_up`'s)."""
        return self.catch_up.last_seq

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
        self.catch_up.forget(room)
        await self._current().leave(room)

    async def send(self, room: str, content: str) -> None:
        await self._current().send(room, content)

    # -- the lasting history (v2: ChatClient's) -------------------------------------------
    @property
    def epochs(self) -> dict[str, str]:
        """The epoch of each room's numbering, from its latest ``history``."""
        return self.catch_up.epochs

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
        """A page of the room's stored history (:meth:`ChatClient.history`): returned,
        not delivered, and its messages are not caught up on."""
        return await self._current().history(room, before, after, limit, epoch, timeout=timeout)

    async def edit_message(self, room: str, q: int, content: str) -> None:
        await self._current().edit_message(room, q, content)

    async def delete_message(self, room: str, q: int) -> None:
        await self._current().delete_message(room, q)

    async def mark_read(self, room: str, q: int) -> None:
        await self._current().mark_read(room, q)

    async def typing(self, room: str) -> None:
        await self._current().typing(room)

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

    def _emit(self, event: ClientEvent) -> None:
        self._events.append(event)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _on_event(self, event: Event) -> None:
        if type(event) is UserMessage:
            if not self.catch_up.accept(event):
                return
        elif type(event) is History and event.id is None:  # (with an id: a page's answer)
            self._events.extend(self.catch_up.replay(event))
            self._wake()
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
            if client.version < 2:
                self._emit(self.catch_up.missed(room))
                await client.join(room)
            else:
                ident = client.new_id()
                self._join_ids[ident] = room
                await client.join(
                    room,
                    after=self.catch_up.after(room),
                    id=ident,
                    epoch=self.catch_up.epoch(room),
                )

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
