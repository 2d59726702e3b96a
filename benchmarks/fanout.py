"""Micro-benchmark of the in-process message path (no sockets, no event loop).

Measures the Python-side cost of posting one ``send_message`` to a room and fanning it
out to its local members: ``UserSessionHandle.send_message`` -> ``ChatRoom.post`` ->
(in-process bus) ``ChatRoom.fan_out``. Members are fakes whose ``enqueue`` is a list's
``append``, exactly like a real Mailbox. Prints messages per second (best of 5 runs).

    .venv/bin/python benchmarks/fanout.py            # v1-only rooms of 2 and 1000
    .venv/bin/python benchmarks/fanout.py --v2 1     # plus one v2 member in each room
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from roomchat.protocol import RoomDetail
from roomchat.server.bus import MemoryBus
from roomchat.server.core.rooms import RoomManager, UserSessionHandle


class FakeMember:
    def __init__(self, index: int, v2: bool) -> None:
        self.user_id = f"u{index:04d}"
        self.key = f"session-{index}"
        self.v2 = v2
        self.pending: list[bytes] = []
        self.enqueue: Callable[[bytes], None] = self.pending.append

    def send(self, data: bytes) -> None:
        self.pending.append(data)

    def flush(self) -> None:
        self.pending.clear()


def one_room(members: int, v2_members: int, messages: int) -> float:
    manager = RoomManager([RoomDetail("general", "")], MemoryBus(), MemoryBus().presence)
    handles: list[UserSessionHandle] = []
    fakes = [FakeMember(i, i < v2_members) for i in range(members)]
    for fake in fakes:
        manager.join_room("general", fake, lambda h: handles.append(h))  # type: ignore[arg-type,misc]
    for fake in fakes:
        fake.flush()
    sender = handles[0]
    send = sender.send_message
    batch = max(1, min(1000, 200_000 // members))  # flush the fakes now and then
    done = 0
    elapsed = 0.0
    while done < messages:
        start = time.perf_counter()
        for _ in range(batch):
            send("hello, this is a typical chat line of moderate length")
        elapsed += time.perf_counter() - start
        done += batch
        for fake in fakes:
            fake.pending.clear()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v2", type=int, default=0, help="v2 members per room")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    for members, messages in ((2, 1_000_000), (1000, 20_000)):
        best = max(one_room(members, args.v2, messages) for _ in range(args.runs))
        print(f"room of {members:>4} ({args.v2} v2): {best:>12,.0f} messages/s")


if __name__ == "__main__":
    main()
