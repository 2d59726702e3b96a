"""The Outbox and its Mailboxes (server/core/outbox.py), without an event loop.

The outbox's ``call_soon`` only records the callback: the test ends the turn by calling
``outbox.flush()`` itself. The coalescing-window tests measure time only as behaviour
with generous bounds (a wait that should end at once ends in far less than the window);
how long a wait lasts is for the benchmarks.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from roomchat.protocol import RoomDetail
from roomchat.server.bus import MemoryBus
from roomchat.server.core.directory import Directory
from roomchat.server.core.outbox import FLUSH_AT, Mailbox, Outbox
from roomchat.server.core.rooms import ChatRoom, RoomError
from roomchat.server.core.stats import ServerStats

EVENT = b"e" * 9_999 + b"\n"  # 10 000 bytes
PER_EARLY_WRITE = FLUSH_AT // len(EVENT) + 1  # the event that passes FLUSH_AT: 27


class Recorded:
    """A mailbox whose writes are recorded."""

    def __init__(self, outbox: Outbox, key: str) -> None:
        self.writes: list[bytes] = []
        self.mailbox = outbox.open(f"user-{key}", key, self.writes.append)


class Loop:
    """What the outbox schedules, run when the test says the turn ends."""

    def __init__(self) -> None:
        self.scheduled: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.scheduled.append(callback)

    def run(self) -> None:
        while self.scheduled:
            self.scheduled.pop(0)()


def room_with(outbox: Outbox, *members: Mailbox) -> ChatRoom:
    """A room on the in-process bus with these members, fanning out through the outbox."""
    bus = MemoryBus()
    manager = Directory([RoomDetail("lobby", "")], bus, outbox, outbox.stats)
    for member in members:
        outcome: list[object] = []
        manager.join_room("lobby", member, outcome.append)
        assert not isinstance(outcome[0], RoomError)
    return manager.rooms["lobby"]


# --- one write per mailbox per turn ---------------------------------------------------


def test_one_write_per_mailbox_per_flush_however_many_events() -> None:
    loop = Loop()
    outbox = Outbox(loop.call_soon, ServerStats())
    alice, bob, idle = Recorded(outbox, "a"), Recorded(outbox, "b"), Recorded(outbox, "c")
    room = room_with(outbox, alice.mailbox, bob.mailbox)
    loop.run()
    alice.writes.clear()
    bob.writes.clear()

    for n in range(100):
        room.post(b"room %d\n" % n)
        alice.mailbox.send(b"own %d\n" % n)
    assert alice.writes == [] and bob.writes == [], "nothing is written before the turn ends"
    assert len(loop.scheduled) == 1, "one flush scheduled for the whole turn"
    loop.run()
    assert len(alice.writes) == 1 and len(bob.writes) == 1 and idle.writes == []
    assert bob.writes[0] == b"".join(b"room %d\n" % n for n in range(100))
    expected = b"".join(b"room %d\nown %d\n" % (n, n) for n in range(100))
    assert alice.writes[0] == expected
    # The next turn starts afresh.
    room.post(b"again\n")
    loop.run()
    assert bob.writes[1:] == [b"again\n"] and alice.writes[1:] == [b"again\n"]


def test_send_schedules_a_flush_once_per_turn() -> None:
    loop = Loop()
    outbox = Outbox(loop.call_soon, ServerStats())
    alice = Recorded(outbox, "a")
    alice.mailbox.send(b"one\n")
    alice.mailbox.send(b"two\n")
    assert len(loop.scheduled) == 1
    loop.run()
    assert alice.writes == [b"one\ntwo\n"]
    alice.mailbox.send(b"three\n")
    assert len(loop.scheduled) == 1
    loop.run()
    assert alice.writes == [b"one\ntwo\n", b"three\n"]


def test_a_room_fan_out_past_flush_at_writes_early() -> None:
    loop = Loop()
    outbox = Outbox(loop.call_soon, ServerStats())
    members = [Recorded(outbox, str(n)) for n in range(3)]
    room = room_with(outbox, *(m.mailbox for m in members))
    loop.run()
    for member in members:
        member.writes.clear()

    total = PER_EARLY_WRITE + 3
    for _ in range(total):
        room.post(EVENT)
    for member in members:  # written during the turn, not held to its end
        assert member.writes == [EVENT * PER_EARLY_WRITE]
    loop.run()
    for member in members:
        assert member.writes == [EVENT * PER_EARLY_WRITE, EVENT * 3]
        assert sum(map(len, member.writes)) == total * len(EVENT)


def test_a_sessions_own_events_past_flush_at_are_written_early() -> None:
    loop = Loop()
    outbox = Outbox(loop.call_soon, ServerStats())
    alice = Recorded(outbox, "a")
    for _ in range(PER_EARLY_WRITE + 1):
        alice.mailbox.send(EVENT)
    assert alice.writes == [EVENT * PER_EARLY_WRITE]
    loop.run()
    assert alice.writes == [EVENT * PER_EARLY_WRITE, EVENT]


def test_a_closed_mailbox_drops_everything() -> None:
    loop = Loop()
    outbox = Outbox(loop.call_soon, ServerStats())
    alice, bob = Recorded(outbox, "a"), Recorded(outbox, "b")
    room = room_with(outbox, alice.mailbox, bob.mailbox)
    loop.run()
    alice.writes.clear()
    bob.writes.clear()

    room.post(b"queued before the close\n")
    alice.mailbox.send(b"own, queued\n")
    alice.mailbox.close()
    assert alice.mailbox.closed and alice.mailbox.pending_bytes == 0
    room.post(b"after the close\n")  # still a member of the room: fanned out, dropped
    alice.mailbox.send(b"own, after\n")
    alice.mailbox.flush()
    loop.run()
    assert alice.writes == []
    assert bob.writes == [b"queued before the close\nafter the close\n"]
    for _ in range(PER_EARLY_WRITE + 1):  # even past FLUSH_AT: dropped, not kept
        room.post(EVENT)
    loop.run()
    assert alice.writes == [] and alice.mailbox.pending_bytes == 0


# --- the coalescing window --------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def test_window_zero_never_pauses(pair: tuple[socket.socket, socket.socket]) -> None:
    outbox = Outbox(Loop().call_soon, ServerStats(), 0.0)
    outbox.watch(pair[0].fileno())  # nothing to watch with: a no-op
    alice = Recorded(outbox, "a")
    for n in range(50):
        alice.mailbox.send(b"%d\n" % n)
        outbox.flush()
    assert outbox.pauses == 0
    assert len(alice.writes) == 50
    outbox.close()


def test_a_flush_right_after_another_waits() -> None:
    outbox = Outbox(Loop().call_soon, ServerStats(), 0.02)
    try:
        outbox.flush()  # the first turn: the previous one began long ago
        assert outbox.pauses == 0
        for expected in range(1, 4):  # back to back: each waits for the rest of the window
            outbox.flush()
            assert outbox.pauses == expected
        time.sleep(0.05)  # a turn that began more than a window ago: no wait
        outbox.flush()
        assert outbox.pauses == 3
    finally:
        outbox.close()


def test_the_wait_ends_when_a_watched_fd_becomes_readable(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    watched, other_end = pair
    outbox = Outbox(Loop().call_soon, ServerStats(), 30.0)
    outbox.watch(watched.fileno())
    outbox.watch(watched.fileno())  # twice is once
    sent = threading.Event()

    def connect_later() -> None:
        time.sleep(0.1)
        sent.set()
        other_end.send(b"x")  # as a new connection makes a listening socket readable

    try:
        outbox.flush()
        assert outbox.pauses == 0
        thread = threading.Thread(target=connect_later)
        thread.start()
        started = time.monotonic()
        outbox.flush()  # would wait 30 s for the window
        elapsed = time.monotonic() - started
        thread.join()
        assert outbox.pauses == 1, "it did wait"
        assert sent.is_set(), "and the wait lasted until the fd was readable"
        assert elapsed < 10, f"the wait ended only after {elapsed:.1f} s"
    finally:
        outbox.close()


def test_an_unwatched_fd_does_not_end_the_wait(pair: tuple[socket.socket, socket.socket]) -> None:
    watched, other_end = pair
    outbox = Outbox(Loop().call_soon, ServerStats(), 0.3)
    outbox.watch(watched.fileno())
    outbox.unwatch(watched.fileno())
    outbox.unwatch(watched.fileno())  # twice is harmless
    other_end.send(b"x")
    try:
        outbox.flush()
        started = time.monotonic()
        outbox.flush()
        # A lower bound (the kernel never ends a wait early): the readable fd was ignored.
        assert time.monotonic() - started >= 0.15
        assert outbox.pauses == 1
    finally:
        outbox.close()


def test_a_closed_outbox_no_longer_waits() -> None:
    outbox = Outbox(Loop().call_soon, ServerStats(), 30.0)
    outbox.flush()
    outbox.close()
    outbox.close()  # idempotent
    started = time.monotonic()
    outbox.flush()
    assert time.monotonic() - started < 10
    assert outbox.pauses == 0
