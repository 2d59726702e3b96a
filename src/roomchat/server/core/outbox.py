"""Every session's outbound bytes, written with one write per session per loop turn.

The :class:`Outbox` owns one :class:`Mailbox` per session and the loop turn's order.
A mailbox is the only place a session's unsent bytes live, and only the outbox empties
it:

- a room keeps the turn's events and tells the outbox on its first fan-out of the turn
  (:meth:`Outbox.room_active`); at the end of the turn the outbox has it *distribute*
  them: the turn's bytes, joined, to each member with ``mailbox.enqueue(bytes)``, which
  *is* the pending list's C-level ``append`` (no Python call per recipient, one per
  member however many events the turn had);
- a session queues an event of its own (its login, the reply to a join) with
  :meth:`Mailbox.send`; the outbox first has the mailbox's rooms hand over what they
  hold for it this turn (so it overtakes none of their events) and makes sure it is
  written this turn. The outbox is the one place that coordinates the two: a room
  never calls a mailbox but through ``enqueue``, a mailbox never calls a room.

At the end of the turn :meth:`Outbox.flush` then joins each mailbox's list and hands it
to the connection's ``write`` in one call, visiting each mailbox once: at high rates this
is what saves the server from one syscall per event.

Backpressure (docs/architecture.md, "Bounds"): when a session's connection holds more
than ``--max-pending-output`` unsent, the shell tells the outbox (:meth:`Outbox.fall_behind`)
and the outbox tells the mailbox's rooms, which then stop reading the sessions that post
into them until it has caught up (:meth:`Outbox.catch_up`; rooms.py ``ChatRoom.hold``).

Counting (``/metrics``, docs/operating.md) costs nothing per write: bytes out are counted
where they are queued (a room's fan-outs by the room, from the bytes per member it keeps
for the turn; a session's own events in :meth:`Mailbox.send`) less what a closed mailbox
drops; writes are counted per room per turn, one per mailbox the flush visits, less the
visits that wrote nothing.

The coalescing window (``--coalesce-us``, see docs/architecture.md): when a flush comes
less than the window after the previous turn began, the outbox waits for the rest of the
window before the loop polls again, so that steady traffic is read, routed and written in
one turn per window instead of one turn (one wake-up) per message. The wait is not a
blind sleep: it ends at once when a *priority* file descriptor becomes readable (the
listening sockets, so accepting is never throttled; the bus's connections, so bus reads
and heartbeats are never held up). Only client traffic waits, in the kernel, for at most
the window.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from roomchat.server.core.stats import Reading, ServerStats

__all__ = ["FLUSH_AT", "FanOutRoom", "Mailbox", "Outbox", "Writer"]

#: A room that fans out more than this in one turn has its members written at once, so
#: that one turn's burst cannot pile up unbounded before the slow-consumer check (the
#: transport's high-water mark) sees it. The same bound applies to a session's own events.
FLUSH_AT = 256 * 1024

Writer = Callable[[bytes], None]


class FanOutRoom(Protocol):
    """What the outbox needs of a room: the mailboxes it fans out to, and its turn."""

    @property
    def members(self) -> Sequence[Mailbox]: ...

    def distribute(self) -> None:
        """Queue the turn's events for the members."""

    def hand_over(self, member: Mailbox) -> None:
        """Queue for one member now what the turn has for it so far."""

    def fall_behind(self, member: Mailbox) -> None:
        """The member's connection is behind: hold back the room's senders."""

    def catch_up(self, member: Mailbox) -> None:
        """The member no longer holds back the room's senders."""


class Mailbox:
    """One session's outbound queue. The session and the rooms only append to it."""

    __slots__ = (
        "_outbox",
        "_own",
        "_pending",
        "_stats",
        "_write",
        "behind",
        "enqueue",
        "key",
        "rooms",
        "user_id",
        "v2",
    )

    def __init__(self, outbox: Outbox, user_id: str, key: str, write: Writer) -> None:
        self._outbox = outbox
        self.user_id = user_id
        #: The session speaks version 2: rooms send it v2 bytes (set before any join).
        self.v2 = False
        #: Identifies the session everywhere (presence keys, join markers on the bus).
        self.key = key
        self._pending: list[bytes] = []
        #: The rooms fanning out to this session (attach, detach).
        self.rooms: list[FanOutRoom] = []
        #: Queue bytes for this session; rooms call it once per delivery. It is the list's
        #: own ``append``, so a fan-out runs no Python code per recipient.
        self.enqueue: Callable[[bytes], None] = self._pending.append
        self._own = 0  # bytes queued through send() since the last flush
        #: Its connection holds more than --max-pending-output and holds back the
        #: senders of its rooms (Outbox.fall_behind, Outbox.catch_up).
        self.behind = False
        self._write: Writer | None = write
        self._stats = outbox.stats

    def __repr__(self) -> str:
        return f"<mailbox {self.key} user {self.user_id}>"

    @property
    def closed(self) -> bool:
        return self._write is None

    @property
    def pending_bytes(self) -> int:
        return sum(map(len, self._pending))

    def attach(self, room: FanOutRoom) -> None:
        """``room`` fans out to this session from now on."""
        if room not in self.rooms:
            self.rooms.append(room)

    def detach(self, room: FanOutRoom) -> None:
        self.rooms.remove(room)

    def send(self, data: bytes) -> None:
        """Queue an event for this session alone, written by the end of the turn, after
        what its rooms queued for it before (they keep a turn's events until its end)."""
        if self.rooms and self._outbox.fanned_out:
            self._outbox.hand_over(self)
        if not self._own:
            self._outbox.add(self)
        self._pending.append(data)
        size = len(data)
        self._stats.sent += size  # bytes out: counted when queued (not on the hot path)
        self._own += size
        if self._own > FLUSH_AT:
            self.flush()

    def flush_soon(self) -> None:
        """Make sure what is pending is written by the end of the turn, though no room
        that fanned out to it this turn will flush it (it has just left them)."""
        if self._pending and not self._own:
            self._own = 1  # registered: a later send() must not register it twice
            self._outbox.add(self)

    def flush(self) -> None:
        """Write what is pending, and what its rooms have for it this turn, in one call
        now (or drop it if the mailbox is closed)."""
        self._outbox.flush_now(self)

    def write_out(self) -> None:
        """Write what is pending in one call (or drop it if the mailbox is closed).

        Counting: what it writes was counted when queued, and the caller counts one write
        per call (:meth:`Outbox.flush`: per turn, not per write); a call that writes
        nothing (rare) takes its write back."""
        pending = self._pending
        if not pending:
            self._stats.writes -= 1
            return
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._own = 0
        write = self._write
        if write is None:
            stats = self._stats
            stats.writes -= 1
            stats.sent -= len(data)  # dropped
            return
        write(data)

    def close(self) -> None:
        """Nothing more is written; what is queued, now or later, is dropped."""
        self._write = None
        if self._pending:
            self._stats.sent -= self.pending_bytes  # dropped: counted when queued
            self._pending.clear()
        self._own = 0


class Outbox:
    """The mailboxes with something to write this turn, flushed once at its end."""

    __slots__ = (
        "_call_soon",
        "_mailboxes",
        "_poller",
        "_priority",
        "_scheduled",
        "_turn_began",
        "_turn_started",
        "_window",
        "fanned_out",
        "pauses",
        "stats",
    )

    def __init__(
        self,
        call_soon: Callable[[Callable[[], None]], object],
        stats: ServerStats,
        window: float = 0.0,
    ):
        self._call_soon = call_soon
        #: Writes, bytes out and the turn-duration histogram are counted here.
        self.stats = stats
        self._turn_began = 0.0  # when this turn first queued output (the flush is due)
        self._mailboxes: list[Mailbox] = []
        #: The rooms that fanned out this turn (a dict: each once, in order).
        self.fanned_out: dict[FanOutRoom, None] = {}
        self._scheduled = False
        self._window = window
        self._turn_started = 0.0
        self._poller = select.epoll() if window else None
        self._priority: set[int] = set()
        #: How many coalescing waits ran (for tests and metrics).
        self.pauses = 0

    def readings(self) -> list[Reading]:
        return [
            Reading(
                "coalesce_pauses",
                "counter",
                "Coalescing waits (--coalesce-us) the event loop made.",
                self.pauses,
            )
        ]

    def open(self, user_id: str, key: str, write: Writer) -> Mailbox:
        return Mailbox(self, user_id, key, write)

    # -- what a coalescing wait may not hold up ---------------------------------------
    def watch(self, fd: int) -> None:
        """End any coalescing wait as soon as ``fd`` is readable (listening sockets,
        bus connections)."""
        if self._poller is not None and fd >= 0 and fd not in self._priority:
            self._poller.register(fd, select.EPOLLIN)
            self._priority.add(fd)

    def unwatch(self, fd: int) -> None:
        if self._poller is not None and fd in self._priority:
            self._priority.discard(fd)
            with contextlib.suppress(OSError, ValueError):  # closed: the kernel forgot it
                self._poller.unregister(fd)

    def close(self) -> None:
        if self._poller is not None:
            self._poller.close()
            self._poller = None
            self._priority.clear()

    # -- queuing -----------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._turn_began = time.perf_counter()
            self._call_soon(self.flush)

    def add(self, mailbox: Mailbox) -> None:
        """A mailbox has an event of its own pending (Mailbox.send)."""
        self._mailboxes.append(mailbox)
        self._schedule()

    def room_active(self, room: FanOutRoom) -> None:
        """A room has events this turn: it distributes them at the turn's end."""
        self.fanned_out[room] = None
        if not self._scheduled:  # _schedule, written out: once per room per turn
            self._scheduled = True
            self._turn_began = time.perf_counter()
            self._call_soon(self.flush)

    def flush_room(self, room: FanOutRoom) -> None:
        """A room's turn has grown past FLUSH_AT: distribute it and write its members."""
        room.distribute()
        for member in room.members:
            self.flush_now(member)

    def hand_over(self, mailbox: Mailbox) -> None:
        """Queue for ``mailbox`` what its rooms hold for it this turn, so that an event
        of its own does not overtake them."""
        for room in mailbox.rooms:
            room.hand_over(mailbox)

    # -- backpressure ------------------------------------------------------------------
    def fall_behind(self, mailbox: Mailbox) -> None:
        """``mailbox``'s connection holds more than --max-pending-output unsent (the
        shell's ``pause_writing``): its rooms hold back the sessions that post into them
        (stop reading them) until it catches up, rather than queue more for it."""
        if not mailbox.behind and not mailbox.closed:
            mailbox.behind = True
            for room in mailbox.rooms:
                room.fall_behind(mailbox)

    def catch_up(self, mailbox: Mailbox) -> None:
        """``mailbox`` no longer holds back its rooms' senders: it has drained (the
        shell's ``resume_writing``), held them for as long as it may, or is cut off."""
        if mailbox.behind:
            mailbox.behind = False
            for room in mailbox.rooms:
                room.catch_up(mailbox)

    def flush_now(self, mailbox: Mailbox) -> None:
        """Write ``mailbox`` now: what its rooms hold for it, then what it has pending."""
        self.hand_over(mailbox)
        self.stats.writes += 1
        mailbox.write_out()

    def flush(self) -> None:
        self._scheduled = False
        rooms, self.fanned_out = self.fanned_out, {}
        mailboxes, self._mailboxes = self._mailboxes, []
        for room in rooms:
            room.distribute()
        # Each mailbox once, though it may be in several of the rooms (a set, built in C).
        if len(rooms) == 1 and not mailboxes:
            targets: Collection[Mailbox] = next(iter(rooms)).members
        else:
            targets = set(mailboxes)
            for room in rooms:
                targets.update(room.members)
        # One write counted per write_out call (write_out takes back the rare one that
        # writes nothing: its rooms had nothing for it this turn, or it is closed).
        for mailbox in targets:
            mailbox.write_out()
        self.stats.writes += len(targets)
        if self._turn_began:
            # From the turn's first queued output to its last write (roomchat_turn_seconds
            # in docs/operating.md): the routing and writing of one turn, per turn.
            self.stats.turn.observe(time.perf_counter() - self._turn_began)
            self._turn_began = 0.0
        if self._window:
            self._coalesce()

    def _coalesce(self) -> None:
        now = time.monotonic()
        rest = self._window - (now - self._turn_started)
        # epoll counts whole milliseconds: round to the nearest, so the wait averages the
        # window rather than always overshooting it.
        milliseconds = round(rest * 1000)
        if milliseconds > 0 and self._poller is not None:
            self.pauses += 1
            # Deliberate: see the module docstring. Ends early if a priority fd is readable.
            self._poller.poll(milliseconds / 1000, 1)
            now = time.monotonic()
        self._turn_started = now
