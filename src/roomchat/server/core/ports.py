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

from collections.abc import Callable, Iterable
from typing import Protocol

from roomchat.server.core.history import HistoryRequest, Snapshot
from roomchat.server.core.policy import Outcome, Policy, RoomInfo
from roomchat.server.core.stats import Reading

__all__ = [
    "Answer",
    "Bus",
    "BusError",
    "CommunityListener",
    "CommunityStore",
    "Done",
    "HeldNames",
    "Participant",
    "Presence",
    "RoomLink",
    "SharedNames",
    "Wakeups",
]


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

    def holds(self, member: Participant) -> bool:
        """Whether ``member`` is in the room or joining it."""
        ...

    def fan_out(self, event: bytes) -> None:
        """A run of messages numbered here (in process, or locally during an outage)."""

    def deliver(self, seq: int, ts: int, event: bytes) -> None:
        """A run of messages numbered elsewhere; ``seq`` is its first's number."""

    def announce(self, event: bytes) -> None:
        """A ``room_participation`` (v1 line) for every local member."""

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

    def publisher(self, room: RoomLink) -> Callable[[bytes], None]:
        """The function that posts one of ``room``'s runs of messages. Called once per
        run: must not block (a remote bus queues and writes once per turn)."""
        ...

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
