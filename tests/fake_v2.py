"""A tiny fake server speaking just enough protocol v2 for the client tests (the real
server's v2 comes later): login, hello/welcome, join with history or catch-up,
user_message with sequence numbers, ping/pong. Not a reference implementation."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from roomchat.protocol import (
    FEATURES,
    BadLine,
    Command,
    CommandDecoder,
    Error,
    Event,
    Hello,
    History,
    HistoryMessage,
    JoinRoom,
    LeaveRoom,
    LoginSuccessful,
    Ping,
    Quit,
    RoomDetail,
    RoomListing,
    RoomParticipation,
    Rooms,
    SendMessage,
    ServerPong,
    UserJoinedRoom,
    UserMessage,
    Welcome,
    encode,
    v1_of,
)

ROOMS = (RoomDetail("general", "Anything goes"), RoomDetail("other", "Elsewhere"))
TS = 1764355200000


@dataclass(eq=False)
class FakeSession:
    writer: asyncio.StreamWriter
    user: str
    v2: bool = False
    rooms: set[str] = field(default_factory=set)
    commands: list[Command | BadLine] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)

    def send(self, event: Event) -> None:
        line = encode(event)
        if not self.v2 and type(event) in (UserMessage, RoomParticipation):
            line = v1_of(line)
        if not self.writer.is_closing():
            self.writer.write(line)


class FakeV2Server:
    def __init__(self, *, heartbeat: int = 30, history_limit: int = 100) -> None:
        self.speaks_v2 = True
        self.heartbeat = heartbeat
        self.history_limit = history_limit
        self.ignore_after = False  # answer `after` with the whole history (dedup test)
        self.refuse: dict[str, str] = {}  # name -> error code
        self.welcome_delay = 0.0
        self.answer_pings = True
        #: (code, msg): answer every send_message with this error too (to count errors)
        self.error_on_send: tuple[str, str] | None = None
        self.sessions: list[FakeSession] = []
        self.all_sessions: list[FakeSession] = []
        self.log: dict[str, list[HistoryMessage]] = {room.name: [] for room in ROOMS}
        self._users = 0
        self._server: asyncio.Server | None = None
        self.connected = asyncio.Event()

    async def __aenter__(self) -> FakeV2Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.drop_all()
        assert self._server is not None
        self._server.close()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    def seq(self, room: str) -> int:
        return self.log[room][-1].seq if self.log[room] else 0

    def post(self, room: str, user: str, content: str) -> int:
        seq = self.seq(room) + 1
        self.log[room].append(HistoryMessage(user, content, seq, TS + seq))
        for session in self.sessions:
            if room in session.rooms:
                session.send(UserMessage(room, user, content, seq, TS + seq))
        return seq

    def broadcast(self, event: Event) -> None:
        """Send ``event`` to every connected v2 session (an error, a shutdown notice...)."""
        for session in self.sessions:
            if session.v2:
                session.send(event)

    def drop_all(self) -> None:
        """Every connection is cut, at once (no one is in any room any more)."""
        for session in self.sessions:
            session.rooms.clear()
            transport = session.writer.transport
            transport.abort()
        self.sessions.clear()

    def hellos(self) -> list[Hello]:
        return [c for s in self.all_sessions for c in s.commands if isinstance(c, Hello)]

    def joins(self) -> list[JoinRoom]:
        return [c for s in self.all_sessions for c in s.commands if isinstance(c, JoinRoom)]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._users += 1
        session = FakeSession(writer, f"rnd{self._users:02d}")
        self.sessions.append(session)
        self.all_sessions.append(session)
        self.connected.set()
        decoder = CommandDecoder()
        writer.write(encode(LoginSuccessful(f"session-{self._users}", session.user, ROOMS)))
        first = True
        try:
            while not reader.at_eof():
                line = await reader.readline()
                if not line:
                    break
                session.raw.append(line)
                for item in decoder.feed(line):
                    if isinstance(item, BadLine | Command):
                        session.commands.append(item)
                        if await self._command(session, item, first, decoder):
                            return
                    first = False
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            if session in self.sessions:
                self.sessions.remove(session)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _command(
        self, session: FakeSession, item: Command | BadLine, first: bool, decoder: CommandDecoder
    ) -> bool:
        """Carry out one command; True to close."""
        if isinstance(item, Hello):
            if not (first and self.speaks_v2):
                return False
            name = item.name or session.user
            if name in self.refuse:
                session.v2 = True
                session.send(Error(self.refuse[name], "refused", "hello", item.id))
                await session.writer.drain()
                return True
            if self.welcome_delay:
                await asyncio.sleep(self.welcome_delay)
            session.user = name
            session.v2 = True
            decoder.upgrade()
            session.send(Welcome(2, "s", name, f"tok-{name}", FEATURES, self.heartbeat, item.id))
            session.send(Rooms(tuple(RoomListing(r.name, r.description) for r in ROOMS)))
        elif isinstance(item, JoinRoom):
            self._join(session, item)
        elif isinstance(item, SendMessage):
            if item.room in session.rooms:
                self.post(item.room, session.user, item.content)
            if self.error_on_send is not None and session.v2:
                code, msg = self.error_on_send
                session.send(Error(code, msg, "send_message", item.id))
        elif isinstance(item, LeaveRoom):
            session.rooms.discard(item.room)
        elif isinstance(item, Ping):
            if session.v2 and self.answer_pings:
                session.send(ServerPong(item.id))
        elif isinstance(item, Quit):
            return True
        return False

    def _join(self, session: FakeSession, item: JoinRoom) -> None:
        room = item.room
        if room not in self.log:
            if session.v2:
                session.send(Error("unknown_room", f"no room named {room!r}", "join_room", item.id))
            return
        session.rooms.add(room)
        members = sorted({s.user for s in self.sessions if room in s.rooms})
        session.send(UserJoinedRoom(room, tuple(members)))
        if session.v2:
            held = self.log[room][-self.history_limit :]
            seq = self.seq(room)
            gap = False
            if item.after is not None and item.after > seq:  # the count restarted
                messages, gap = held, True
            elif item.after is not None and not self.ignore_after:
                messages = [m for m in held if m.seq > item.after]
                gap = bool(held) and held[0].seq > item.after + 1
            elif item.history or (item.after is not None and self.ignore_after):
                messages = held[-(item.history or len(held)) :]
            else:
                messages = []
            session.send(History(room, tuple(messages), seq, gap))
        for other in self.sessions:
            if room in other.rooms:
                other.send(RoomParticipation(room, session.user, "joined", TS))
