"""The epoll engine: one process's users as raw sockets in one loop, for high rates.

The asyncio engine (:mod:`roomchat.stress.worker`) spends Python work on every message
it sends and every read it takes; one core of it saturates near 300,000 deliveries a
second in small rooms, below what the server can do. Here the per-message work is gone:

- **Setting up** is plain: each user connects (blocking, in batches), its events are
  decoded with :class:`roomchat.protocol.EventDecoder` until its ``login_successful`` and
  its own ``user_joined_room`` for each of its rooms (docs/protocol.md, Join), then the
  join announcements are let pass, as the asyncio engine does.
- **Sending** is a pre-built block of send_message lines per sequence of rooms: a user's
  due messages of a turn are one slice of it, written with one ``sendmsg``. Turns come
  at most every :data:`TURN_NS` and follow :class:`~roomchat.stress.schedule.SteadySchedule`
  (bounded turns, what is over 1 s late skipped and counted, the lag reported).
- **Receiving** is ``recv_into`` one preallocated buffer; a read's deliveries are
  counted with ``bytearray.count`` of the ``user_message`` tag over its complete lines,
  never decoded. Latency is sampled: at most every :data:`STAMP_EVERY_NS` a user's batch
  starts with a line stamped ``|m<16 hex digits of monotonic ns>``, found by ``find`` of
  the one byte ``|`` (``memchr``), which nothing else the tool exchanges contains.
- **Nothing lost** is checked by counts: every member of a room gets each message sent to
  it, the sender included (docs/protocol.md, user_message), warm-up and window alike, so
  each user knows how many it must get; the drain waits for them (bounded).

It is synchronous: the runner gives it a process of its own, or a thread (in-process
runs, where a server may share the event loop).
"""

from __future__ import annotations

import collections
import contextlib
import gc
import itertools
import math
import select
import socket
import time
from collections.abc import Callable, Sequence

from roomchat.protocol import (
    BadLine,
    EventDecoder,
    JoinRoom,
    LineTooLong,
    LoginSuccessful,
    RoomParticipation,
    UserJoinedRoom,
    encode,
)
from roomchat.stress.config import SteadyConfig, rooms_of_user
from roomchat.stress.schedule import SteadySchedule, Turn
from roomchat.stress.stamp import MESSAGE_MARK, line_head
from roomchat.stress.stats import (
    LATENCY_MAX_US,
    Progress,
    SentLog,
    Tally,
    WorkerResult,
    new_histogram,
)
from roomchat.stress.worker import StressError

__all__ = ["STAMP_EVERY_NS", "TURN_BATCH", "TURN_NS", "EpollWorker", "drop_written"]

#: Turns of the sender come at most this often: each carries what fell due since the
#: last, one write per user, so writes stay large at millions of messages a second and
#: the loop sleeps in between when there is nothing to read (its CPU share then means
#: something, unlike the asyncio engine's polling sender).
TURN_NS = 1_000_000
#: Messages one turn writes at most (a few MB: a few ms of copying into the kernel).
TURN_BATCH = 65_536
#: A user stamps the first message of its batch at most this often.
STAMP_EVERY_NS = 10_000_000
_BUFFER = 1 << 20  # the one receive buffer, shared by every socket of the loop
_BLOCK = 4_096  # lines of a pre-built block (a longer batch is several slices of it)
_IOV_MAX = 1024  # buffers one sendmsg takes at most (Linux's UIO_MAXIOV)
_PENDING_MAX = 16 << 20  # bytes queued behind a user's full socket before it is skipped
_LATE_LIMIT = 1_000_000_000  # ns past the window's end after which sending stops
_SETTLE_QUIET_NS = 300_000_000  # no join event for this long: the join storm is over
_PROGRESS_NS = 500_000_000
_STAMP = b"|"
_STAMP_DIGITS = 16
_NEWLINE = b"\n"
_IN = select.EPOLLIN
_OUT = select.EPOLLOUT


def drop_written(pending: collections.deque[bytes | memoryview], written: int) -> None:
    """Drop the first ``written`` bytes of the buffers a socket had not taken yet (the
    last one cut, without copying)."""
    while written:
        first = pending[0]
        if len(first) <= written:
            written -= len(first)
            pending.popleft()
        else:
            pending[0] = memoryview(first)[written:]
            written = 0


class _User:
    """One simulated user: its socket, what it sends, what it has counted."""

    __slots__ = (
        "block",
        "closed",
        "connect_ns",
        "counted",
        "decoder",
        "expected",
        "index",
        "joined",
        "logged_in",
        "next_room",
        "offsets",
        "pending",
        "pending_bytes",
        "rest",
        "rooms",
        "sock",
        "stamp_due",
    )

    def __init__(self, index: int, rooms: list[int]) -> None:
        self.index = index  # global, unique across processes
        self.rooms = rooms
        self.sock: socket.socket | None = None
        self.decoder: EventDecoder | None = EventDecoder()  # until the load starts
        self.connect_ns = 0
        self.logged_in = False
        self.joined: set[int] = set()
        self.closed = False
        self.rest = b""  # the start of a line whose end has not been read yet
        self.counted = 0  # user_message lines received since the load started
        self.expected = 0
        # What the socket did not take yet: slices of the pre-built block and stamped
        # lines, kept as they are (no copy), written with sendmsg when it has room.
        self.pending: collections.deque[bytes | memoryview] = collections.deque()
        self.pending_bytes = 0
        self.next_room = 0  # position in its rooms' cycle of its next message
        self.stamp_due = 0
        self.block = memoryview(b"")  # pre-built lines cycling through its rooms
        self.offsets: list[int] = []  # byte offset of each line of the block


class EpollWorker:
    """The runner drives it as it drives a LoadWorker, but synchronously:
    ``prepare()``, ``run(t0)``, ``drain(log)``, ``result()``."""

    def __init__(
        self,
        cfg: SteadyConfig,
        users: Sequence[int],
        *,
        part: int = 0,
        on_progress: Callable[[Progress], None] | None = None,
        batch: int = TURN_BATCH,
    ) -> None:
        self.cfg = cfg
        self.batch = batch  # messages a turn writes at most
        self.part = part
        self.tally = Tally(users=len(users))
        self.phase = "connecting"
        self.room_names: list[str] = []
        self._on_progress = on_progress
        self._users = [_User(i, rooms_of_user(i, cfg.rooms, cfg.rooms_per_user)) for i in users]
        self._by_fd: dict[int, _User] = {}
        self._epoll = select.epoll()
        self._buffer = bytearray(_BUFFER)
        self._view = memoryview(self._buffer)
        self._histogram = new_histogram()
        self._interval = new_histogram()
        self._login_histogram = new_histogram()
        self._join_histogram = new_histogram()
        self._heads: list[bytes] = []
        self._blocks: dict[tuple[int, ...], tuple[memoryview, list[int]]] = {}
        self._log = SentLog([0] * cfg.rooms, warmup=[0] * cfg.rooms)
        self._expected = 0
        self._drained = False
        self._window_start = 0
        self._next_progress = 0
        self._woke = 0  # when the loop last came back from waiting (0: not yet)

    # -- connecting and joining --------------------------------------------------------
    def prepare(self) -> None:
        """Connect every user in batches, each waiting for its login and its joins; then
        wait (bounded) for the join announcements to pass."""
        cfg = self.cfg
        batch = cfg.connect_batch
        for first in range(0, len(self._users), batch):
            users = self._users[first : first + batch]
            for user in users:
                self._connect(user)
            deadline = time.monotonic_ns() + int(cfg.connect_timeout * 1e9)
            while any(u.sock is not None and not u.logged_in for u in users):
                if time.monotonic_ns() >= deadline:
                    break
                self._setup_poll(0.05)
            for user in users:
                if user.sock is not None and not user.logged_in:
                    self.tally.failed += 1  # no login in time
                    self._close(user)
        self.phase = "joining"
        wanted = sum(len(u.rooms) for u in self._users if u.logged_in)
        deadline = time.monotonic_ns() + int((cfg.connect_timeout + len(self._users) / 1000) * 1e9)
        while self.tally.joined < wanted and time.monotonic_ns() < deadline:
            self._setup_poll(0.05)
        self.phase = "settling"
        deadline = time.monotonic_ns() + int(cfg.settle_timeout * 1e9)
        quiet_from, seen = time.monotonic_ns(), self.tally.join_events
        while (now := time.monotonic_ns()) < deadline and now - quiet_from < _SETTLE_QUIET_NS:
            self._setup_poll(0.05)
            if self.tally.join_events != seen:
                quiet_from, seen = time.monotonic_ns(), self.tally.join_events
        for user in self._users:
            if user.decoder is not None and user.decoder.buffered:
                self.tally.protocol_errors += 1  # an event cut off where the load starts
            user.decoder = None  # from here on the loop counts, it does not decode
        gc.collect()
        gc.freeze()

    def _connect(self, user: _User) -> None:
        cfg = self.cfg
        user.connect_ns = time.monotonic_ns()
        if not self.tally.first_connect_ns:
            self.tally.first_connect_ns = user.connect_ns
        try:
            sock = socket.create_connection(cfg.address_of(user.index), timeout=cfg.connect_timeout)
        except OSError:
            self.tally.failed += 1
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        user.sock = sock
        self._by_fd[sock.fileno()] = user
        self._epoll.register(sock.fileno(), _IN)

    def _setup_poll(self, timeout: float) -> None:
        for fd, _ in self._epoll.poll(timeout):
            user = self._by_fd.get(fd)
            if user is None or user.sock is None or user.decoder is None:
                continue
            try:
                data = user.sock.recv(65_536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                if not user.logged_in:
                    self.tally.failed += 1
                    self._close(user)
                else:
                    self._lost_session(user)
                continue
            for event in user.decoder.feed(data):
                self._setup_event(user, event)

    def _setup_event(self, user: _User, event: object) -> None:
        tally = self.tally
        if isinstance(event, (BadLine, LineTooLong)):
            tally.protocol_errors += 1
        elif isinstance(event, LoginSuccessful) and not user.logged_in:
            now = time.monotonic_ns()
            self._login_histogram.record_value(_us(now - user.connect_ns))
            if not self.room_names:
                self._use_rooms([room.name for room in event.rooms])
            user.logged_in = True
            tally.connected += 1
            joins = b"".join(encode(JoinRoom(self.room_names[r])) for r in user.rooms)
            assert user.sock is not None
            user.sock.sendall(joins)  # a few bytes: the fresh socket's buffer takes them
        elif isinstance(event, UserJoinedRoom):
            tally.join_events += 1
            room = self._room_of(event.room)
            if room in user.rooms and room not in user.joined:
                self._joined(user, room)
        elif isinstance(event, RoomParticipation):
            tally.join_events += 1

    def _room_of(self, name: str) -> int:
        try:
            return self.room_names.index(name)
        except ValueError:
            return -1

    def _use_rooms(self, offered: list[str]) -> None:
        if len(offered) < self.cfg.rooms:
            raise StressError(f"the server offers {len(offered)} rooms, {self.cfg.rooms} wanted")
        self.room_names = offered[: self.cfg.rooms]
        self._heads = [line_head(name) for name in self.room_names]

    def _joined(self, user: _User, room: int) -> None:
        now = time.monotonic_ns()
        user.joined.add(room)
        tally = self.tally
        tally.joined += 1
        if len(user.joined) < len(user.rooms):
            return
        took = now - user.connect_ns
        tally.users_joined += 1
        tally.last_join_ns = now
        if took > self.cfg.join_bound * 1e9:
            tally.users_joined_late += 1
        self._join_histogram.record_value(_us(took))

    def _close(self, user: _User) -> None:
        if user.sock is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._epoll.unregister(user.sock.fileno())
            self._by_fd.pop(user.sock.fileno(), None)
            user.sock.close()
        user.sock = None
        user.closed = True

    # -- sending -------------------------------------------------------------------------
    def _line(self, room: int, content: bytes) -> bytes:
        return self._heads[room] + content + b'"}\r\n'

    def _block_of(self, rooms: list[int]) -> tuple[memoryview, list[int]]:
        """The pre-built lines of a user sending to ``rooms`` in turn (shared by every
        user with the same rooms), and each line's byte offset."""
        key = tuple(rooms)
        if (found := self._blocks.get(key)) is None:
            content = b"x" * self.cfg.payload
            lines = [self._line(rooms[i % len(rooms)], content) for i in range(_BLOCK)]
            offsets = [0]
            for line in lines:
                offsets.append(offsets[-1] + len(line))
            found = self._blocks[key] = (memoryview(b"".join(lines)), offsets)
        return found

    def _send(self, user: _User, count: int, measured: bool, now: int) -> None:
        """Write the user's next ``count`` messages (to its rooms in turn) at once."""
        sock = user.sock
        if sock is None:
            self.tally.send_failed += count
            return
        rooms = user.rooms
        per_cycle = len(rooms)
        position = user.next_room % per_cycle
        parts: list[bytes | memoryview] = []
        left = count
        if now >= user.stamp_due:  # this batch's first line carries the send time
            user.stamp_due = now + STAMP_EVERY_NS
            stamp = b"|%s%016x" % (b"m" if measured else b"w", now)
            parts.append(self._line(rooms[position], stamp.ljust(self.cfg.payload, b"x")))
            position = (position + 1) % per_cycle
            left -= 1
        block, offsets = user.block, user.offsets
        while left > 0:
            take = min(left, _BLOCK - per_cycle)
            parts.append(block[offsets[position] : offsets[position + take]])
            position = (position + take) % per_cycle
            left -= take
        if user.pending:  # behind what the socket did not take yet, bounded
            if user.pending_bytes > _PENDING_MAX:  # the server has stopped reading it
                self.tally.send_blocked += count
                return
            user.pending.extend(parts)
            user.pending_bytes += sum(len(part) for part in parts)
        else:
            try:
                written = sock.sendmsg(parts)
            except BlockingIOError:
                written = 0
            except OSError:
                self._lost_session(user)
                self.tally.send_failed += count
                return
            size = sum(len(part) for part in parts)
            if written < size:
                user.pending.extend(parts)
                user.pending_bytes = size
                self._written(user, written)
                self._epoll.modify(sock.fileno(), _IN | _OUT)
        self._sent(user, count, measured)

    @staticmethod
    def _written(user: _User, written: int) -> None:
        """Drop the first ``written`` bytes of what the user's socket had not taken."""
        user.pending_bytes -= written
        drop_written(user.pending, written)

    def _sent(self, user: _User, count: int, measured: bool) -> None:
        rooms, per_cycle = user.rooms, len(user.rooms)
        counts = self._log.counts if measured else self._log.warmup
        if per_cycle == 1:
            counts[rooms[0]] += count
        else:
            full, extra = divmod(count, per_cycle)
            first = user.next_room % per_cycle
            for j in range(per_cycle):
                counts[rooms[(first + j) % per_cycle]] += full + (j < extra)
        user.next_room += count
        tally = self.tally
        tally.sent += count
        if measured:
            tally.sent_measured += count

    def _flush(self, user: _User) -> None:
        """Write what the user's socket did not take before."""
        sock = user.sock
        if sock is None:
            return
        try:
            written = sock.sendmsg(list(itertools.islice(user.pending, _IOV_MAX)))
        except BlockingIOError:
            return
        except OSError:
            self._lost_session(user)
            return
        self._written(user, written)
        if not user.pending:
            self._epoll.modify(sock.fileno(), _IN)

    def _lost_session(self, user: _User) -> None:
        if not user.closed:
            self.tally.disconnected += 1
        self._close(user)

    # -- receiving -----------------------------------------------------------------------
    def _read(self, user: _User, now: int) -> None:
        """Take what one socket has: count its deliveries, time its stamps."""
        sock = user.sock
        if sock is None:
            return
        buffer, rest = self._buffer, user.rest
        kept = len(rest)
        if kept:
            buffer[:kept] = rest
        try:
            got = sock.recv_into(self._view[kept:])
        except BlockingIOError:
            return
        except OSError:
            got = 0
        if not got:  # the server closed the session
            self._lost_session(user)
            return
        end = kept + got
        complete = buffer.rfind(_NEWLINE, 0, end) + 1
        user.rest = bytes(buffer[complete:end]) if complete < end else b""
        if not complete:
            if end == _BUFFER:  # a line longer than the buffer is no delivery of ours
                self.tally.protocol_errors += 1
                user.rest = b""
            return
        messages = buffer.count(MESSAGE_MARK, 0, complete)
        if messages:
            user.counted += messages
            self.tally.delivered_all += messages
            self.tally.last_delivery_ns = now
        stamp = buffer.find(_STAMP, 0, complete)
        while stamp >= 0:
            self._stamped(buffer, stamp, now)
            stamp = buffer.find(_STAMP, stamp + 1, complete)

    def _stamped(self, buffer: bytearray, at: int, now: int) -> None:
        if buffer[at + 1] != ord("m"):  # warm-up: not timed
            return
        digits = buffer[at + 2 : at + 2 + _STAMP_DIGITS]
        try:
            sent = int(digits, 16)
        except ValueError:
            return
        latency = _us(now - sent)
        self._histogram.record_value(latency)
        self._interval.record_value(latency)

    def _poll(self, timeout_ns: int) -> None:
        """Wait up to ``timeout_ns`` for something to read (or room to write), take it.

        The loop's work since the previous wait (reading, writing) is how long a delivery
        may have waited to be read: the longest is the report's max loop stall."""
        now = time.monotonic_ns()
        if self._woke and (now - self._woke) // 1000 > self.tally.max_loop_stall_us:
            self.tally.max_loop_stall_us = (now - self._woke) // 1000
        events = self._epoll.poll(timeout_ns / 1e9 if timeout_ns > 0 else 0)
        self._woke = now = time.monotonic_ns()
        by_fd = self._by_fd
        for fd, mask in events:
            user = by_fd.get(fd)
            if user is None:
                continue
            if mask & _OUT:
                self._flush(user)
            if mask & ~_OUT:
                self._read(user, now)

    # -- the load ------------------------------------------------------------------------
    def run(self, t0: int) -> SentLog:
        """Send the load from monotonic time ``t0`` (ns); return what was sent."""
        cfg = self.cfg
        self.phase = "running"
        active = [u for u in self._users if u.logged_in and u.sock is not None]
        for user in active:
            user.block, user.offsets = self._block_of(user.rooms)
        n = len(active)
        self._window_start = measure_from = t0 + int(cfg.warmup * 1e9)
        end = t0 + int((cfg.warmup + cfg.duration) * 1e9)
        self._next_progress = time.monotonic_ns() + _PROGRESS_NS
        if not n:
            return self._log
        period = 1e9 / (n * cfg.message_rate)
        offset = period * self.part / cfg.processes  # interleave the processes' schedules
        total = max(0, math.ceil((end - t0 - offset) / period))
        schedule = SteadySchedule(t0 + offset, period, total, n, measure_from, batch=self.batch)
        self.tally.scheduled_measured += schedule.measured
        tally = self.tally
        next_turn = t0
        while not schedule.done:
            now = time.monotonic_ns()
            if now >= next_turn:
                if now >= end + _LATE_LIMIT:  # what the tool could not send is not sent
                    self._skipped(schedule.give_up())
                    break
                turn = schedule.take(now)
                if turn is not None:
                    if turn.lag_ns // 1000 > tally.max_send_lag_us:
                        tally.max_send_lag_us = turn.lag_ns // 1000
                    self._skipped(turn)
                    for (slot, measured), count in turn.batches.items():
                        self._send(active[slot], count, measured, now)
                    # Behind (a full batch taken, more due): the next turn comes at once.
                    behind = not schedule.done and schedule.due_at(schedule.next) <= now
                    next_turn = now if behind else now + TURN_NS
            if not schedule.done:
                due = max(next_turn, int(schedule.due_at(schedule.next)))
                self._poll(due - time.monotonic_ns())
            self._progress()
        self.phase = "draining"
        return self._log

    def _skipped(self, turn: Turn) -> None:
        self.tally.skipped += turn.skipped
        self.tally.skipped_measured += turn.skipped_measured

    def drain(self, log: SentLog) -> None:
        """Wait (bounded) until every user got every message sent to its rooms (``log``:
        every process's, merged), warm-up included; then split off the measured part."""
        warm = log.warmup or [0] * len(log.counts)
        users = [u for u in self._users if len(u.joined) == len(u.rooms)]
        for user in users:
            user.expected = sum(log.counts[r] + warm[r] for r in user.rooms)
        deadline = time.monotonic_ns() + int(self.cfg.drain_timeout * 1e9)
        while (now := time.monotonic_ns()) < deadline and any(
            u.counted < u.expected and not u.closed for u in users
        ):
            self._poll(min(10_000_000, deadline - now))
            self._progress()
        tally = self.tally
        for user in users:
            measured = sum(log.counts[r] for r in user.rooms)
            warmup = user.expected - measured
            # Counts cannot tell a warm-up delivery from a measured one: what is missing
            # is counted as lost from the window (loss is loss), a surplus as duplicated.
            got = min(measured, max(0, user.counted - warmup))
            tally.delivered += got
            tally.duplicated += max(0, user.counted - user.expected)
            self._expected += measured
        self._drained = all(u.counted >= u.expected for u in users)
        self.phase = "draining"

    def result(self) -> WorkerResult:
        """Close every session and return the counts."""
        self.phase = "done"
        gc.unfreeze()
        for user in self._users:
            if user.sock is not None:
                self._close(user)
        self._epoll.close()
        return WorkerResult(
            self.tally,
            self._expected,
            self._histogram.encode(),
            self._drained,
            self.room_names,
            self._login_histogram.encode(),
            self._join_histogram.encode(),
        )

    def _progress(self) -> None:
        if self._on_progress is None or time.monotonic_ns() < self._next_progress:
            return
        self._next_progress = time.monotonic_ns() + _PROGRESS_NS
        self._on_progress(Progress(self.phase, self.tally.copy(), self._interval.encode()))
        self._interval.reset()


def _us(ns: int) -> int:
    return min(max(ns // 1000, 1), LATENCY_MAX_US)
