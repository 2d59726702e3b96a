"""Posting messages to Redis: a turn's runs as one transaction per node, and the
messages that wait for Redis (an outage, or posts it refused).

Apart from the bus (bus.py) because none of it reads the bus's connections: a
:class:`PostBatch` is built from the runs the rooms post in a turn and answers the
bus through :class:`Poster`; :class:`HeldPosts` is a bounded queue in posting order.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from roomchat.server.bus.redis.commands import Posting
from roomchat.server.bus.redis.resp import ReplyError
from roomchat.server.bus.redis.stats import BusStats
from roomchat.server.core.clock import now_ms
from roomchat.server.core.ports import RoomLink

__all__ = [
    "DEFAULT_OUTAGE_QUEUE",
    "TRIM_EVERY",
    "HeldPosts",
    "Post",
    "PostBatch",
    "PostRun",
    "Poster",
]

log = logging.getLogger("roomchat.bus")

#: Bytes of messages posted during an outage that wait for Redis (--bus-outage-queue).
DEFAULT_OUTAGE_QUEUE = 32 * 1024 * 1024
_LOGGED_EVERY = 1000  # "past the bound" log lines: the first, then every 1000th

#: A room's publisher (RedisBus.publisher): post a run (True: posted; None: held;
#: False: delivered on this instance only), or, with True, post again one held.
Post = Callable[[bytes, int, bool], bool | None]


class Poster(Protocol):
    """What a transaction's replies tell the bus (bus.py RedisBus)."""

    def posted(self, run: PostRun, first: int) -> None:
        """EXEC numbered ``run``: its first message is ``first``."""

    def refused(self, batch: PostBatch, error: ReplyError) -> None:
        """Redis refused the whole transaction (EXECABORT): nothing was published."""

    def report_error(self, error: Exception, what: str) -> None:
        """An error reply to one command of it (counted, logged)."""


#: Each instance trims a room's recent runs every this many of its own posts there:
#: the list holds about --history runs, plus this many per instance posting.
TRIM_EVERY = 32


class PostRun:
    """One room's run of messages in a transaction: every run posted there in the turn
    (by any of its senders here), sent as one INCRBY, RPUSH and PUBLISH. Their order is
    the order they were posted in; they all carry the first one's time."""

    __slots__ = ("count", "events", "known", "post", "replayed", "room", "trim", "ts")

    def __init__(self, room: RoomLink, ts: int, known: int, post: Post, replayed: bool) -> None:
        self.room = room
        self.ts = ts
        self.known = known  # the room's last number when the first was posted
        self.post = post  # the room's publisher (posts it again if Redis refuses it)
        self.replayed = replayed  # held during an outage: the local members saw it
        self.count = 0
        self.events: list[bytes] = []  # each a run as posted (for the message store)
        self.trim = False  # an LTRIM after it (every TRIM_EVERY runs of a room here)


class PostBatch:
    """One transaction of runs on one node (MULTI ... EXEC), built when it closes: a
    run per room, and a run of its own for each message posted again after an outage
    (its bytes must come back as they were: room.replayed). Every queued command
    answers QUEUED, then EXEC gives their results in order, a run's INCRBY first (its
    last number)."""

    __slots__ = ("bus", "error", "open", "runs", "slot")

    def __init__(self, slot: int, bus: Poster) -> None:
        self.slot = slot
        self.bus = bus
        self.runs: list[tuple[PostRun, Posting]] = []
        self.open: dict[RoomLink, PostRun] = {}  # the run each room adds to
        self.error: ReplyError | None = None  # the first refused at queueing (EXECABORT)

    def add(
        self, posting: Posting, post: Post, room: RoomLink, event: bytes, count: int, own: bool
    ) -> PostRun:
        """Add ``event`` to ``room``'s run (a run of its own if ``own``: replayed)."""
        run = None if own else self.open.get(room)
        if run is None:
            run = PostRun(room, now_ms(), room.shared, post, own)
            self.runs.append((run, posting))
            if not own:
                self.open[room] = run
        run.events.append(event)
        run.count += count
        return run

    def build(self) -> tuple[bytes, int]:
        """The transaction's commands (MULTI already sent) and how many they are."""
        parts, commands = [], 0
        for run, posting in self.runs:
            lines = run.events[0] if len(run.events) == 1 else b"".join(run.events)
            parts.append(posting.run(run.count, run.ts, lines))
            commands += posting.size
            if run.trim:
                parts.append(posting.trim)
                commands += 1
        return b"".join(parts), commands

    def queued(self, reply: Any) -> None:
        if type(reply) is ReplyError and self.error is None:
            self.error = reply

    def executed(self, reply: Any) -> None:
        bus = self.bus
        if not isinstance(reply, list):  # EXECABORT, or the connection lost
            if isinstance(reply, ReplyError):  # nothing in it was published
                bus.refused(self, self.error or reply)
            return
        index = 0
        for run, posting in self.runs:
            last, kept = reply[index], reply[index + 1]
            index += posting.size + run.trim
            if type(last) is not int:
                bus.report_error(ReplyError(str(last)), f"numbering room {run.room.name!r}")
                continue
            if type(kept) is ReplyError:  # published, but not kept in the history
                bus.report_error(kept, "keeping a message in the room's history")
            bus.posted(run, last - run.count + 1)


class HeldPosts:
    """Messages that wait for Redis: (their room's post, the v1 lines), in the order
    they were posted, within ``bound`` bytes (--bus-outage-queue). Posted once Redis
    is back (:meth:`post_all`). Runs of a transaction Redis refused go back ahead of
    what was held since, in the order they were posted (:meth:`hold_refused`)."""

    __slots__ = ("bound", "queue", "refused_at", "stats", "undelivered")

    def __init__(self, bound: int, stats: BusStats) -> None:
        self.bound = bound
        self.stats = stats
        #: (post, event) in posting order; read as a truth value on every post (in C).
        self.queue: deque[tuple[Post, bytes]] = deque()
        #: Where the next refused run goes back (None: no refusal under way).
        self.refused_at: int | None = None
        #: Posted while a refusal is under way: (a room's fan_out, event), delivered
        #: here once the refusal is over (:meth:`deliver`).
        self.undelivered: list[tuple[Callable[[bytes], None], bytes]] = []

    def deliver(self, fan_out: Callable[[bytes], None], event: bytes) -> None:
        """Deliver ``event`` to this instance's members: at once, or, while a refusal is
        under way, once it is over (:meth:`refusal_over`). Transactions still in flight
        may be refused in turn, and their messages, posted before this one, reach the
        local members as their replies come in: this one must come after them."""
        if self.refused_at is None:
            fan_out(event)
        else:
            self.undelivered.append((fan_out, event))

    def refusal_over(self) -> None:
        """Every transaction in flight at the first refusal has answered: deliver, in
        order, what was posted meanwhile."""
        self.refused_at = None
        undelivered, self.undelivered = self.undelivered, []
        for fan_out, event in undelivered:
            fan_out(event)

    def hold(self, post: Post, event: bytes) -> bool | None:
        """Keep ``event`` at the end: None (held), or False past the bound (it stays
        this instance's only: counted, logged)."""
        if not self._fits(event):
            return False
        self.queue.append((post, event))
        return None

    def hold_refused(self, post: Post, event: bytes) -> None:
        """Keep a refused run, behind the ones refused before it and ahead of the rest."""
        at = self.refused_at or 0
        if self._fits(event):
            self.queue.insert(at, (post, event))
            self.refused_at = at + 1

    def _fits(self, event: bytes) -> bool:
        stats = self.stats
        if stats.held_bytes + len(event) > self.bound:
            stats.held_lost += event.count(b"\n")
            if stats.held_lost == 1 or stats.held_lost % _LOGGED_EVERY == 0:
                log.error(
                    "redis bus: %d MiB of messages wait for Redis (--bus-outage-queue); "
                    "%d more delivered on this instance only so far",
                    self.bound >> 20,
                    stats.held_lost,
                )
            return False
        stats.held += event.count(b"\n")
        stats.held_bytes += len(event)
        return True

    def post_all(self) -> None:
        """Redis is back: post what was held, in order, while the connection lasts."""
        queue, stats = self.queue, self.stats
        if not queue:
            return
        count = stats.held
        while queue:
            post, event = queue[0]
            lines = event.count(b"\n")
            if post(event, lines, True) is not True:
                break  # lost again: the rest waits for the next reconnection
            queue.popleft()
            stats.held -= lines
            stats.held_bytes -= len(event)
        log.warning(
            "redis bus: %d messages posted during the outage are shared now (%d still wait)",
            count - stats.held,
            stats.held,
        )
