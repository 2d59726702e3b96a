"""The server's counters: plain integers, bumped on the hot path, read at scrape time.

Nothing here knows Prometheus (``metrics.py`` turns these into the text format when
``/metrics`` is scraped), so counting costs an integer addition and no call. The counters
are bumped per batch or per turn where the hot path is (docs/operating.md lists where):

- :meth:`Session.receive_data` adds the bytes and the number of decoded lines of a read;
- ``ChatRoom.fan_out`` adds ``len(members)`` deliveries once per fan-out;
- :meth:`Mailbox.flush` adds one write and its size, per session per turn.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

__all__ = ["LAG_BUCKETS", "TURN_BUCKETS", "Histogram", "ServerStats"]

#: Seconds; for the event loop's lateness (a probe every 100 ms).
LAG_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: Seconds; for the time from a turn's first queued output to its last write.
TURN_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5)


class Histogram:
    """A fixed-bucket histogram of plain numbers (observed a few hundred times a second
    at most: per loop turn or per probe, never per message)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(le, cumulative count) pairs, ending with +Inf, as Prometheus wants them."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += count
            out.append((bound, total))
        return out


class ServerStats:
    """Every counter of one server (one per ChatServer, shared by its sessions)."""

    __slots__ = (
        "bad_lines",
        "bytes_in",
        "bytes_out",
        "connections_accepted",
        "deliveries",
        "ignored",
        "lines_too_long",
        "loop_lag",
        "messages",
        "slow_consumers",
        "turn",
        "writes",
    )

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.bytes_in = 0  # bytes read from clients (per data_received)
        #: send_message commands carried out or refused (one addition per run of them).
        self.messages = 0
        self.bad_lines = 0  # lines that are not a command (ignored)
        self.ignored = 0  # commands ignored, bad lines included (Session._ignore)
        self.lines_too_long = 0  # sessions closed for a line over the limit
        self.deliveries = 0  # events queued to members by fan-outs
        self.writes = 0  # transport.write calls (one per session per turn at most)
        self.bytes_out = 0  # bytes handed to those writes
        self.slow_consumers = 0  # sessions cut off for not reading
        self.loop_lag = Histogram(LAG_BUCKETS)
        self.turn = Histogram(TURN_BUCKETS)

    @property
    def messages_received(self) -> int:
        """send_message commands handled."""
        return self.messages

    @property
    def ignored_commands(self) -> int:
        """Commands that could not be carried out (bad lines not included)."""
        return self.ignored - self.bad_lines
