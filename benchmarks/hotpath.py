"""The server's Python hot path alone, without sockets: CPU per message and per delivery.

Sessions (the real sans-I/O ``Session``) get their commands straight from pre-built
byte chunks, rooms fan out on the in-process bus, and the outbox "writes" into a
function that only counts bytes. What is measured is everything the server does in
Python per message and per recipient (decode, dispatch, encode once, fan out, flush),
none of the kernel's work. Used to compare hot-path changes; the load scenarios in
run.py measure the whole server.

    .venv/bin/python benchmarks/hotpath.py                 # every shape
    .venv/bin/python benchmarks/hotpath.py --shape small   # one
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from roomchat.protocol import RoomDetail, SendMessage, encode
from roomchat.server.bus import MemoryBus
from roomchat.server.core.context import SessionContext
from roomchat.server.core.directory import Directory
from roomchat.server.core.names import NameRegistry
from roomchat.server.core.outbox import Outbox
from roomchat.server.core.session import Session
from roomchat.server.core.stats import ServerStats


class _Quiet:
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self, reason: str) -> None: ...
    def abort(self, reason: str) -> None: ...


class World:
    def __init__(self, rooms: int) -> None:
        self.pending: list[Callable[[], None]] = []
        stats = ServerStats()
        self.outbox = Outbox(self.pending.append, stats)
        details = [RoomDetail(f"room-{i}", "") for i in range(rooms)]
        self.manager = Directory(details, MemoryBus(), self.outbox, stats)
        self.context = SessionContext(rooms=self.manager, stats=stats, names=NameRegistry())
        self.bytes_out = 0
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.writes += 1

    def session(self, n: int) -> Session:
        mailbox = self.outbox.open(f"u{n:04d}", f"s{n}", self.write)
        session = Session(self.context, mailbox, _Quiet(), name=f"s{n}")
        session.start(self.manager.details)
        return session

    def turn(self) -> None:
        pending, self.pending[:] = list(self.pending), []
        for callback in pending:
            callback()


def result(world: World, cpu: float, messages: int, deliveries: int) -> dict[str, float]:
    return {
        "messages": messages,
        "deliveries": deliveries,
        "ns_per_message": 1e9 * cpu / messages,
        "ns_per_delivery": 1e9 * cpu / deliveries,
        "writes": world.writes,
    }


def run(shape: str, members: int, rooms: int, per_read: int, reads: int) -> dict[str, float]:
    world = World(rooms)
    sessions = [world.session(n) for n in range(members * rooms)]
    for n, session in enumerate(sessions):
        line = b'{"_ct":"join_room","r":"room-%d"}\n' % (n % rooms)
        session.receive_data(line)
    world.turn()

    def chunk(n: int) -> bytes:
        room = f"room-{n % rooms}"
        content = "x" * 48
        return b"".join(encode(SendMessage(room, f"{i:06d} {content}")) for i in range(per_read))

    # In big rooms a tenth of the members send; in small rooms everyone does.
    step = 1 if members <= 2 else max(1, members // 10)
    senders = [(session, chunk(n)) for n, session in enumerate(sessions)][::step]
    sent = deliveries = 0
    start = time.process_time()
    for _ in range(reads):  # one loop turn: every sender's read, then the flush
        for session, data in senders:
            session.receive_data(data)
        sent += per_read * len(senders)
        deliveries += per_read * len(senders) * members
        world.turn()
    cpu = time.process_time() - start
    return result(world, cpu, sent, deliveries)


def joinstorm(users: int, rooms: int, per_room: int, per_turn: int) -> dict[str, float]:
    """Users arriving and joining ``per_room`` of ``rooms`` rooms right away,
    ``per_turn`` joins per loop turn: the v1 lists and announcements of a join storm."""
    world = World(rooms)
    joins = []
    for n in range(users):
        session = world.session(n)
        for k in range(per_room):
            room = (n + k * 5) % rooms
            joins.append((session, b'{"_ct":"join_room","r":"room-%d"}\n' % room))
    world.turn()
    start = time.process_time()
    for index, (session, line) in enumerate(joins, 1):
        session.receive_data(line)
        if index % per_turn == 0:
            world.turn()
    world.turn()
    cpu = time.process_time() - start
    return result(world, cpu, len(joins), len(joins))


def crowd(turns: int, users: int, rooms: int, per_room: int, per_turn: int) -> dict[str, float]:
    """``users`` each in ``per_room`` of ``rooms`` rooms (about users x per_room / rooms
    members each), ``per_turn`` of them sending one message each per loop turn: a busy
    turn of the 10,000-user scenario, scaled down (a room gets several messages a turn)."""
    world = World(rooms)
    sessions = [world.session(n) for n in range(users)]
    lines = []
    for n, session in enumerate(sessions):
        for k in range(per_room):
            room = (n + k * 5) % rooms
            session.receive_data(b'{"_ct":"join_room","r":"room-%d"}\n' % room)
            lines.append(encode(SendMessage(f"room-{room}", f"{n:06d} " + "x" * 48)))
        if n % 100 == 99:
            world.turn()
    world.turn()
    members = users * per_room // rooms
    sent = deliveries = 0
    start = time.process_time()
    sender = 0
    for _ in range(turns):
        for _ in range(per_turn):
            sender = (sender + 7919) % users
            sessions[sender].receive_data(lines[sender * per_room + sender % per_room])
        world.turn()
    sent = turns * per_turn
    deliveries = sent * members
    cpu = time.process_time() - start
    return result(world, cpu, sent, deliveries)


SHAPES = {
    # name: (members per room, rooms, messages per read, reads)
    "small": (2, 24, 50, 200),  # 2-member rooms, many messages per read (small-room ceiling)
    "seed": (2, 24, 1, 2000),  # 2-member rooms, one message per read (the seed's shape)
    "big": (1000, 1, 10, 100),  # one 1,000-member room
    # users arriving, each joining 5 of 24 rooms, 50 joins per turn (--scale: users)
    "joinstorm": (5, 24, 50, 2000),
    # 2,400 users in 5 of 24 rooms (500 members each), 120 messages per turn (--scale: turns)
    "crowd": (5, 24, 120, 200),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append")
    parser.add_argument("--repeat", type=int, default=5, help="best of N")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply each shape's reads (e.g. to diff two valgrind instruction counts)",
    )
    args = parser.parse_args()
    for shape in args.shape or list(SHAPES):
        members, rooms, per_read, reads = SHAPES[shape]
        reads = max(1, round(reads * args.scale))
        best = min(
            (
                joinstorm(reads, rooms, members, per_read)
                if shape == "joinstorm"
                else crowd(reads, 2400, rooms, members, per_read)
                if shape == "crowd"
                else run(shape, members, rooms, per_read, reads)
                for _ in range(args.repeat)
            ),
            key=lambda r: r["ns_per_message"],
        )
        if shape == "crowd":
            print(
                f"{shape:6} 2400 users x {members} of {rooms} rooms, {per_read} msgs/turn: "
                f"{best['ns_per_message']:8.0f} ns/message, "
                f"{best['ns_per_delivery']:6.0f} ns/delivery"
            )
            continue
        if shape == "joinstorm":
            print(
                f"{shape:6} {reads:5} users x {members} of {rooms} rooms, {per_read} joins/turn: "
                f"{best['ns_per_message']:8.0f} ns/join, {best['writes']} writes"
            )
            continue
        print(
            f"{shape:6} {members:5} members x {rooms:3} rooms, {per_read:3} msgs/read: "
            f"{best['ns_per_message']:8.0f} ns/message, {best['ns_per_delivery']:6.0f} ns/delivery"
        )


if __name__ == "__main__":
    main()
