"""Counters and latency histograms of one worker, and how they merge across processes.

Everything here crosses a process boundary (pickled through a pipe), so it is plain
data: msgspec Structs, lists and HDR histograms encoded as text.
"""

from __future__ import annotations

import bisect

import msgspec
from hdrh.histogram import HdrHistogram

__all__ = [
    "LATENCY_MAX_US",
    "Progress",
    "SentLog",
    "Tally",
    "WorkerResult",
    "merge_histograms",
    "new_histogram",
]

#: Latencies are recorded in microseconds, from 1 µs to 10 minutes, 3 significant digits.
LATENCY_MAX_US = 600_000_000


def new_histogram() -> HdrHistogram:
    return HdrHistogram(1, LATENCY_MAX_US, 3)


def merge_histograms(encoded: list[str]) -> HdrHistogram:
    """Add up histograms encoded with ``HdrHistogram.encode()``."""
    merged = new_histogram()
    for text in encoded:
        if text:
            merged.decode_and_add(text)
    return merged


_MAX_FIELDS = frozenset(
    (
        "max_send_lag_us",
        "max_loop_stall_us",
        "last_delivery_ns",
        "max_connect_lag_us",
        "last_join_ns",
    )
)


class Tally(msgspec.Struct):
    """Counters of one worker (or, once added up, of a whole run)."""

    users: int = 0  # users this worker was given
    connected: int = 0
    failed: int = 0  # could not connect, or no login
    joined: int = 0  # room joins confirmed by the user's own user_joined_room event
    join_events: int = 0  # user_joined_room and room_participation events received
    disconnected: int = 0  # sessions the server closed before the end
    sent: int = 0  # every message written (warm-up included)
    sent_measured: int = 0
    send_failed: int = 0  # a message that could not be written (session closed)
    #: epoll engine: messages not written because the server had stopped reading that
    #: user (its socket full and a bound of bytes queued behind it): the server's limit.
    send_blocked: int = 0
    skipped: int = 0  # messages not sent because the tool fell behind its schedule
    skipped_measured: int = 0  # ... of which due in the measured window
    scheduled_measured: int = 0  # messages due in the measured window, sent or not
    delivered: int = 0  # measured deliveries, each counted once
    delivered_all: int = 0  # every user_message received (warm-up, duplicates included)
    duplicated: int = 0
    out_of_order: int = 0
    unexpected: int = 0  # a user_message for a room not joined, or not stamped by us
    protocol_errors: int = 0  # lines that were not valid v1 events
    max_send_lag_us: int = 0  # how far the sender fell behind its schedule
    #: The longest the worker's event loop took over one turn while the load ran (a
    #: delivery could wait that long to be read), beyond the monitor's own 10 ms timer.
    max_loop_stall_us: int = 0
    last_delivery_ns: int = 0  # when the last measured delivery arrived (monotonic)
    users_joined: int = 0  # users whose every join was confirmed
    users_joined_late: int = 0  # ... later than the join bound after starting to connect
    max_connect_lag_us: int = 0  # how late the tool started an arrival's connection
    first_connect_ns: int = 0  # when the first user started to connect (monotonic; 0: none)
    last_join_ns: int = 0  # when the last user had every room confirmed (monotonic)
    sessions_v2: int = 0  # connected sessions that speak v2 (the server sent welcome)
    #: v2: ``error`` events received (and refused hellos), by code.
    errors_by_code: dict[str, int] = msgspec.field(default_factory=dict)

    def add(self, other: Tally) -> None:
        for name in self.__struct_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "errors_by_code":
                for code, count in theirs.items():
                    mine[code] = mine.get(code, 0) + count
            elif name in _MAX_FIELDS:
                setattr(self, name, max(mine, theirs))
            elif name == "first_connect_ns":  # the earliest of those set
                setattr(self, name, min(mine, theirs) if mine and theirs else mine or theirs)
            else:
                setattr(self, name, mine + theirs)

    def copy(self) -> Tally:
        return msgspec.structs.replace(self, errors_by_code=dict(self.errors_by_code))

    def count_error(self, code: str, count: int = 1) -> None:
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + count


class SentLog(msgspec.Struct):
    """The measured messages sent to each room (by index).

    ``stamps`` (ramp mode only) holds each message's send stamp, sorted, so that a
    member who joined mid-run is expected to get just the messages sent after it joined.
    """

    counts: list[int]
    stamps: list[list[int]] | None = None
    #: The warm-up's messages per room: the epoll engine counts every delivery, warm-up
    #: included, so its users expect those too (empty: not kept).
    warmup: list[int] = msgspec.field(default_factory=list)

    @classmethod
    def empty(cls, rooms: int, with_stamps: bool) -> SentLog:
        return cls([0] * rooms, [[] for _ in range(rooms)] if with_stamps else None)

    @classmethod
    def merge(cls, logs: list[SentLog]) -> SentLog:
        rooms = len(logs[0].counts)
        counts = [sum(log.counts[r] for log in logs) for r in range(rooms)]
        warmup = [sum(log.warmup[r] for log in logs if log.warmup) for r in range(rooms)]
        if not any(log.warmup for log in logs):
            warmup = []
        if logs[0].stamps is None:
            return cls(counts, warmup=warmup)
        stamps = [
            sorted(s for log in logs if log.stamps for s in log.stamps[r]) for r in range(rooms)
        ]
        return cls(counts, stamps)

    def expected_since(self, room: int, joined_at: int) -> int:
        """How many measured messages a member of ``room`` since ``joined_at`` should get."""
        if self.stamps is None:
            return self.counts[room]
        stamps = self.stamps[room]
        return len(stamps) - bisect.bisect_left(stamps, joined_at)


class Progress(msgspec.Struct):
    """A worker's running totals, sent every progress interval."""

    phase: str
    tally: Tally
    interval_histogram: str  # encoded; latencies recorded since the previous Progress


class WorkerResult(msgspec.Struct):
    tally: Tally
    expected: int  # measured deliveries this worker's users should have received
    histogram: str  # encoded; every measured delivery's latency
    drained: bool  # all expected deliveries arrived before the drain timeout
    rooms_used: list[str]
    login_histogram: str = ""  # encoded; per user, µs from connecting to login_successful
    join_histogram: str = ""  # encoded; per user, µs from connecting to every room joined
    #: The worker's own CPU seconds, and the wall seconds they were spent over, while the
    #: load ran and drained (0: not measured, e.g. sharing its process with a server).
    cpu_s: float = 0.0
    wall_s: float = 0.0
