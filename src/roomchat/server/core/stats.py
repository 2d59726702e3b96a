"""The server's counters: plain integers, read at scrape time.

Nothing here knows Prometheus (``metrics.py`` turns these into the text format when
``/metrics`` is scraped). Counting must not slow the hot path (issue 10: benchmarks/
hotpath.py within about 2%), so nothing is counted per delivery, per write or per member
(docs/operating.md, "What counting costs", says where each counter is kept):

- :meth:`Session.receive_data` adds the bytes of a read (one addition per read);
- a room's sequence number counts its messages, and the outbox keeps the bytes a room
  fans out to each member: a room turns those into deliveries, messages and bytes out
  when its members change (``rooms.ChatRoom``), and the properties below add what each
  room owes since when they are read (O(rooms));
- :meth:`Outbox.flush` counts one write per mailbox it visits, per room and per turn.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["LAG_BUCKETS", "TURN_BUCKETS", "Histogram", "Reading", "ServerStats"]

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


@dataclass(frozen=True, slots=True)
class Reading:
    """One number a part of the server reports for /metrics, without Prometheus: its
    name (the metric's, without ``roomchat_`` and the counters' ``_total``), its kind,
    what it means, its value now (a Histogram for a histogram), and its labels. Readings
    of one name and different labels are one metric."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    doc: str
    value: float | Histogram
    labels: tuple[tuple[str, str], ...] = ()


class Counting(Protocol):
    """A room, as far as counting goes (rooms.ChatRoom): what it owes the counters."""

    @property
    def deliveries_due(self) -> int: ...

    @property
    def bytes_due(self) -> int: ...

    @property
    def messages_posted(self) -> int: ...


class ServerStats:
    """Every counter of one server (one per ChatServer, shared by its sessions)."""

    __slots__ = (
        "bad_lines",
        "bytes_in",
        "connections_accepted",
        "delivered",
        "held",
        "hellos",
        "hellos_refused",
        "idle_timeouts",
        "ignored",
        "lines_too_long",
        "loop_lag",
        "messages",
        "rooms",
        "sent",
        "slow_consumers",
        "throttled",
        "turn",
        "writes",
    )

    def __init__(self) -> None:
        self.connections_accepted = 0
        self.bytes_in = 0  # bytes read from clients (per data_received)
        #: send_message commands refused, and those posted to a room numbered elsewhere
        #: (Redis); what rooms number here they count themselves (messages_received).
        self.messages = 0
        self.bad_lines = 0  # lines that are not a command (v1: ignored; v2: bad_command)
        self.ignored = 0  # valid commands that could not be carried out (both versions)
        self.lines_too_long = 0  # sessions closed for a line over the limit
        #: Events queued to members by fan-outs, as far as the rooms put them here (they
        #: do when their members change; ``deliveries`` adds what they owe since).
        self.delivered = 0
        #: Bytes queued for clients less those dropped (closed mailboxes), as far as put
        #: here: a session's own events when queued, v2 lines of a fan-out at once, v1
        #: ones by the rooms (``bytes_out`` adds what they owe since).
        self.sent = 0
        #: The rooms counting into the above (ChatRoom registers itself).
        self.rooms: list[Counting] = []
        self.writes = 0  # transport.write calls (one per session per turn at most)
        self.slow_consumers = 0  # sessions cut off for not reading
        #: Backpressure: times a session was held (not read) because a room it posts
        #: into had a member behind (its connection over --max-pending-output).
        self.held = 0
        self.throttled = 0  # flood-control episodes: a session not read for a while
        self.idle_timeouts = 0  # v2 sessions closed for saying nothing (idle_timeout)
        self.hellos = 0  # v2 hellos received
        self.hellos_refused = 0  # ... refused (name taken or invalid, token, rate)
        self.loop_lag = Histogram(LAG_BUCKETS)
        self.turn = Histogram(TURN_BUCKETS)

    @property
    def deliveries(self) -> int:
        """Events queued to room members by fan-outs (members x events)."""
        return self.delivered + sum(room.deliveries_due for room in self.rooms)

    @property
    def bytes_out(self) -> int:
        """Bytes handed to socket writes: queued for clients, less what was dropped."""
        return self.sent + sum(room.bytes_due for room in self.rooms)

    @property
    def messages_received(self) -> int:
        """send_message commands handled (carried out or refused)."""
        return self.messages + sum(room.messages_posted for room in self.rooms)

    def readings(self) -> list[Reading]:
        """Every counter here, for /metrics (docs/operating.md says what each means)."""
        counters = (
            (
                "messages_received",
                "send_message commands received from clients.",
                self.messages_received,
            ),
            (
                "deliveries",
                "Events queued to room members by fan-outs (members x events).",
                self.deliveries,
            ),
            ("received_bytes", "Bytes read from clients.", self.bytes_in),
            (
                "sent_bytes",
                "Bytes written to clients (counted when queued, less what was dropped).",
                self.bytes_out,
            ),
            (
                "socket_writes",
                "Writes to client sockets (at most one per session per loop turn).",
                self.writes,
            ),
            (
                "slow_consumer_disconnects",
                "Sessions cut off as slow consumers (they did not take their output).",
                self.slow_consumers,
            ),
            (
                "backpressure_holds",
                "Times a session was not read because a room it posts into had a member "
                "with more than --max-pending-output unsent.",
                self.held,
            ),
            (
                "lines_too_long",
                "Sessions closed for a line longer than --max-line-length.",
                self.lines_too_long,
            ),
            (
                "bad_lines",
                "Lines that are not a valid command (v1: ignored; v2: bad_command).",
                self.bad_lines,
            ),
            (
                "ignored_commands",
                "Valid commands that could not be carried out (v1: "
                "ignored; v2: answered with an error).",
                self.ignored,
            ),
            (
                "flood_throttled",
                "Times a session went over --flood-rate and was not read for a while.",
                self.throttled,
            ),
            (
                "idle_timeouts",
                "v2 sessions closed for saying nothing for --idle-timeout.",
                self.idle_timeouts,
            ),
            ("hellos", "v2 hellos received.", self.hellos),
            (
                "hellos_refused",
                "v2 hellos refused (name taken or invalid, token, rate, shutting down).",
                self.hellos_refused,
            ),
        )
        out = [Reading(name, "counter", doc, value) for name, doc, value in counters]
        out.append(
            Reading(
                "loop_lag_seconds",
                "histogram",
                "How late a callback scheduled every 0.1 s runs.",
                self.loop_lag,
            )
        )
        out.append(
            Reading(
                "turn_seconds",
                "histogram",
                "Per loop turn with output: from its first queued event to its last write.",
                self.turn,
            )
        )
        return out
