"""Random runs of sessions sharing one ServerStats, with what they were fed and written
(the counters' test and the turn-order test both play them)."""

from __future__ import annotations

import random
from collections.abc import Callable

from roomchat.protocol import Hello, JoinRoom, LeaveRoom, Quit, RoomDetail, SendMessage, encode
from roomchat.server.bus import MemoryBus
from roomchat.server.core.context import SessionContext
from roomchat.server.core.directory import Directory
from roomchat.server.core.names import NameRegistry
from roomchat.server.core.outbox import Outbox
from roomchat.server.core.session import Session
from roomchat.server.core.stats import ServerStats
from tests.session_harness import BusWith, FakeConnection, LatePresence

__all__ = ["ROOMS", "Run"]

ROOMS = ("a", "b", "c")
ROOM_EVENTS = (b'"_et":"user_message"', b'"_et":"room_participation"')


class Run:
    """Sessions sharing one ServerStats, with what they were fed and written."""

    def __init__(self, late: LatePresence | None = None) -> None:
        self.stats = ServerStats()
        self.scheduled: list[Callable[[], None]] = []
        self.outbox = Outbox(self.scheduled.append, self.stats)
        self.late = late  # joins answered when the run says so
        bus = MemoryBus() if late is None else BusWith(late)
        details = [RoomDetail(name, "") for name in ROOMS]
        self.rooms = Directory(details, bus, self.outbox, self.stats)
        self.context = SessionContext(
            rooms=self.rooms, stats=self.stats, names=NameRegistry(), max_line_length=1 << 20
        )
        self.sessions: list[Session] = []
        self.output: list[list[bytes]] = []  # what each session was written, in order
        self.fed = self.written = self.writes = self.sends = self.room_events = 0

    def session(self, v2: bool) -> Session:
        n = len(self.sessions)
        output: list[bytes] = []
        self.output.append(output)

        def write(data: bytes) -> None:
            output.append(data)
            self._write(data)

        mailbox = self.outbox.open(f"user{n % 5}", f"s{n}", write)
        session = Session(self.context, mailbox, FakeConnection([]), name=f"s{n}")
        self.sessions.append(session)
        session.start(self.rooms.details)
        if v2:
            self.feed(session, encode(Hello(2)))
        return session

    def _write(self, data: bytes) -> None:
        self.writes += 1
        self.written += len(data)
        self.room_events += sum(data.count(tag) for tag in ROOM_EVENTS)

    def feed(self, session: Session, data: bytes) -> None:
        self.fed += len(data)
        session.receive_data(data)

    def turn(self) -> None:
        while self.scheduled:
            self.scheduled.pop(0)()

    def play(self, seed: int, steps: int, *, cut_off: bool) -> None:
        rnd = random.Random(seed)
        late = self.late
        quitting: set[Session] = set()
        for _ in range(steps):
            live = [session for session in self.sessions if not session.closed]
            roll = rnd.random()
            if roll < 0.08 or not live:
                self.session(v2=rnd.random() < 0.5)
            elif roll < 0.28:
                self.feed(rnd.choice(live), encode(JoinRoom(rnd.choice(ROOMS))))
            elif roll < 0.36:
                self.feed(rnd.choice(live), encode(LeaveRoom(rnd.choice(ROOMS))))
            elif roll < 0.9:
                count = rnd.choice([1, 1, 1, 3, 20])
                content = "x" * rnd.choice([5, 50, 2000, 60000])  # 20 x 60 kB > FLUSH_AT
                message = encode(SendMessage(rnd.choice(ROOMS), content))
                sender = rnd.choice(live)
                if sender not in quitting:  # (else it waits behind a join and a quit)
                    self.sends += count
                self.feed(sender, message * count)
            elif roll < 0.93:
                # Not closed yet if a join is in progress: commands fed after the quit
                # are never carried out.
                quitting.add(leaver := rnd.choice(live))
                self.feed(leaver, encode(Quit()))
            elif cut_off:
                session = rnd.choice(live)
                if rnd.random() < 0.5:
                    session.connection_lost()
                else:  # a slow consumer: what is queued for it is dropped
                    session.mailbox.close()
                    session.abort("slow consumer")
            if late is not None and late.joins and rnd.random() < 0.5:
                join = late.joins.pop(rnd.randrange(len(late.joins)))
                join.answer(rnd.choice(["reply-first", "marker-first"]))
            if rnd.random() < 0.7:  # else the next step is in the same loop turn
                self.turn()
        while late is not None and late.joins:
            late.joins.pop().answer()
        self.turn()
