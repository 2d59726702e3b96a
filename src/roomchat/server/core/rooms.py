"""Rooms as one instance sees them, without sockets (docs/architecture.md, "The server").

- :class:`~roomchat.server.core.directory.Directory` owns every :class:`ChatRoom`.
- :class:`ChatRoom` is this instance's side of a room: its *local* members and its
  channel on the bus. A room *posts* every event to the bus (:mod:`roomchat.server.bus`);
  whatever the bus hands back is *fanned out* to the local members. With the in-process
  bus, posting is fanning out; with Redis, every event of a room (messages, ``joined``,
  ``left``) goes round through the room's channel, so every member on every instance sees
  one order.
- Who is in a room (the user registry: first session of a user -> ``joined``, last ->
  ``left``) is :mod:`roomchat.server.core.presence`'s business.
- :class:`UserSessionHandle` is one session's right to post to one room; the session
  hands it back to leave.

A member is a :class:`~roomchat.server.core.outbox.Mailbox`: rooms reach it only through its
``enqueue`` and ``send`` (an event of its own, such as the reply to a join). A room keeps
the turn's events (``_turn``) and, when the outbox flushes, *distributes* them: one
C-level list append per member of the turn's bytes joined, however many messages and
announcements the turn had. A member added during the turn skips what came before it; a
member's own event or leave first takes what the turn holds for it
(:meth:`ChatRoom.hand_over`), so each room's order is kept exactly (across rooms nothing
is ordered).

Joining takes two facts, which may come in either order (with Redis they travel on two
connections): the *reply* (the room's users at the moment of the join, for
``user_joined_room``) and the *marker* (the join's place in the room's stream of events).
Events of the room fanned out between the two are kept for the joiner and handed over
after its ``user_joined_room``, so it sees exactly the events after its join, in order.

Backpressure (docs/architecture.md, "Bounds"): a member whose connection holds more than
``--max-pending-output`` unsent is *behind* (:meth:`ChatRoom.fall_behind`, from the
shell through the outbox). While a room has a member behind, a session about to post
into it is *held* instead (:meth:`ChatRoom.hold`, :class:`Sender`): it keeps that run
and what follows (nothing is dropped) and stops reading, so senders that produce faster
than a reader takes slow down to its pace instead of growing its output until it is cut
off, and a member's output grows past the mark by at most what was posted before.
When the last member behind catches up (drains to the low-water mark), leaves, is cut
off or has held the room for as long as it may (the shell's ``HOLD_SECONDS``), the room
lets its held senders read again. The hot path pays one attribute test per run posted.
This is per instance: with a shared bus, a room here holds only the senders here.

Version 2 (docs/protocol.md): a room keeps two member dicts, v1 sessions and v2 sessions.
A message goes to the v1 ones exactly as before (the v1 line); only when the room has v2
members are the v2 bytes built, once per event (the v1 line with ``,"q":N,"ts":T`` for a
tail), and kept in a second list of the turn's events (``_turn2``). Every message gets
the room's next sequence number where its order is decided: in :meth:`ChatRoom.fan_out`
in-process (the memory bus's publisher *is* ``fan_out``), in Redis with the Redis bus
(which hands the number over through :meth:`ChatRoom.deliver`). The last ``history``
messages are kept as the last ``history`` runs they came in, ``(first seq, count, ts, v1
lines)``: one append per run on the hot path, split into ``(seq, ts, v1 line)`` entries
(history.py) only when a join asks, and then kept until the next run. A run is one
sender's messages of one read, so a busy room holds more than ``history`` messages (at
most ``history`` reads' worth); a room of people, runs of one. A v2 join gets ``history``
between ``user_joined_room`` and what was held back for it, taken at the join's place in
the room's order (the :class:`~roomchat.server.core.history.Snapshot` given with the reply).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import Protocol

import msgspec

from roomchat.protocol import (
    HISTORY_MAX,
    MESSAGE_TAIL,
    MessageDeleted,
    MessageEdited,
    RoomDetail,
    SendMessage,
    UserMessage,
    encode_head,
    encode_messages,
    encode_tail_v2,
    encode_ts_tail_v2,
    encode_user_joined_room,
    encode_users,
)
from roomchat.server.core.clock import now_ms
from roomchat.server.core.errors import AlreadyJoined, NotJoined, RoomError, UnknownRoom
from roomchat.server.core.history import (
    Change,
    Entry,
    HistoryRequest,
    Snapshot,
    StoredMessage,
    history_event,
)
from roomchat.server.core.outbox import FLUSH_AT, Mailbox
from roomchat.server.core.ports import Participant, Publisher
from roomchat.server.core.stats import ServerStats

__all__ = [
    "AlreadyJoined",
    "ChatRoom",
    "JoinCallback",
    "Member",
    "NotJoined",
    "RoomError",
    "Sender",
    "Turns",
    "UnknownRoom",
    "UserSessionHandle",
]

_encode_json = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(UserMessage).decode
_decode_change = msgspec.json.Decoder(MessageEdited | MessageDeleted).decode
#: How the events that change a held message begin (message_edited, message_deleted).
_CHANGED = b'{"_et":"message_'

_time_ns = time.time_ns
_TAIL_LENGTH = len(MESSAGE_TAIL)
#: A run of messages held for history: (first seq, count, ts, its v1 lines).
HeldRun = tuple[int, int, int, bytes]


def _lines(event: bytes, count: int) -> list[bytes]:
    """The ``count`` v1 lines of a run: a run of one as it is (with its CRLF), the lines
    of a longer one without theirs."""
    return [event] if count == 1 else event.split(b"\r\n")[:count]


#: Members per room (local members of rooms with at least one), for /metrics.
ROOM_MEMBER_BUCKETS = (1, 2, 5, 10, 50, 100, 500, 1000, 5000, 10000)
#: Rooms listed by name in roomchat_room_members_top (bounded cardinality).
TOP_ROOMS = 10


#: A member of a room is a session's mailbox: rooms reach it only through
#: ``enqueue`` (a turn's events), ``send`` (an event of its own, such as the reply to a
#: join), ``attach``/``detach`` and ``flush_soon``.
Member = Mailbox


class Turns(Protocol):
    """What a room tells the outbox about its turn (implemented by outbox.Outbox)."""

    def room_active(self, room: ChatRoom) -> None:
        """The room has its first events of this turn: distribute them at its end."""

    def flush_room(self, room: ChatRoom) -> None:
        """The room's turn has grown past FLUSH_AT: distribute it and write its members
        now, so that one turn's burst cannot pile up before the slow-consumer check."""


class Sender(Protocol):
    """A session that posts into rooms, as a room holding it back sees it (Session)."""

    def released(self) -> None:
        """The room that held it (:meth:`ChatRoom.hold`) has no member behind any more:
        it posts what it kept and reads again."""


#: How a join ends: the handle, or the reason it failed.
JoinCallback = Callable[["UserSessionHandle | RoomError"], None]


class _Joining:
    """A join between its request and its completion."""

    __slots__ = ("done", "held", "marked", "member", "request", "snapshot", "users", "v2")

    def __init__(self, member: Member, done: JoinCallback, request: HistoryRequest | None) -> None:
        self.member = member
        self.done = done
        self.v2 = getattr(member, "v2", False)
        self.request = request  # v2: what history the joiner asked for
        self.users: bytes | None = None  # the reply, once it came (encode_users)
        self.snapshot: Snapshot | None = None  # v2: the history at the join's place
        self.marked = False  # the marker came: events from here on are the joiner's
        self.held: list[bytes] = []  # events after the marker, before the reply


class ChatRoom:
    """One room on this instance.

    Counting (stats.py, docs/operating.md): nothing is counted per message, per fan-out
    or per member. ``seq`` counts the room's messages, and ``turn_bytes`` +
    ``fanned_bytes`` the bytes fanned out to each v1 member (the turn's also bound the
    turn: :meth:`_queued`). The members do not change between two changes of
    membership, so before each change the room adds members x messages (deliveries) and
    v1 members x bytes (bytes out) to the stats (:meth:`_count`), and the stats add what
    is due since when they are read. In process every message numbered here was posted
    here: ``seq`` is also the count of messages received (other buses: :meth:`connect`).
    """

    __slots__ = (
        "_archive",
        "_bytes_counted",
        "_changes",
        "_counted",
        "_entries",
        "_held",
        "_history",
        "_joining",
        "_members",
        "_members2",
        "_numbered_here",
        "_publish",
        "_replayed",
        "_skip",
        "_stats",
        "_turn",
        "_turn2",
        "_turns",
        "behind",
        "description",
        "epoch",
        "fanned_bytes",
        "history_size",
        "name",
        "restricted",
        "seq",
        "shared",
        "turn_bytes",
    )

    def __init__(
        self,
        detail: RoomDetail,
        turns: Turns,
        stats: ServerStats,
        *,
        history: int = HISTORY_MAX,
    ) -> None:
        self.name = detail.name
        self._stats = stats
        self.description = detail.description
        self._turns = turns
        # Local members -> their enqueue: a fan-out calls these directly. v1 sessions
        # in the first, v2 sessions in the second (they get other bytes).
        self._members: dict[Member, Callable[[bytes], None]] = {}
        self._members2: dict[Member, Callable[[bytes], None]] = {}
        # This turn's events, queued for every member at once when the turn ends
        # (distribute): v1 bytes and v2 bytes. A member added during the turn, or handed
        # its share early (hand_over), skips the first _skip[member] of them.
        self._turn: list[bytes] = []
        self._turn2: list[bytes] = []
        self._skip: dict[Member, int] = {}
        #: The room's latest sequence number (as this instance knows it).
        self.seq = 0
        #: Bytes of v1 events fanned out to each member, this turn and before.
        self.turn_bytes = 0
        self.fanned_bytes = 0
        self._counted = 0  # seq up to which the deliveries are in the stats
        self._bytes_counted = 0  # fanned_bytes + turn_bytes up to which bytes out are
        self.history_size = history
        # The last ``history`` runs, (first seq, count, ts, v1 lines), oldest first: at
        # least the last ``history`` messages, bounded in C (maxlen). None: no history
        # kept (seq still counts).
        self._history: deque[HeldRun] | None = deque(maxlen=history) if history > 0 else None
        # The last ``history`` messages as entries (:meth:`entries`) and the newest run
        # held when they were taken (None: none was).
        self._entries: tuple[HeldRun | None, tuple[Entry, ...]] = (None, ())
        self._joining: dict[str, _Joining] = {}  # member key -> its join in progress
        self._publish: Publisher = self.fan_out  # set by the bus
        self._numbered_here = True  # the bus's publisher is fan_out (the in-process bus)
        #: Whether a message needs a check before it is posted (a mute, slow mode, a
        #: direct message not open on both sides): the Directory keeps it.
        self.restricted = False
        #: The epoch of the room's numbering ("" until the store or the bus says).
        self.epoch = ""
        # Where its messages are kept for good (Archiving.run), when numbered here.
        self._archive: Callable[[str, str, int, int, int, bytes], None] | None = None
        # Edits and deletions of the messages held in _history, by number.
        self._changes: dict[int, Change] = {}
        #: The last number delivered from the bus (numbered elsewhere: Redis), which a
        #: catch-up after an outage goes on from.
        self.shared = 0
        # Runs posted during a bus outage (delivered here then) that the bus posts now:
        # when they come back numbered, the local members must not get them again.
        self._replayed: dict[bytes, int] = {}
        #: The members behind (see the module docstring), None when there are none: a
        #: session tests it before each run it posts here (Session._handle).
        self.behind: set[Member] | None = None
        # The sessions held while members are behind (a dict: each once, in order).
        self._held: dict[Sender, None] | None = None
        self._stats.rooms.append(self)

    def __repr__(self) -> str:
        return f"<room {self.name!r}: {self.member_count} local members>"

    def connect(self, publish: Publisher, numbered_here: bool) -> None:
        """The bus says how this room posts (the Directory wires it). Messages numbered
        elsewhere (Redis) are counted as they are posted; the in-process bus's publisher
        is fan_out, and ``seq`` counts them."""
        self._numbered_here = numbered_here
        if numbered_here:
            self._publish = publish
            return
        stats = self._stats

        def publish_counted(event: bytes, count: int) -> bool | None:
            stats.messages += count
            return publish(event, count)

        self._publish = publish_counted

    def keep(
        self, epoch: str, last: int, archive: Callable[[str, str, int, int, int, bytes], None]
    ) -> None:
        """Number on from ``last`` in ``epoch`` and hand every message numbered here to
        ``archive`` (the store's, in process: Directory.keep_with)."""
        self.epoch = epoch
        if last > self.seq:
            self._count()
            self.seq = self._counted = last
        self._archive = archive

    @property
    def members(self) -> list[Member]:
        """The local sessions receiving this room's events (v1 ones first; a copy)."""
        return [*self._members, *self._members2]

    @property
    def member_count(self) -> int:
        return len(self._members) + len(self._members2)

    # -- counting (see the class docstring) ---------------------------------------------
    @property
    def deliveries_due(self) -> int:
        """Messages fanned out since the last :meth:`_count`, times the members (the
        same ever since): deliveries not yet in the stats."""
        return (len(self._members) + len(self._members2)) * (self.seq - self._counted)

    @property
    def bytes_due(self) -> int:
        """Bytes fanned out to each v1 member since the last :meth:`_count`, times the v1
        members: bytes out not yet in the stats (v2 members' are counted at once)."""
        return len(self._members) * (self.fanned_bytes + self.turn_bytes - self._bytes_counted)

    @property
    def messages_posted(self) -> int:
        """Messages posted here and numbered here (the in-process bus), for the stats."""
        return self.seq if self._numbered_here else 0

    def _count(self) -> None:
        """Put what is due in the stats; called before the members change."""
        stats = self._stats
        stats.delivered += self.deliveries_due
        stats.sent += self.bytes_due
        self._counted = self.seq
        self._bytes_counted = self.fanned_bytes + self.turn_bytes

    def _drop_held(self, joining: _Joining) -> None:
        """What was held back for a joiner was counted as sent to it: take it back (it
        is dropped, or sent again with Member.send, which counts it)."""
        if joining.held:
            self._stats.sent -= sum(map(len, joining.held))

    @property
    def busy(self) -> bool:
        """Whether any local session is in the room or joining it (bus interest)."""
        return bool(self._members or self._members2 or self._joining)

    def holds(self, member: Participant) -> bool:
        """Whether a session is in the room or joining it."""
        if member in self._members or member in self._members2:
            return True
        joining = self._joining.get(member.key)
        return joining is not None and joining.member is member

    def snapshot(self) -> Snapshot:
        """The history this instance holds, at this moment of the room's order."""
        return Snapshot(
            self.seq,
            self.entries(),
            self.epoch,
            dict(self._changes),
        )

    def entries(self) -> tuple[Entry, ...]:
        """The last ``history`` messages held, oldest first: (seq, ts, v1 line), the line
        with its CRLF for a run of one, without for the lines of a longer run."""
        history = self._history or ()
        newest = history[-1] if history else None
        taken_at, entries = self._entries
        # Every run held is a new tuple, kept alive here while it is the one compared:
        # "is" tells any change (a run, a purge, a preload, numbers that start again).
        if taken_at is not newest:
            held: list[Entry] = []
            for first, count, ts, event in history:
                held += zip(range(first, first + count), repeat(ts), _lines(event, count))
            entries = tuple(held[-self.history_size :])
            self._entries = (newest, entries)
        return entries

    def preload(self, stored: Iterable[StoredMessage]) -> None:
        """Hold the store's last messages again (at start-up, before anyone joins), so
        that a join's history and catch-up go on across a restart."""
        history = self._history
        if history is None:
            return
        for message in stored:
            line = (
                encode_head(UserMessage(self.name, message.user, ""))
                + _encode_json(message.content or "")
                + MESSAGE_TAIL
            )
            history.append((message.seq, 1, message.ts, line))
            if message.content is None or message.edited is not None:
                self._changes[message.seq] = (message.content, message.edited or message.ts)

    def held(self, seq: int) -> tuple[str, str | None, int] | None:
        """Message ``seq`` as this instance holds it: (sender, content, time), the
        content None once deleted; None if it is not held here."""
        history = self._history
        if not history or seq < history[0][0] or seq >= history[-1][0] + history[-1][1]:
            return None
        for first, count, ts, event in history:
            if first <= seq < first + count:
                line = _lines(event, count)[seq - first]
                try:
                    message = _decode_message(line)
                except msgspec.DecodeError:
                    return None
                change = self._changes.get(seq)
                if change is None:
                    return message.user_id, message.content, ts
                return message.user_id, change[0], ts
        return None

    def changed(self, seq: int, content: str | None, ts: int) -> None:
        """Message ``seq`` was edited (``content``) or deleted (None): what a join's
        history shows from now on. Changes of messages no longer held are dropped."""
        history = self._history
        if not history:
            return
        self._changes[seq] = (content, ts)
        oldest = history[0][0]
        for number in [number for number in self._changes if number < oldest]:
            del self._changes[number]

    def forget(self) -> None:
        """Hold no message for joins any more (an admin purged the room's history);
        the numbering goes on."""
        if self._history is not None:
            self._history.clear()
        self._changes.clear()

    def relay(self, event: bytes) -> None:
        """A v2-only event (an edit, a deletion, typing) for the local v2 members, in
        the room's order; v1 members never see it."""
        if event.startswith(_CHANGED):  # an edit or a deletion: history shows it from now
            try:
                change = _decode_change(event)
            except msgspec.DecodeError:
                pass
            else:
                content = change.content if isinstance(change, MessageEdited) else None
                self.changed(change.seq, content, change.timestamp)
        members2 = self._members2
        if not members2:
            return
        self._turn2.append(event)
        self._stats.sent += len(event) * len(members2)
        self._stats.delivered += len(members2)
        self._turns.room_active(self)  # v2 bytes only: turn_bytes (v1's) stays

    # -- posting and fanning out ---------------------------------------------------------
    def post(self, event: bytes, count: int = 1) -> bool | None:
        """Send an encoded run of ``count`` messages (``user_message`` lines) to every
        member of the room, on every instance. False: it reached this instance's
        members only, and never will the others (the bus)."""
        return self._publish(event, count)

    def fan_out(self, event: bytes, count: int | None = None) -> None:
        """A run of messages (one or more v1 ``user_message`` lines, from one sender)
        whose place in the room's order is decided here (the in-process bus): number
        them, queue them for every local member, keep them. The hot path: one append to
        the turn's events (nothing per member until the turn ends: :meth:`distribute`),
        and nothing counted (``seq`` is). ``count``: how many (None: its lines)."""
        self._turn.append(event)
        if count is None:
            count = event.count(b"\n")
        first = self.seq + 1
        self.seq += count
        archive, keep = self._archive, self._history is not None or self._members2
        if archive is not None or keep:
            ts = _time_ns() // 1_000_000
            if archive is not None:
                archive(self.name, self.epoch, first, count, ts, event)
            if keep:
                self._keep(first, count, ts, event)
        # _queued, written out: this runs once per message in process.
        size = len(event)
        queued = self.turn_bytes + size
        self.turn_bytes = queued
        if queued == size:
            self._turns.room_active(self)
        elif queued > FLUSH_AT:
            self._turns.flush_room(self)

    def replayed(self, event: bytes) -> None:
        """The bus posts ``event`` now, which this instance fanned out during an outage:
        when it comes back numbered (deliver), it only moves the numbering on."""
        self._replayed[event] = self._replayed.get(event, 0) + 1

    def unreplayed(self, event: bytes) -> None:
        """Redis refused the post of ``event`` (:meth:`replayed`): it is not coming back
        yet (it is held again, and posted again later)."""
        left = self._replayed.pop(event, 0) - 1
        if left > 0:
            self._replayed[event] = left

    def deliver(self, seq: int, ts: int, event: bytes) -> None:
        """A run of messages numbered elsewhere (the Redis bus: ``seq`` is its first's)."""
        count = event.count(b"\n")
        if self._replayed and event in self._replayed:  # seen here during an outage
            left = self._replayed.pop(event) - 1
            if left:
                self._replayed[event] = left
            due = self.seq - self._counted  # what this instance numbered, as deliver does
            self._stats.delivered += (len(self._members) + len(self._members2)) * due
            self.seq = self._counted = self.shared = seq + count - 1
            return
        self._turn.append(event)
        # Redis's numbers may jump (events of the room while nobody here was in it; local
        # numbers during an outage): count what is due before, and this run, at once.
        due = self.seq - self._counted + count
        self._stats.delivered += (len(self._members) + len(self._members2)) * due
        self.seq = self._counted = self.shared = seq + count - 1
        if self._history is not None or self._members2:
            self._keep(seq, count, ts, event)
        self._queued(len(event))

    def _keep(self, first: int, count: int, ts: int, event: bytes) -> None:
        """v2's part of a fan-out: the run held for history, and the numbered lines for
        the v2 members (per message, but in C where possible)."""
        history = self._history
        if history is not None:
            history.append((first, count, ts, event))
        members2 = self._members2
        if members2:
            event2 = b"".join(
                [
                    line[: line.rindex(b"}")] + encode_tail_v2(seq, ts)
                    for seq, line in enumerate(_lines(event, count), first)
                ]
            )
            self._turn2.append(event2)
            self._stats.sent += len(event2) * len(members2)

    def announce(self, event: bytes) -> None:
        """A ``room_participation`` (v1 line) for every local member; v2 ones get ``ts``."""
        self._turn.append(event)
        if self._members2:
            event2 = event[:-_TAIL_LENGTH] + encode_ts_tail_v2(now_ms())
            self._turn2.append(event2)
            self._stats.sent += len(event2) * len(self._members2)
        self._stats.delivered += len(self._members) + len(self._members2)  # not numbered
        self._queued(len(event))

    # -- the turn's events ---------------------------------------------------------------
    def _queued(self, size: int) -> None:
        """``size`` more bytes for each v1 member this turn: the first ones make the
        outbox distribute the room at the turn's end; past FLUSH_AT it is written now."""
        queued = self.turn_bytes + size
        self.turn_bytes = queued
        if queued == size:  # the turn's first (or the first since an early write)
            self._turns.room_active(self)
        elif queued > FLUSH_AT:
            self._turns.flush_room(self)

    def _side(self, member: Member) -> tuple[dict[Member, Callable[[bytes], None]], list[bytes]]:
        """The member dict ``member`` is in and the turn's events it gets (v1 or v2);
        a KeyError if it is in neither."""
        if member in self._members:
            return self._members, self._turn
        if member in self._members2:
            return self._members2, self._turn2
        raise KeyError(member)

    def distribute(self) -> None:
        """Queue the turn's events for every member: one append per member, of the turn's
        bytes joined, however many events the turn had (Outbox.flush, at the turn's end).
        A member added during the turn, or handed its share early, gets only the rest."""
        self.fanned_bytes += self.turn_bytes
        self.turn_bytes = 0
        skip = self._skip
        late: list[tuple[dict[Member, Callable[[bytes], None]], Member, Callable[[bytes], None]]]
        late = []
        if skip:
            for member, start in skip.items():
                members, turn = self._side(member)
                enqueue = members.pop(member)  # out of the loops below for now
                if start < len(turn):
                    enqueue(b"".join(turn[start:]))
                late.append((members, member, enqueue))
            skip.clear()
        # Written out for v1 and v2 rather than looped over: this runs per room per turn.
        turn = self._turn
        if turn:
            data = turn[0] if len(turn) == 1 else b"".join(turn)
            turn.clear()
            for enqueue in self._members.values():
                enqueue(data)
        turn = self._turn2
        if turn:
            data = turn[0] if len(turn) == 1 else b"".join(turn)
            turn.clear()
            for enqueue in self._members2.values():
                enqueue(data)
        for members, member, enqueue in late:
            members[member] = enqueue

    def hand_over(self, member: Member) -> None:
        """Queue for ``member`` now what the turn has for it so far, so that an event of
        its own (Mailbox.send) does not overtake them."""
        try:
            members, turn = self._side(member)
        except KeyError:
            return
        start = self._skip.get(member, 0)
        if start < len(turn):
            members[member](b"".join(turn[start:]))
            self._skip[member] = len(turn)

    def _add(self, member: Member, enqueue: Callable[[bytes], None], v2: bool) -> None:
        """Fan out to ``member`` from here on (not the turn's events before this)."""
        turn = self._turn2 if v2 else self._turn
        (self._members2 if v2 else self._members)[member] = enqueue
        if turn:
            self._skip[member] = len(turn)
        member.attach(self)
        if member.behind:  # already behind: it holds back this room's senders too
            self.fall_behind(member)

    def _discard(self, member: Member) -> bool:
        """Stop fanning out to ``member``, once it has what the turn queued for it so
        far; whether it was a member. A closed member's share is only taken off the
        bytes counted (a wave of disconnections must not copy the turn once each)."""
        try:
            members, turn = self._side(member)
        except KeyError:
            return False
        enqueue = members.pop(member)
        start = self._skip.pop(member, 0)
        if start < len(turn):
            if not member.closed:
                enqueue(b"".join(turn[start:]))
            else:
                # turn_bytes is the size of _turn (kept by the outbox with it).
                whole = start == 0 and turn is self._turn and self.turn_bytes
                self._stats.sent -= whole or sum(map(len, turn[start:]))
        member.detach(self)
        if self.behind is not None:
            self.catch_up(member)
        return True

    # -- backpressure (see the module docstring) -----------------------------------------
    def fall_behind(self, member: Member) -> None:
        """``member``'s connection holds more than --max-pending-output: hold back the
        sessions that post here until it catches up."""
        if member in self._members or member in self._members2:
            if self.behind is None:
                self.behind = set()
            self.behind.add(member)

    def catch_up(self, member: Member) -> None:
        """``member`` holds the room back no more (drained, gone, or held it long
        enough); once no member is behind, the held senders are read again."""
        behind = self.behind
        if behind is None or member not in behind:
            return
        behind.discard(member)
        if not behind:
            self.behind = None
            held, self._held = self._held, None
            for sender in held or ():
                sender.released()

    def hold(self, sender: Sender) -> None:
        """A session is about to post here while a member is behind: it waits (keeps
        what it read, reads nothing more) until no member is, and is then told
        :meth:`Sender.released`."""
        if self._held is None:
            self._held = {}
        self._held[sender] = None

    # -- joining -------------------------------------------------------------------------
    def begin_join(
        self, member: Member, done: JoinCallback, request: HistoryRequest | None = None
    ) -> None:
        if member in self._members or member in self._members2 or member.key in self._joining:
            raise AlreadyJoined(f"already in room {self.name!r}")
        self._joining[member.key] = _Joining(member, done, request)

    def joining_request(self, key: str) -> HistoryRequest | None:
        """The history a join in progress asked for (v2), if any."""
        joining = self._joining.get(key)
        return None if joining is None else joining.request

    def join_marker(self, key: str, announcement: bytes | None) -> None:
        """The join's place in the room's stream; ``announcement`` is the "joined" event
        when the user had no other session in the room (fanned out to everyone here)."""
        joining = self._joining.get(key)
        if joining is None:  # the joiner is gone already, or this is another instance's
            if announcement is not None:
                self.announce(announcement)
            return
        if joining.marked:  # told twice (an answer given locally after a lost reply)
            return
        joining.marked = True
        if joining.users is None:
            # Receive from here on, but hold it back until user_joined_room goes first.
            self._count()
            self._add(joining.member, joining.held.append, joining.v2)
            if joining.v2 and joining.snapshot is None:
                joining.snapshot = self.snapshot()
            if announcement is not None:
                self.announce(announcement)
            return
        self._admit(joining)
        if announcement is not None:
            self.announce(announcement)
        # Last: the session may carry on with its next commands (even quit) from here.
        joining.done(UserSessionHandle(self, joining.member))

    def join_reply(
        self, key: str, users: Iterable[str] | bytes, snapshot: Snapshot | None = None
    ) -> None:
        """Presence's answer: the room's users (each once) right after the join, as ids
        or already as :func:`~roomchat.protocol.encode_users` gives them, and (Redis) the
        room's history at the join's place in its order. Without one, a v2 joiner gets
        what this instance holds when the marker comes."""
        joining = self._joining.get(key)
        if joining is None:
            return
        joining.users = users if isinstance(users, bytes) else encode_users(users)
        if snapshot is not None:
            joining.snapshot = snapshot
        if joining.marked:
            self._admit(joining)
            joining.done(UserSessionHandle(self, joining.member))

    def join_failed(self, key: str, error: RoomError) -> None:
        joining = self._joining.pop(key, None)
        if joining is not None:
            self._count()
            self._discard(joining.member)
            self._drop_held(joining)
            joining.done(error)

    def _admit(self, joining: _Joining) -> None:
        """user_joined_room, then what was held back, then the member receives live."""
        member = joining.member
        del self._joining[member.key]
        assert joining.users is not None
        self._count()
        self._discard(member)  # held back from the marker on (if it came first)
        self._drop_held(joining)  # sent again below
        member.send(encode_user_joined_room(self.name, joining.users))
        if joining.v2:
            snapshot = joining.snapshot or self.snapshot()
            request = joining.request or HistoryRequest()
            member.send(history_event(self.name, snapshot, request, self.history_size))
        for event in joining.held:
            member.send(event)
        self._add(member, member.enqueue, joining.v2)

    def remove(self, member: Member) -> bool:
        """Stop fanning out to a member (joined or joining); whether it was here."""
        self._count()
        joining = self._joining.get(member.key)
        if joining is not None and joining.member is member:
            del self._joining[member.key]
            self._discard(member)
            self._drop_held(joining)
            return True
        if not self._discard(member):
            return False
        # What this room queued for it this turn is no longer flushed through the room.
        member.flush_soon()
        return True


class UserSessionHandle:
    """One session's membership of one room: post through it, hand it back to leave."""

    __slots__ = ("_head", "member", "room")

    def __init__(self, room: ChatRoom, member: Member) -> None:
        self.room = room
        self.member = member
        # Everything of a user_message but its content is fixed for this handle: encoded
        # once, by the protocol module (the wire format is written in one place), at the
        # first message (most members of a room never post in it: 80 bytes each saved).
        self._head: bytes | None = None

    def _encode_head(self) -> bytes:
        self._head = head = encode_head(UserMessage(self.room.name, self.member.user_id, ""))
        return head

    def send_message(self, content: str) -> bool | None:
        """Post one message (False: it reached this instance's members only)."""
        head = self._head or self._encode_head()
        return self.room.post(head + _encode_json(content) + MESSAGE_TAIL)

    def send_messages(self, messages: Sequence[SendMessage]) -> bool | None:
        """Several messages at once: their events, in order, posted as one piece (each
        still its own line), so that every member gets one append for all of them."""
        return self.send_contents([message.content for message in messages])

    def send_contents(self, contents: list[str]) -> bool | None:
        """:meth:`send_messages`, given the messages' contents."""
        head = self._head or self._encode_head()
        return self.room.post(encode_messages(head, contents), len(contents))
