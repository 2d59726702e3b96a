"""The narrow interfaces ("ports") between the rules and what carries them further.

The rules (this package: rooms, sessions, presence in memory, names) know nothing of
Redis; the bus backends (roomchat.server.bus) know nothing of the rules' classes. They
meet here, as Centrifuge's ``Broker`` and ``BrokerEventHandler`` meet (the broker never
holds the node's objects):

- :class:`Participant`: a session as presence sees it (who, and which session);
- :class:`RoomLink`: a room as the bus and presence see it: what they may tell it
  (fan out a message, deliver a numbered one, announce, answer a join) and the two
  things they may ask (is a session in it or joining it; is anyone here);
- :class:`Presence`, :class:`SharedNames`, :class:`Bus`: what the rules ask of a backend.

Data flows one way through them: rooms post to the bus; the bus (or presence) hands
events back through :class:`RoomLink`. Nothing here imports a backend or the classes
that implement the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from roomchat.server.core.history import HistoryRequest, Snapshot, StoredMessage
from roomchat.server.core.policy import Outcome, Policy, RoomInfo
from roomchat.server.core.stats import Reading

__all__ = [
    "Answer",
    "Archiving",
    "Bus",
    "BusError",
    "CommunityListener",
    "CommunityStore",
    "Done",
    "HeldNames",
    "MessageStore",
    "Participant",
    "Presence",
    "Publisher",
    "RoomLink",
    "RoomRecord",
    "SharedNames",
    "StoreBatch",
    "StoreError",
    "StoredMessage",
    "Wakeups",
]


#: How a room posts a run of messages through its bus (Bus.publisher): the run's
#: ``user_message`` lines and how many they are. True or None: posted (or held for the
#: bus); False: it reached this instance's members only.
Publisher = Callable[[bytes, int], "bool | None"]


class BusError(Exception):
    """The bus cannot start (bad URL, Redis unreachable). The message says why."""


class Participant(Protocol):
    """A session as presence and the bus see it."""

    @property
    def key(self) -> str:
        """Unique per session across every instance."""
        ...

    @property
    def user_id(self) -> str: ...

    @property
    def v2(self) -> bool:
        """Whether the session speaks version 2 (fixed before its first join)."""
        ...


class RoomLink(Protocol):
    """A room as the bus and presence see it (implemented by rooms.ChatRoom)."""

    @property
    def name(self) -> str: ...

    @property
    def busy(self) -> bool:
        """Whether any local session is in the room or joining it (bus interest)."""
        ...

    #: The epoch of the room's numbering, as this instance last heard it.
    epoch: str
    #: The last number delivered from the bus (``deliver``); a catch-up goes on from it.
    shared: int

    def holds(self, member: Participant) -> bool:
        """Whether ``member`` is in the room or joining it."""
        ...

    def fan_out(self, event: bytes, count: int | None = None) -> None:
        """A run of ``count`` messages numbered here (in process, or locally during an
        outage); None: count its lines."""

    def deliver(self, seq: int, ts: int, event: bytes) -> None:
        """A run of messages numbered elsewhere; ``seq`` is its first's number."""

    def announce(self, event: bytes) -> None:
        """A ``room_participation`` (v1 line) for every local member."""

    def relay(self, event: bytes) -> None:
        """A v2-only event (an edit, a deletion, typing) for every local v2 member."""

    def forget(self) -> None:
        """Drop the messages held for joins (an admin's purge of the room's history)."""

    def replayed(self, event: bytes) -> None:
        """The bus posts now a run this room fanned out during an outage: when it comes
        back numbered (``deliver``), it is not fanned out again."""

    def unreplayed(self, event: bytes) -> None:
        """Redis refused that post: it is held again (undoes one ``replayed``)."""

    def join_reply(
        self, key: str, users: Iterable[str] | bytes, snapshot: Snapshot | None = None
    ) -> None:
        """Presence's answer to a join: the room's users right after it, and (when the
        backend keeps the history) the history at the join's place in the room's order."""

    def join_marker(self, key: str, announcement: bytes | None) -> None:
        """The join's place in the room's stream of events, with the "joined" event when
        the user had no other session in the room."""

    def joining_request(self, key: str) -> HistoryRequest | None:
        """The history a join in progress asked for (v2), if any."""
        ...


class Presence(Protocol):
    """Who is in which room: first session of a user -> "joined", last -> "left"."""

    def join(self, room: RoomLink, member: Participant) -> None:
        """Register a session in a room; answer through ``room.join_reply`` and
        ``room.join_marker``. Must not block."""

    def leave(self, room: RoomLink, member: Participant) -> None:
        """Unregister a session; announce "left" if it was its user's last one."""

    def users(self, room: RoomLink) -> tuple[str, ...]:
        """The room's users as this instance last knew them (for logs and tests)."""
        ...


#: The answer to a name claim: None (the name is the session's) or the spelling under
#: which another user holds it.
Answer = Callable[[str | None], None]


class HeldNames(Protocol):
    """This process's name registry, as the shared one sees it."""

    def held(self) -> list[tuple[str, int]]:
        """Every name held here and by how many sessions."""
        ...


class SharedNames(Protocol):
    """The names of every instance (one per bus; None in-process)."""

    def claim(self, name: str, how: str, answer: Answer) -> None:
        """Hold ``name`` for one session of this instance unless another user holds
        it. ``how``: "new" (a random id: any holder is another user), "name" (free
        only), "proven" (free, or held under this spelling: the same user). Answers
        later; during an outage at once with None (names are this instance's alone)."""

    def hold(self, name: str) -> None:
        """Hold ``name`` for one more session of a user this instance has already."""

    def release(self, name: str) -> None:
        """One session of this instance holding ``name`` has ended."""

    def attach(self, local: HeldNames) -> None:
        """This process's registry (its names are asserted again after an outage)."""


class Wakeups(Protocol):
    """The descriptors whose input must end a coalescing wait at once (outbox.Outbox):
    a bus registers its connections, so that bus traffic is never held up."""

    def watch(self, fd: int) -> None: ...

    def unwatch(self, fd: int) -> None: ...


class Bus(Protocol):
    """Between rooms and the instances that have members in them (roomchat.server.bus)."""

    @property
    def report_spending(self) -> Callable[[str, int, int, Callable[[int], None]], None] | None:
        """Per-user limits (core/flood.py Report): where the instances add up what each
        user sends (None: this process only)."""
        ...

    @property
    def community(self) -> CommunityStore | None:
        """Where this bus keeps rooms, policies and audit logs for every instance (None:
        in this process, community.MemoryStore). Started with the bus."""
        ...

    @property
    def presence(self) -> Presence:
        """Who is in which room, kept consistently with this bus."""
        ...

    @property
    def names(self) -> SharedNames | None:
        """The user names of every instance on this bus (None: this process's only)."""
        ...

    def publisher(self, room: RoomLink) -> Publisher:
        """The function that posts one of ``room``'s runs of messages (its lines, and
        how many: the sender knows). Called once per run: must not block (a remote
        bus queues and writes once per turn). It returns False when the run reached
        this instance's members only and never will the others' (Redis away and the
        outage queue full); anything else: it is posted."""
        ...

    def relay(self, room: RoomLink, event: bytes) -> None:
        """A v2-only event for the room's v2 members on every instance (an edit, a
        deletion, typing), in the room's order. Must not block."""

    def forget(self, room: RoomLink) -> None:
        """An admin purged the room's history: every instance drops the messages it
        holds for joins (and Redis its stream). Must not block."""

    def keep_with(self, archive: Archiving) -> None:
        """Where the messages numbered by this bus are kept (None of it in process:
        the rooms hand theirs over themselves, Directory.keep_with)."""

    @property
    def numbers_here(self) -> bool:
        """Whether messages are numbered by the room itself (its publisher is its
        ``fan_out``), so that its sequence number counts what was posted here."""
        ...

    async def start(self) -> None:
        """Connect; raise BusError with a clear sentence if that cannot be done."""

    async def close(self) -> None:
        """Flush what is queued and disconnect (after the sessions have left)."""

    @property
    def connected(self) -> bool:
        """Whether events reach other instances right now (readiness)."""
        ...

    @property
    def description(self) -> str:
        """For the start-up log line, without secrets."""
        ...

    def readings(self) -> Iterable[Reading]:
        """The bus's own counters and gauges, for /metrics (read at scrape time)."""
        ...


#: How a community request ends: its result, or the Refused that says why not.
Done = Callable[[object], None]


class CommunityListener(Protocol):
    """What the community store tells every instance (implemented by
    community.Community): each change, once stored, in the order stored per room."""

    def find(self, name: str) -> RoomInfo | None:
        """The room named ``name`` ignoring case, as this instance knows it."""
        ...

    def room(self, name: str) -> RoomInfo | None:
        """The room named exactly ``name``, as this instance knows it."""
        ...

    def names(self) -> list[str]:
        """Every room this instance knows (seeds included)."""
        ...

    def local_users(self, room: str) -> list[str]:
        """The room's users as this instance's presence knows them (in one process:
        all of them)."""
        ...

    def policy_after(self, outcome: Outcome) -> Policy:
        """The room's (or the server's) policy as ``outcome`` leaves it (not applied)."""
        ...

    def redecide(self, outcome: Outcome) -> tuple[Outcome, int]:
        """``outcome``'s action decided again on the policy as it is now (it changed):
        the new outcome and the version it was decided on; or raises Refused."""
        ...

    def server_changed(self, policy: Policy) -> None:
        """The server-wide policy, read again."""

    def room_added(self, info: RoomInfo, policy: Policy, outcome: Outcome | None) -> None:
        """A room exists (``outcome``: its creation; None: read again after an outage)."""

    def moderated(self, outcome: Outcome) -> bool:
        """An action stored; False if this copy of the room is not at the version
        before it (the store then reads the room again and calls room_added)."""
        ...

    def dm_changed(self, info: RoomInfo, user: str, opened: bool) -> None:
        """A direct message opened or closed on ``user``'s side (a name key)."""

    def disconnected(self, user: str, why: str) -> None:
        """Every session of ``user`` (a name key) is to be closed."""


class CommunityStore(Protocol):
    """Where rooms, policies and audit logs live (in process, or Redis); every change
    goes through it and comes back to each instance's listener. Nothing blocks: each
    request answers through ``done`` (its result, or a Refused)."""

    def attach(self, listener: CommunityListener) -> None: ...

    def create(self, info: RoomInfo, policy: Policy, outcome: Outcome, done: Done) -> None:
        """A new room (refused with RoomExists if its name is taken, ignoring case)."""

    def moderate(self, outcome: Outcome, version: int, done: Done) -> None:
        """Store ``outcome``, decided on the policy at ``version`` (refused if the room
        changed meanwhile), numbered ``version + 1``; answers the numbered outcome."""

    def audit(self, room: str | None, limit: int, done: Done) -> None:
        """The last ``limit`` AuditEntry of a room (None: the server's), oldest first."""

    def dm(self, room: str, user: str, opened: bool, done: Done) -> None:
        """Open or close direct message ``room`` on ``user``'s side (a name key)."""

    def disconnect(self, user: str, why: str) -> None:
        """Close every session of ``user`` (a name key) on every instance."""

    def users(self, room: str, done: Done) -> None:
        """The room's users on every instance (a list of user ids)."""


# -- the message store (server/store/: memory, SQLite, PostgreSQL) ----------------------


class StoreError(Exception):
    """The store cannot do it now (down, disk full, refused): the message says why."""


@dataclass(frozen=True, slots=True)
class RoomRecord:
    """What the store holds of a room: its numbering's epoch, its highest number in
    that epoch (0: none yet), and its own retention (None: the server's)."""

    epoch: str
    last: int = 0
    keep_messages: int | None = None
    keep_days: int | None = None


@dataclass(slots=True)
class StoreBatch:
    """What one write stores, in one transaction, in this order: epochs, messages,
    edits, deletions, read markers, retention settings. Rows are plain tuples."""

    #: (room, epoch): a room's numbering (re)starts under this epoch.
    epochs: list[tuple[str, str]] = field(default_factory=list)
    #: (room, epoch, q, ts, user, content); a row already stored is left as it is.
    messages: list[tuple[str, str, int, int, str, str]] = field(default_factory=list)
    #: (room, epoch, q, content, edit time).
    edits: list[tuple[str, str, int, str, int]] = field(default_factory=list)
    #: (room, epoch, q, time): the content is dropped, a tombstone stays.
    deletes: list[tuple[str, str, int, int]] = field(default_factory=list)
    #: (user key, room, epoch, q): the marker moves to q unless it is past it already
    #: (in the same epoch).
    markers: list[tuple[str, str, str, int]] = field(default_factory=list)
    #: (room, messages kept, days kept); None: the server's setting.
    retention: list[tuple[str, int | None, int | None]] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.epochs)
            + len(self.messages)
            + len(self.edits)
            + len(self.deletes)
            + len(self.markers)
            + len(self.retention)
        )

    def extend(self, other: StoreBatch) -> None:
        self.epochs += other.epochs
        self.messages += other.messages
        self.edits += other.edits
        self.deletes += other.deletes
        self.markers += other.markers
        self.retention += other.retention


class MessageStore(Protocol):
    """Where messages last (server/store/). Every method may raise StoreError; none
    blocks the event loop (a backend runs its I/O in a thread or asynchronously)."""

    @property
    def description(self) -> str:
        """For the start-up log line, without secrets."""
        ...

    @property
    def durable(self) -> bool:
        """Whether what is written outlives the process."""
        ...

    async def open(self) -> None:
        """Connect and create the tables if needed."""

    async def close(self) -> None: ...

    async def rooms(self) -> dict[str, RoomRecord]:
        """Every room the store knows, with its epoch, its last number and retention."""
        ...

    async def write(self, batch: StoreBatch) -> None:
        """Store ``batch`` in one transaction (all of it or none)."""

    async def page(
        self, room: str, epoch: str, before: int | None, after: int | None, limit: int
    ) -> list[StoredMessage]:
        """At most ``limit`` messages of the room's epoch, oldest first: the last ones
        below ``before`` (or the room's last ones), or the first ones above ``after``."""
        ...

    async def message(self, room: str, epoch: str, seq: int) -> StoredMessage | None: ...

    async def markers(self, user: str) -> dict[str, tuple[str, int]]:
        """A user's read markers (a name key): room -> (epoch, highest q read)."""
        ...

    async def latest(self, rooms: Sequence[tuple[str, str]]) -> dict[str, int]:
        """The highest stored q of each (room, epoch); rooms with none are left out."""
        ...

    async def prune(self, room: str, epoch: str, keep_messages: int, before_ts: int) -> int:
        """Retention: delete the room's messages but its last ``keep_messages`` (0: no
        limit) and those older than ``before_ts`` (ms; 0: no limit); how many went."""
        ...

    async def purge(self, room: str) -> int:
        """Delete every stored message of the room (an admin's purge); how many went."""
        ...

    async def size(self) -> int:
        """Bytes the store takes (for /metrics; 0 if it cannot tell)."""
        ...


class Archiving(Protocol):
    """The server's side of its MessageStore, as the rules see it (implemented by
    server/store/archive.Archive): hand-overs never block nor fail; questions answer
    through ``done`` (their result, or a StoreError)."""

    def numbering(self, room: str) -> tuple[str, int]:
        """The epoch and last number ``room`` goes on from (in process)."""
        ...

    def run(self, room: str, epoch: str, first: int, count: int, ts: int, event: bytes) -> None:
        """A run of ``count`` messages (v1 lines) numbered from ``first``."""

    def edit(self, room: str, epoch: str, seq: int, content: str, ts: int) -> None: ...

    def delete(self, room: str, epoch: str, seq: int, ts: int) -> None: ...

    def mark(self, user: str, room: str, epoch: str, seq: int) -> None: ...

    def retain(self, room: str, messages: int | None, days: int | None) -> None: ...

    def retention(self, room: str) -> tuple[int, int]:
        """Messages and days ``room`` keeps (0: no limit)."""
        ...

    def ask_page(
        self,
        room: str,
        epoch: str,
        before: int | None,
        after: int | None,
        limit: int,
        done: Done,
    ) -> None:
        """A list of StoredMessage (see MessageStore.page)."""

    def ask_message(self, room: str, epoch: str, seq: int, done: Done) -> None:
        """A StoredMessage, or None."""

    def ask_reading(self, user: str, done: Done) -> None:
        """room -> (epoch, q read, highest q stored in that epoch) of a user's markers."""

    def ask_purge(self, room: str, done: Done) -> None:
        """Delete every stored message of ``room``; how many went (an int)."""
