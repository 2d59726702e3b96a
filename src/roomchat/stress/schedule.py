"""Which scheduled messages a sender writes on each turn of its loop, and which it drops.

A load tool that falls behind its schedule must not try to catch up all at once: building
every overdue message in one go keeps its event loop from reading for as long as that
takes (seconds, at millions of messages/s asked), and the server then rightly cuts its
users off as slow consumers. Two bounds keep the sender's turns short:

- a turn takes at most ``batch`` due messages (:data:`TURN_BATCH`); the rest wait for the
  next turn, after the loop has run the readers;
- a message more than ``backlog_ns`` overdue (:data:`BACKLOG_NS`) is not sent: it is
  skipped, and counted, so the report says how much of the asked load went out.

A sender that keeps to its schedule meets neither bound: it sends the same messages, at
the same times, as without them. Everything here is plain arithmetic on the clock values
it is given, so tests drive it with a fake clock.
"""

from __future__ import annotations

import math

import msgspec

__all__ = ["BACKLOG_NS", "TURN_BATCH", "SteadySchedule", "Turn"]

#: Messages a sender builds and writes at most per turn of the event loop (about 1.5 µs
#: each: a turn's work stays within a few milliseconds).
TURN_BATCH = 1024
#: A message this far overdue is skipped rather than sent (ns). Latency is timed from
#: the moment a message is written, so how late it goes out does not change what is
#: measured; what it changes is how much was sent, which the report gives.
BACKLOG_NS = 1_000_000_000


class Turn(msgspec.Struct):
    """What one turn of the sender does."""

    #: (user slot, measured) -> how many messages to write, in schedule order.
    batches: dict[tuple[int, bool], int]
    #: How late the oldest overdue message is (whether it is written now or skipped), ns.
    lag_ns: int
    skipped: int = 0  # overdue messages dropped (more than the backlog bound late)
    skipped_measured: int = 0  # ... of which in the measured window

    @property
    def count(self) -> int:
        return sum(self.batches.values())


class SteadySchedule:
    """Steady mode: message k is due at ``start + k * period``, from user slot k mod
    ``users``; those due at ``measure_from`` or later are measured. ``total`` messages."""

    def __init__(
        self,
        start: float,
        period: float,
        total: int,
        users: int,
        measure_from: float,
        *,
        batch: int = TURN_BATCH,
        backlog_ns: int = BACKLOG_NS,
    ) -> None:
        if period <= 0 or users < 1 or batch < 1 or backlog_ns < 0:
            raise ValueError("a schedule needs period > 0, users >= 1, batch >= 1, backlog >= 0")
        self.start, self.period, self.total, self.users = start, period, total, users
        self.batch, self.backlog_ns = batch, backlog_ns
        self.next = 0  # the next message not yet sent nor skipped
        # The first measured message, found with the very comparison each message's phase
        # was always decided by (so float rounding cannot move it).
        first = max(0, min(total, math.ceil((measure_from - start) / period)))
        while first > 0 and start + (first - 1) * period >= measure_from:
            first -= 1
        while first < total and start + first * period < measure_from:
            first += 1
        self.first_measured = first
        self.measured = total - first  # messages of the measured window, sent or not

    @property
    def done(self) -> bool:
        return self.next >= self.total

    def due_at(self, k: int) -> float:
        return self.start + k * self.period

    def _due_by(self, now: float) -> int:
        """How many messages are due at ``now`` (index one past the last one due)."""
        return min(self.total, math.floor((now - self.start) / self.period) + 1)

    def _measured_in(self, first: int, end: int) -> int:
        return max(0, end - max(first, self.first_measured))

    def take(self, now: int) -> Turn | None:
        """What to write at ``now`` (monotonic ns); None when nothing is due yet."""
        k = self.next
        due = self._due_by(now)
        if due <= k:
            return None
        lag = int(now - self.due_at(k))
        skipped = skipped_measured = 0
        if lag > self.backlog_ns:  # drop what is more than the backlog bound late
            keep = max(k, min(due, self._due_by(now - self.backlog_ns)))
            skipped, skipped_measured = keep - k, self._measured_in(k, keep)
            k = keep
        end = min(due, k + self.batch)
        batches: dict[tuple[int, bool], int] = {}
        split = max(k, min(end, self.first_measured))
        self._count(k, split, False, batches)  # the warm-up's, then the window's
        self._count(split, end, True, batches)
        self.next = end
        return Turn(batches, lag, skipped, skipped_measured)

    def _count(
        self, first: int, end: int, measured: bool, batches: dict[tuple[int, bool], int]
    ) -> None:
        """Add messages ``first`` to ``end`` (excluded) to ``batches``: message i is user
        slot i mod users', so each slot gets the same share, the first ``extra`` slots
        from ``first``'s one more. O(users), not O(messages): a fast sender takes tens of
        thousands of messages a turn. Keys come in the order of their first message."""
        count, users = end - first, self.users
        if count <= 0:
            return
        full, extra = divmod(count, users)
        start = first % users
        for j in range(min(count, users)):
            batches[((start + j) % users, measured)] = full + (j < extra)

    def give_up(self) -> Turn:
        """Drop every message not sent yet (the run is over)."""
        k, self.next = self.next, self.total
        return Turn({}, 0, self.total - k, self._measured_in(k, self.total))
