"""One process's share of the load: its users' sessions, their sending and their counting.

A LoadWorker runs on an asyncio loop. It uses the client library in callback mode, so a
delivery costs one function call, no task switch: the callback parses the message's stamp
(see :mod:`roomchat.stress.stamp`), checks order per sender per room, and counts it.
The runner drives it: ``prepare()``, ``run(t0)``, ``drain(log)``, ``result()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from roomchat.client import (
    ChatClient,
    ConnectionClosed,
    HelloRefused,
    ProtocolViolation,
    connect,
    tls_context,
)
from roomchat.protocol import (
    Error,
    Event,
    JoinRoom,
    Pong,
    RoomParticipation,
    UserJoinedRoom,
    UserMessage,
    encode,
)
from roomchat.stress.config import Config, rooms_of_user
from roomchat.stress.schedule import BACKLOG_NS, TURN_BATCH, SteadySchedule, Turn
from roomchat.stress.stamp import (
    ERROR_MARK,
    JOINED_MARK,
    MEASURED,
    MEASURED_MARK,
    MESSAGE_MARK,
    PARTICIPATION_MARK,
    PING_MARK,
    WARMUP,
    line_head,
    make_line,
    parse_stamp,
)
from roomchat.stress.stats import (
    LATENCY_MAX_US,
    Progress,
    SentLog,
    Tally,
    WorkerResult,
    new_histogram,
)

__all__ = ["PROGRESS_INTERVAL", "LoadWorker", "StressError"]

PROGRESS_INTERVAL = 0.5  # seconds between Progress reports
# Timers (uvloop's, and epoll's timeout) count whole milliseconds, too coarse to space
# messages evenly at thousands per second: when the next message is due sooner than
# this, the sender polls (sleep(0) yields to the loop, which reads what has arrived).
# The load tool's core is then always busy; its saturation shows as send lag, not CPU.
_POLL_WITHIN = 0.002
_SETTLE_QUIET = 0.3  # seconds without any join event: the join storm is over
_STALL_TICK_NS = 10_000_000  # the loop monitor's timer: a turn later than this is a stall
_LATE_LIMIT = 1_000_000_000  # ns past the window's end after which a sender gives up
_MAX_GAP = 100_000  # a sequence jump larger than this is not tracked message by message
_TAIL_KEEP = max(len(MESSAGE_MARK), len(PARTICIPATION_MARK), len(JOINED_MARK), len(PING_MARK)) - 1
_NEWLINE = ord("\n")
_PONG = encode(Pong())
_MAX_CODE = 64  # an error's code longer than this is not a code: the scan gives up on it


class StressError(Exception):
    """The run cannot go on (the server is unreachable, has too few rooms, ...)."""


class _User:
    """One simulated user: one session, its rooms and what it has seen."""

    __slots__ = (
        "client",
        "connect_ns",
        "counted",
        "gaps",
        "index",
        "joined_at",
        "next_room",
        "rooms",
        "seqs",
        "streams",
    )

    def __init__(self, index: int, rooms: list[int]) -> None:
        self.index = index  # global, unique across processes: the stamp's sender
        self.rooms = rooms
        self.client: ChatClient | None = None
        self.connect_ns = 0  # when it started to connect (monotonic)
        self.joined_at: dict[int, int] = {}  # room -> when its user_joined_room arrived
        self.next_room = 0
        self.seqs = dict.fromkeys(rooms, 0)
        self.streams: dict[int, int] = {}  # (sender, room) key -> highest seq seen
        self.gaps: set[tuple[int, int]] = set()  # (key, seq) skipped over, not yet seen
        self.counted = 0  # measured deliveries counted in bulk (users that do not check)


class LoadWorker:
    def __init__(
        self,
        cfg: Config,
        users: Sequence[int],
        *,
        part: int = 0,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._tls = tls_context(None if cfg.tls is True else cfg.tls) if cfg.tls else None
        self.part = part
        self.tally = Tally(users=len(users))
        self.phase = "connecting"
        self.room_names: list[str] = []
        self._on_progress = on_progress
        self._users = [_User(i, rooms_of_user(i, cfg.rooms, cfg.rooms_per_user)) for i in users]
        self._room_index: dict[str, int] = {}
        self._heads: list[bytes] = []
        self._latencies: dict[int, int] = {}  # µs -> count, flushed into the histograms
        self._histogram = new_histogram()
        self._interval = new_histogram()
        self._login_histogram = new_histogram()  # µs from connecting to login_successful
        self._join_histogram = new_histogram()  # µs from connecting to every room joined
        self._join_bound_ns = int(cfg.join_bound * 1e9)
        self._log = SentLog.empty(cfg.rooms, cfg.logs_stamps)
        self._joins_wanted = 0
        self._joins_done = asyncio.Event()
        self._ramp_ready: list[tuple[int, int, _User]] = []  # (due, index, user) heap
        self._expected = 0
        self._drained = False
        self._progress_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._arriving: asyncio.Task[None] | None = None
        # The senders' clock (monotonic ns: the stamps' clock too) and sleep: a test drives
        # the sending with fake ones.
        self.clock: Callable[[], int] = time.monotonic_ns
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # -- phases ------------------------------------------------------------------------
    async def prepare(self, connect_from: int | None = None) -> None:
        """Connect every user and wait until each has joined its rooms (unless users arrive
        while the load runs, as in ramp mode). Arrivals at a rate are timed from monotonic
        time ``connect_from`` (ns; default now), which every process of a run shares."""
        self._progress_task = asyncio.create_task(self._report_progress())
        if self.cfg.arrives_while_sending:
            return
        starts = self.cfg.start_times()
        if starts is None:
            batch = self.cfg.connect_batch
            for first in range(0, len(self._users), batch):
                users = self._users[first : first + batch]
                await asyncio.gather(*(self._connect(u) for u in users))
        else:
            self.phase = "arriving"
            arrivals = sorted((starts[u.index], u.index, u) for u in self._users)
            await self._arrive(connect_from or time.monotonic_ns(), arrivals)
        self.phase = "joining"
        bound = self.cfg.connect_timeout + len(self._users) / 1000
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                while self.tally.joined < self._joins_wanted:
                    self._joins_done.clear()
                    await self._joins_done.wait()
        await self._settle()
        # Everything made so far lives to the end: keep the collector from re-scanning it
        # (a full collection over 10,000 sessions' state is a pause of many milliseconds).
        gc.collect()
        gc.freeze()

    async def _settle(self) -> None:
        """Wait (bounded) until the join storm is over: every join is announced to every
        member of the room (docs/protocol.md, room_participation), so n users joining one room
        cause n * (n + 1) / 2 events; measuring before they are read would time the backlog."""
        self.phase = "settling"
        deadline = time.monotonic() + self.cfg.settle_timeout
        seen = -1
        while self.tally.join_events != seen and time.monotonic() < deadline:
            seen = self.tally.join_events
            await asyncio.sleep(_SETTLE_QUIET)

    async def run(self, t0: int) -> SentLog:
        """Send the load (from monotonic time ``t0``, in ns); return what was measured."""
        self.phase = "running"
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch_loop())
        if self.cfg.arrives_while_sending:
            await self._run_arrivals(t0)
        else:
            await self._run_schedule(t0)
        self.phase = "draining"
        return self._log

    async def drain(self, log: SentLog) -> None:
        """Wait (bounded) until this worker's users got every message sent in ``log``."""
        self._expected = sum(
            log.expected_since(room, joined_at)
            for user in self._users
            for room, joined_at in user.joined_at.items()
        )
        deadline = time.monotonic() + self.cfg.drain_timeout
        while self.tally.delivered < self._expected and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        # A counting user cannot tell a duplicate from a delivery: what it got beyond its
        # own expectation is a surplus, reported as duplicated, not as delivered.
        for user in self._users:
            if user.counted:
                wanted = sum(log.expected_since(r, at) for r, at in user.joined_at.items())
                if user.counted > wanted:
                    self.tally.duplicated += user.counted - wanted
                    self.tally.delivered -= user.counted - wanted
        self._drained = self.tally.delivered >= self._expected

    async def result(self) -> WorkerResult:
        """Close every session and return the counts."""
        self.phase = "done"
        for task in (self._progress_task, self._watch_task):
            if task is not None:
                task.cancel()
        self._count_protocol_errors()
        gc.unfreeze()
        clients = [u.client for u in self._users if u.client is not None]
        self.tally.disconnected = sum(1 for c in clients if c.closed)
        for client in clients:
            client.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(c.wait_closed() for c in clients))
        self._flush_latencies()
        return WorkerResult(
            self.tally,
            self._expected,
            self._histogram.encode(),
            self._drained,
            self.room_names,
            self._login_histogram.encode(),
            self._join_histogram.encode(),
        )

    # -- connecting and joining --------------------------------------------------------
    async def _connect(self, user: _User) -> bool:
        user.connect_ns = time.monotonic_ns()
        if not self.tally.first_connect_ns:
            self.tally.first_connect_ns = user.connect_ns
        try:
            client = await connect(
                *self.cfg.address_of(user.index),
                timeout=self.cfg.connect_timeout,
                ssl=self._tls,
                v2=self.cfg.v2,
                name=self.cfg.name_of(user.index),
                **self._receiving(user),
            )
        except HelloRefused as exc:  # v2: name taken or invalid, shutting down, ...
            self.tally.failed += 1
            self.tally.count_error(exc.error.code)
            return False
        except (OSError, TimeoutError, ConnectionClosed, ProtocolViolation):
            self.tally.failed += 1
            return False
        if client.version >= 2:
            self.tally.sessions_v2 += 1
        took = time.monotonic_ns() - user.connect_ns
        self._login_histogram.record_value(min(max(took // 1000, 1), LATENCY_MAX_US))
        if not self.room_names:
            self._use_rooms([room.name for room in client.rooms])
        user.client = client
        self.tally.connected += 1
        self._joins_wanted += len(user.rooms)
        client.write(b"".join(encode(JoinRoom(self.room_names[r])) for r in user.rooms))
        return True

    def _use_rooms(self, offered: list[str]) -> None:
        if len(offered) < self.cfg.rooms:
            raise StressError(f"the server offers {len(offered)} rooms, {self.cfg.rooms} wanted")
        self.room_names = offered[: self.cfg.rooms]
        # Updated in place: the receivers made before the first login hold this dict.
        self._room_index.update((name, i) for i, name in enumerate(self.room_names))
        self._heads = [line_head(name) for name in self.room_names]

    def _joined(self, user: _User, room: int) -> None:
        """The user's own user_joined_room for ``room`` arrived. O(1)."""
        now = time.monotonic_ns()
        user.joined_at[room] = now
        tally = self.tally
        tally.joined += 1
        if tally.joined >= self._joins_wanted:
            self._joins_done.set()
        if len(user.joined_at) < len(user.rooms):
            return
        # Every room confirmed: how long it took from starting to connect.
        took = now - user.connect_ns
        tally.users_joined += 1
        tally.last_join_ns = now
        if took > self._join_bound_ns:
            tally.users_joined_late += 1
        self._join_histogram.record_value(min(max(took // 1000, 1), LATENCY_MAX_US))
        if (delay := self.cfg.first_send_delay(user.index)) is not None:
            heapq.heappush(self._ramp_ready, (now + int(delay * 1e9), user.index, user))

    # -- receiving -----------------------------------------------------------------------
    def _receiving(self, user: _User) -> dict[str, Any]:
        """How this user takes its deliveries: checking each, or counting them in bulk."""
        if self.cfg.checks(user.index):
            return {"on_event": self._receiver(user)}
        return {"on_data": self._counter(user)}

    def _counter(self, user: _User) -> Callable[[bytes], None]:
        """Count deliveries without decoding them: a few bytes.count() per chunk read.

        No mark spans two lines, so when the previous read ended a line (the usual case:
        the server writes whole lines) every mark lies wholly in this read. Otherwise
        matches that straddle two reads are found by scanning the end of the previous
        read again (``tail``); a match lying wholly in the tail was counted last time.
        """
        tally = self.tally
        monotonic_ns = time.monotonic_ns
        wanted = len(user.rooms)
        v2 = self.cfg.v2
        tail = b""
        joins = 0
        error_part = b""  # from an error's mark to the end of a read that cut its code off

        def count_errors(chunk: bytes, start: int) -> bytes:
            """Count the error marks that begin at ``start`` or later, by code; return
            the part of an error line whose code the read cut off (counted next time)."""
            pos = chunk.find(ERROR_MARK, start)
            while pos >= 0:
                begin = pos + len(ERROR_MARK)
                end = chunk.find(b'"', begin, begin + _MAX_CODE)
                if end < 0:
                    return chunk[pos:] if len(chunk) - begin < _MAX_CODE else b""
                tally.count_error(chunk[begin:end].decode("ascii", "replace"))
                pos = chunk.find(ERROR_MARK, end)
            return b""

        def on_data(data: bytes) -> None:
            nonlocal tail, joins, error_part
            if tail:
                chunk = tail + data
                messages = chunk.count(MESSAGE_MARK) - tail.count(MESSAGE_MARK)
                # Counted on its own: a message's tag and its stamp may fall in two reads.
                measured = chunk.count(MEASURED_MARK) - tail.count(MEASURED_MARK)
                joined = chunk.count(JOINED_MARK) - tail.count(JOINED_MARK) if joins < wanted else 0
                others = chunk.count(PARTICIPATION_MARK) - tail.count(PARTICIPATION_MARK)
            else:
                chunk = data
                messages = data.count(MESSAGE_MARK)
                # A stamp follows its message's tag on the same line, which began here.
                measured = data.count(MEASURED_MARK) if messages else 0
                joined = data.count(JOINED_MARK) if joins < wanted else 0
                others = data.count(PARTICIPATION_MARK)
            tally.delivered_all += messages
            if measured:
                user.counted += measured
                tally.delivered += measured
                tally.last_delivery_ns = monotonic_ns()
            tally.join_events += joined + others
            if joined:
                joins += joined
                if joins >= wanted:
                    for room in user.rooms:
                        self._joined(user, room)
            if v2:
                # Rare lines, found with one more scan per read: the server's pings
                # (raw mode answers them itself) and errors (counted by code).
                pings = (
                    chunk.count(PING_MARK) - tail.count(PING_MARK)
                    if tail
                    else data.count(PING_MARK)
                )
                if pings and user.client is not None and not user.client.closed:
                    user.client.write(_PONG)
                if error_part:  # it holds every mark of the previous read not yet counted
                    error_part = count_errors(error_part + data, 0)
                else:  # a mark lying wholly in the tail was counted with the previous read
                    start = max(0, len(tail) - len(ERROR_MARK) + 1) if tail else 0
                    error_part = count_errors(chunk, start)
            tail = b"" if data[-1] == _NEWLINE else chunk[-_TAIL_KEEP:]

        return on_data

    def _receiver(self, user: _User) -> Callable[[Event], None]:
        tally = self.tally
        latencies = self._latencies
        streams, gaps, joined_at = user.streams, user.gaps, user.joined_at
        rooms = self.cfg.rooms
        room_index = self._room_index
        monotonic_ns = time.monotonic_ns

        def on_event(event: Event) -> None:
            if type(event) is UserMessage:
                now = monotonic_ns()
                tally.delivered_all += 1
                room = room_index.get(event.room, -1)
                since = joined_at.get(room)  # None: a room not joined (or not ours)
                stamp = parse_stamp(event.content)
                if stamp is None or since is None:
                    tally.unexpected += 1
                    return
                sender, seq, sent, measured = stamp
                key = sender * rooms + room
                last = streams.get(key)
                if last is None or seq == last + 1:
                    streams[key] = seq
                elif seq > last:
                    if seq - last <= _MAX_GAP:
                        gaps.update((key, s) for s in range(last + 1, seq))
                    streams[key] = seq
                elif (key, seq) in gaps:
                    gaps.discard((key, seq))
                    tally.out_of_order += 1
                else:
                    tally.duplicated += 1
                    return
                if measured and sent >= since:
                    tally.delivered += 1
                    tally.last_delivery_ns = now
                    latency = (now - sent) // 1000
                    if latency >= 2048:  # keep 11 significant bits, as the histogram does
                        shift = latency.bit_length() - 11
                        latency = latency >> shift << shift
                    latencies[latency] = latencies.get(latency, 0) + 1
            elif type(event) is RoomParticipation:
                tally.join_events += 1
            elif type(event) is Error:
                tally.count_error(event.code)
            elif type(event) is UserJoinedRoom:
                tally.join_events += 1
                room = room_index.get(event.room, -1)
                if room in user.seqs and room not in joined_at:
                    self._joined(user, room)

        return on_event

    # -- sending -------------------------------------------------------------------------
    def _send(self, user: _User, count: int, measured: bool) -> None:
        """Write the user's next ``count`` messages (to its rooms in turn) at once."""
        client = user.client
        if client is None or client.closed:
            self.tally.send_failed += count
            return
        sent = self.clock()
        phase = MEASURED if measured else WARMUP
        rooms, seqs, heads, payload = user.rooms, user.seqs, self._heads, self.cfg.payload
        lines, targets = [], []
        for _ in range(count):
            room = rooms[user.next_room % len(rooms)]
            user.next_room += 1
            seq = seqs[room]
            seqs[room] = seq + 1
            lines.append(make_line(heads[room], user.index, seq, sent, phase, payload))
            targets.append(room)
        try:
            client.write(b"".join(lines))
        except ConnectionClosed:
            self.tally.send_failed += count
            return
        self.tally.sent += count
        if measured:
            self.tally.sent_measured += count
            log = self._log
            for room in targets:
                log.counts[room] += 1
                if log.stamps is not None:
                    log.stamps[room].append(sent)

    def _lagged(self, lag_ns: int) -> None:
        lag = lag_ns // 1000
        if lag > self.tally.max_send_lag_us:
            self.tally.max_send_lag_us = lag

    async def _run_schedule(self, t0: int) -> None:
        """Message k goes out at t0 + offset + k * period, to user k mod n, so the load is
        spread evenly; each user sends to its rooms in turn. A turn writes at most a bounded
        batch and yields to the loop (the readers read) before the next one; a message more
        than a bound overdue is skipped and counted (see :mod:`roomchat.stress.schedule`).
        Sending stops 1 s after the window's end in any case (the rest counts as skipped)."""
        cfg = self.cfg
        active = [u for u in self._users if u.client is not None]
        if not active:
            return
        n = len(active)
        period = 1e9 / (n * cfg.message_rate)
        offset = period * self.part / cfg.processes  # interleave the processes' schedules
        measure_from = t0 + cfg.warmup * 1e9
        end = t0 + (cfg.warmup + cfg.duration) * 1e9
        total = max(0, math.ceil((end - t0 - offset) / period))
        schedule = SteadySchedule(t0 + offset, period, total, n, measure_from)
        self.tally.scheduled_measured += schedule.measured
        while not schedule.done:
            now = self.clock()
            if now >= end + _LATE_LIMIT:  # bounded: what the tool could not send is not sent
                self._skipped(schedule.give_up())
                break
            turn = schedule.take(now)
            if turn is not None:
                self._lagged(turn.lag_ns)  # how late the oldest message due is
                self._skipped(turn)
                # Messages due now, grouped per user and per phase: one write per group.
                for (user, measured), count in turn.batches.items():
                    self._send(active[user], count, measured)
            if not schedule.done:
                wait = (schedule.due_at(schedule.next) - self.clock()) / 1e9
                await self.sleep(0 if wait < _POLL_WITHIN else wait - _POLL_WITHIN / 2)

    def _skipped(self, turn: Turn) -> None:
        self.tally.skipped += turn.skipped
        self.tally.skipped_measured += turn.skipped_measured

    async def _run_arrivals(self, t0: int) -> None:
        """Users arrive at their start times; each, once joined, sends every interval."""
        cfg = self.cfg
        starts = cfg.start_times()
        assert starts is not None, "users that arrive while sending have start times"
        arrivals = sorted((starts[u.index], u.index, u) for u in self._users)
        self._arriving = arriving = asyncio.create_task(self._arrive(t0, arrivals))
        end = t0 + int(cfg.duration * 1e9)
        delay = int(cfg.send_interval * 1e9)
        ready = self._ramp_ready
        try:
            while (now := self.clock()) < end:
                if arriving.done() and (error := arriving.exception()) is not None:
                    raise error
                # As in steady mode: a bounded batch per turn, and what is more than the
                # backlog bound overdue is skipped (each user's next sends move on).
                taken = 0
                while ready and ready[0][0] <= now and taken < TURN_BATCH:
                    due, index, user = ready[0]
                    self._lagged(now - due)
                    if now - due > BACKLOG_NS:
                        missed = (now - BACKLOG_NS - due) // delay + 1
                        self.tally.skipped += missed
                        self.tally.skipped_measured += missed
                        self.tally.scheduled_measured += missed
                        due += missed * delay
                    if due <= now:
                        self._send(user, 1, True)
                        self.tally.scheduled_measured += 1
                        due += delay
                        taken += 1
                    heapq.heapreplace(ready, (due, index, user))
                next_due = ready[0][0] if ready else end
                wait = (min(next_due, end) - self.clock()) / 1e9
                await self.sleep(min(0 if wait < _POLL_WITHIN else wait, 0.01))
        finally:
            arriving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await arriving

    async def _arrive(self, t0: int, arrivals: list[tuple[float, int, _User]]) -> None:
        """Start connecting each user at its time (seconds after ``t0``), without waiting
        for the earlier ones: a slow server makes connections pile up, as in a real wave.
        Returns when every connection attempt has ended."""
        connecting: set[asyncio.Task[bool]] = set()
        i = 0
        try:
            while i < len(arrivals):
                now = time.monotonic_ns()
                due = t0 + int(arrivals[i][0] * 1e9)
                if due > now:
                    await asyncio.sleep((due - now) / 1e9)
                    continue
                lag = (now - due) // 1000  # how late the oldest due arrival starts
                if lag > self.tally.max_connect_lag_us:
                    self.tally.max_connect_lag_us = lag
                while i < len(arrivals) and t0 + int(arrivals[i][0] * 1e9) <= now:
                    task = asyncio.create_task(self._connect(arrivals[i][2]))
                    connecting.add(task)
                    task.add_done_callback(connecting.discard)
                    i += 1
            if connecting:
                await asyncio.gather(*connecting)
        finally:
            for task in connecting:
                task.cancel()

    # -- progress ------------------------------------------------------------------------
    def _flush_latencies(self) -> None:
        for latency, count in self._latencies.items():
            latency = min(max(latency, 1), LATENCY_MAX_US)
            self._histogram.record_value(latency, count)
            self._interval.record_value(latency, count)
        self._latencies.clear()

    def _count_protocol_errors(self) -> None:
        self.tally.protocol_errors = sum(
            u.client.protocol_errors for u in self._users if u.client is not None
        )

    async def _watch_loop(self) -> None:
        """While the load runs and drains: the longest the loop took to come back to this
        timer (past its due time). A long turn, reading or sending, keeps every other
        user's deliveries waiting to be read."""
        tally, monotonic_ns = self.tally, time.monotonic_ns
        last = monotonic_ns()
        while True:
            await asyncio.sleep(_STALL_TICK_NS / 1e9)
            now = monotonic_ns()
            stall = (now - last - _STALL_TICK_NS) // 1000
            if stall > tally.max_loop_stall_us:
                tally.max_loop_stall_us = stall
            last = now

    async def _report_progress(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            self._flush_latencies()
            self._count_protocol_errors()
            if self._on_progress is not None:
                self._on_progress(Progress(self.phase, self.tally.copy(), self._interval.encode()))
            self._interval.reset()
