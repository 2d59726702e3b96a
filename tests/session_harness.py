"""Drive :class:`roomchat.server.core.session.Session` without sockets or an event loop.

- :class:`World`: a Directory on the in-process bus (or any Presence), and a real
  :class:`~roomchat.server.core.outbox.Outbox` whose ``call_soon`` only queues the callback:
  :meth:`World.turn` runs what was queued, i.e. ends the loop turn (the outbox flush).
- :class:`Client`: one session with a real Mailbox whose writes are recorded, and a
  :class:`FakeConnection` recording what the session asked of its connection. Writes and
  connection calls go into one timeline (:attr:`Client.timeline`), so a test can say
  "the output was written, then the connection closed".
- :class:`LatePresence`: a presence that answers joins only when the test says so, as
  the Redis one does after a round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from roomchat.protocol import (
    EVENT_TYPES,
    Command,
    Event,
    EventDecoder,
    RoomDetail,
    encode,
    joined_event,
    left_event,
)
from roomchat.server.bus import MemoryBus
from roomchat.server.core.context import SessionContext
from roomchat.server.core.directory import Directory
from roomchat.server.core.names import NameRegistry
from roomchat.server.core.outbox import Outbox
from roomchat.server.core.ports import Presence
from roomchat.server.core.rooms import ChatRoom, Member
from roomchat.server.core.session import Session
from roomchat.server.core.stats import ServerStats

DETAILS = (
    RoomDetail("general", "Anything goes"),
    RoomDetail("random", "Off-topic"),
    RoomDetail("python", "asyncio and friends"),
)
ROOMS = tuple(detail.name for detail in DETAILS)
#: The sessions' line limit: room for the 5000-deep nesting of the bad-line cases.
MAX_LINE = 8192

#: What a session asked of its connection: ("pause_reading",), ("close", reason), ...
Call = tuple[str, ...]


class FakeConnection:
    """The narrow Connection a session talks to, recording every call."""

    def __init__(self, timeline: list[bytes | Call]) -> None:
        self._timeline = timeline
        self.calls: list[Call] = []

    def _record(self, *call: str) -> None:
        self.calls.append(call)
        self._timeline.append(call)

    def pause_reading(self) -> None:
        self._record("pause_reading")

    def resume_reading(self) -> None:
        self._record("resume_reading")

    def close(self, reason: str) -> None:
        self._record("close", reason)

    def abort(self, reason: str) -> None:
        self._record("abort", reason)

    @property
    def paused(self) -> bool:
        """Whether reading is paused now (the last pause/resume call was a pause)."""
        flow = [call[0] for call in self.calls if call[0] in ("pause_reading", "resume_reading")]
        return bool(flow) and flow[-1] == "pause_reading"

    @property
    def ended(self) -> list[Call]:
        """The close and abort calls."""
        return [call for call in self.calls if call[0] in ("close", "abort")]


class World:
    """Rooms, a bus, a presence and an outbox whose loop turns the test ends by hand."""

    def __init__(
        self,
        presence: Presence | None = None,
        *,
        window: float = 0.0,
        details: Iterable[RoomDetail] = DETAILS,
        max_line_length: int = MAX_LINE,
    ) -> None:
        self.max_line_length = max_line_length
        self.scheduled: list[Callable[[], None]] = []
        self.stats = ServerStats()
        self.outbox = Outbox(self.scheduled.append, self.stats, window)
        bus = MemoryBus() if presence is None else BusWith(presence)
        self.presence = bus.presence
        self.rooms = Directory(details, bus, self.outbox, self.stats)
        self.context = SessionContext(
            rooms=self.rooms,
            stats=self.stats,
            names=NameRegistry(),
            max_line_length=max_line_length,
        )
        self._count = 0

    def room(self, name: str) -> ChatRoom:
        return self.rooms.rooms[name]

    def turn(self) -> None:
        """End the loop turn: run what was scheduled (the outbox's flush)."""
        scheduled = self.scheduled  # the outbox holds its append: keep the same list
        while scheduled:
            scheduled.pop(0)()

    def client(self, user_id: str, key: str | None = None, *, login: bool = True) -> Client:
        self._count += 1
        client = Client(self, user_id, key or f"session-{self._count}")
        if login:  # written, and taken as read: events() starts after it
            client.session.start(self.rooms.details)
            self.turn()
            client.new_lines()
        return client


class Client:
    """One session under test, with its recorded output."""

    def __init__(self, world: World, user_id: str, key: str) -> None:
        self.world = world
        self.timeline: list[bytes | Call] = []
        self.writes: list[bytes] = []
        self.connection = FakeConnection(self.timeline)
        self.mailbox = world.outbox.open(user_id, key, self._write)
        self.session = Session(world.context, self.mailbox, self.connection, name=key)
        self._read = 0  # lines of `lines()` already handed out by new_lines()

    def __repr__(self) -> str:
        return f"<client {self.mailbox.key} user {self.user_id}>"

    @property
    def user_id(self) -> str:
        return self.session.user_id

    @property
    def key(self) -> str:
        return self.session.session_id

    def _write(self, data: bytes) -> None:
        self.writes.append(data)
        self.timeline.append(data)

    # -- input ---------------------------------------------------------------------------
    def feed(self, *items: Command | bytes, turn: bool = True) -> None:
        """Hand the session commands (encoded, CRLF) and raw bytes, as one packet; then
        end the turn unless told not to."""
        self.session.receive_data(b"".join(_wire(item) for item in items))
        if turn:
            self.world.turn()

    # -- output --------------------------------------------------------------------------
    def lines(self) -> list[bytes]:
        """Every line written to this session so far (written, not merely queued)."""
        data = b"".join(self.writes)
        assert not data or data.endswith(b"\r\n"), data
        return [line + b"\r\n" for line in data.split(b"\r\n")[:-1]]

    def new_lines(self) -> list[bytes]:
        """The lines written since the last call."""
        lines = self.lines()
        fresh, self._read = lines[self._read :], len(lines)
        return fresh

    def events(self) -> list[Event]:
        """The events written since the last call to events() or new_lines(), decoded."""
        out: list[Event] = []
        for line in self.new_lines():
            decoded = EventDecoder().feed(line)
            assert len(decoded) == 1 and isinstance(decoded[0], EVENT_TYPES), decoded
            out.append(decoded[0])
        return out


def _wire(item: Command | bytes) -> bytes:
    return item if isinstance(item, bytes) else encode(item)


# --- a presence that answers later ------------------------------------------------------


@dataclass
class PendingJoin:
    """A join the presence registered and has not answered: the two facts to hand over."""

    room: ChatRoom
    key: str
    users: tuple[str, ...]
    announcement: bytes | None

    def reply(self) -> None:
        self.room.join_reply(self.key, self.users)

    def marker(self) -> None:
        self.room.join_marker(self.key, self.announcement)

    def answer(self, order: str = "reply-first") -> None:
        if order == "reply-first":
            self.reply()
            self.marker()
        else:
            assert order == "marker-first", order
            self.marker()
            self.reply()


class BusWith(MemoryBus):
    """The in-process bus with another presence (LatePresence: joins answered when the
    test says, as over Redis)."""

    def __init__(self, presence: Presence) -> None:
        super().__init__()
        self._presence = presence


@dataclass
class LatePresence:
    """The user registry, updated at once (as Redis' join script does), with the answer
    (reply and marker) left to the test. ``leave`` posts "left" at once, unless
    ``hold_left`` is set: then the test posts it (``release_left``), e.g. after a late
    marker, because on a real bus a join's marker is ahead of the same session's leave
    in the room's stream."""

    registry: dict[ChatRoom, dict[str, int]] = field(default_factory=dict)
    joins: list[PendingJoin] = field(default_factory=list)
    leaves: list[tuple[str, str]] = field(default_factory=list)  # (room, session key)
    hold_left: bool = False
    held: list[tuple[ChatRoom, bytes]] = field(default_factory=list)

    def join(self, room: ChatRoom, member: Member) -> None:
        users = self.registry.setdefault(room, {})
        sessions = users.get(member.user_id, 0)
        users[member.user_id] = sessions + 1
        announcement = None if sessions else joined_event(room.name, member.user_id)
        self.joins.append(PendingJoin(room, member.key, tuple(users), announcement))

    def leave(self, room: ChatRoom, member: Member) -> None:
        self.leaves.append((room.name, member.key))
        users = self.registry.get(room, {})
        if member.user_id not in users:
            return
        users[member.user_id] -= 1
        if not users[member.user_id]:
            del users[member.user_id]
            event = left_event(room.name, member.user_id)
            if self.hold_left:
                self.held.append((room, event))
            else:
                room.announce(event)

    def release_left(self) -> None:
        held, self.held = self.held, []
        for room, event in held:
            room.announce(event)

    def users(self, room: ChatRoom) -> tuple[str, ...]:
        return tuple(self.registry.get(room, {}))

    def pop(self) -> PendingJoin:
        """The only join waiting for an answer."""
        assert len(self.joins) == 1, self.joins
        return self.joins.pop()
