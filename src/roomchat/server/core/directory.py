"""Every room of the server, as this instance knows them (docs/moderation.md).

The :class:`Directory` holds, per room, what it is (:class:`~roomchat.server.core.policy.
RoomInfo`: the rooms file's seeds and the rooms created at run time), its moderation
state (:class:`~roomchat.server.core.policy.Policy`) and this instance's
:class:`~roomchat.server.core.rooms.ChatRoom`, wired to the bus. It decides who may join
(unknown, archived, banned, private) and keeps each room's ``restricted`` flag, the one
thing the hot path looks at before a message: a room is restricted when someone in it
(or on the server) is muted, when it has slow mode, or when it is a direct message not
open on both sides. Changes come from the community service (community.py), the same on
every instance; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from roomchat.protocol import (
    DM_PREFIX,
    HISTORY_MAX,
    RoomDetail,
    RoomListing,
    name_key,
    room_key,
)
from roomchat.server.core.errors import (
    Archived,
    NotAuthorised,
    NotJoined,
    Refused,
    UnknownRoom,
)
from roomchat.server.core.history import HistoryRequest
from roomchat.server.core.policy import PRIVATE_REFUSAL, Policy, RoomInfo, refused_join
from roomchat.server.core.ports import Archiving, Bus, Presence
from roomchat.server.core.rooms import (
    ROOM_MEMBER_BUCKETS,
    TOP_ROOMS,
    ChatRoom,
    JoinCallback,
    Member,
    Turns,
    UserSessionHandle,
)
from roomchat.server.core.stats import Histogram, Reading, ServerStats

__all__ = ["Directory"]


class Directory:
    """Every room, its policy and its ChatRoom here, wired to a bus and its presence.
    ``rooms`` and ``infos`` are keyed by the room's exact name (as joins name it);
    names are unique ignoring case (:meth:`find`)."""

    __slots__ = (
        "_archive",
        "_bus",
        "_keys",
        "_presence",
        "_stats",
        "_turns",
        "history",
        "infos",
        "policies",
        "rooms",
        "server",
    )

    def __init__(
        self,
        seeds: Iterable[RoomDetail | RoomInfo],
        bus: Bus,
        turns: Turns,
        stats: ServerStats,
        *,
        history: int = HISTORY_MAX,
    ) -> None:
        self.history = history
        self._bus = bus
        self._presence: Presence = bus.presence
        self._turns = turns
        self._stats = stats
        self.rooms: dict[str, ChatRoom] = {}
        self.infos: dict[str, RoomInfo] = {}
        self.policies: dict[str, Policy] = {}
        self._keys: dict[str, str] = {}  # room_key -> name
        self._archive: Archiving | None = None
        #: Server-wide bans and mutes (admins and the API).
        self.server = Policy()
        for seed in seeds:
            info = seed if isinstance(seed, RoomInfo) else RoomInfo(seed.name, seed.description)
            self.add(info)

    # -- what there is -------------------------------------------------------------------
    @property
    def details(self) -> tuple[RoomDetail, ...]:
        """The rooms listed at a v1 login: public, not archived, in creation order."""
        return tuple(
            info.detail for info in self.infos.values() if not info.private and not info.archived
        )

    def find(self, name: str) -> RoomInfo | None:
        """The room named ``name``, ignoring case."""
        exact = self.infos.get(name)
        if exact is not None:
            return exact
        spelled = self._keys.get(room_key(name))
        return None if spelled is None else self.infos[spelled]

    def policy(self, name: str) -> Policy:
        return self.policies[name]

    def users(self, name: str) -> list[str]:
        """The room's users, as presence knows them here."""
        return list(self._presence.users(self.rooms[name]))

    def may_see(
        self, info: RoomInfo, user: str, claims: Iterable[str] = (), admin: bool = False
    ) -> bool:
        """Whether ``user`` is shown the room: public ones to everyone; a private one to
        those who may join it; a direct message to its users while they have it open."""
        if info.archived:
            return False
        dm = info.dm
        if dm is not None:
            return name_key(user) in dm and name_key(user) in info.dm_open
        if not info.private or admin:
            return True
        return self.policies[info.name].may_join(user, True, info.name in claims)

    def visible(
        self, user: str, claims: Iterable[str] = (), admin: bool = False
    ) -> tuple[RoomListing, ...]:
        """The rooms ``user`` is shown (v2's ``rooms``), with its role in each."""
        claimed = tuple(claims)
        return tuple(
            info.listing(user, self.policies[info.name].role_of(user))
            for info in self.infos.values()
            if self.may_see(info, user, claimed, admin)
        )

    # -- changes (the community service's, the same on every instance) ------------------
    def add(self, info: RoomInfo, policy: Policy | None = None) -> ChatRoom:
        """A room comes into being here (or what it is changes): its ChatRoom, wired."""
        known = self.infos.get(info.name)
        self.infos[info.name] = info
        self._keys[room_key(info.name)] = info.name
        if policy is not None or known is None:
            self.policies[info.name] = policy if policy is not None else Policy()
        room = self.rooms.get(info.name)
        if room is None:
            room = ChatRoom(info.detail, self._turns, self._stats, history=self.history)
            room.connect(self._bus.publisher(room), self._bus.numbers_here)
            self.rooms[info.name] = room
            if self._archive is not None and self._bus.numbers_here:
                room.keep(*self._archive.numbering(info.name), self._archive.run)
        room.description = info.description
        self.restrict(info.name)
        return room

    def keep_with(self, archive: Archiving) -> None:
        """Every message numbered here is kept in ``archive``'s store, and each room
        numbers on from where the store says (in process; with Redis, Redis numbers
        and the bus hands what was posted here to the archive)."""
        self._archive = archive
        if self._bus.numbers_here:
            for name, room in self.rooms.items():
                room.keep(*archive.numbering(name), archive.run)

    def restrict(self, name: str) -> None:
        """Recompute the room's ``restricted`` flag (after its policy, the server's, or
        its direct message's sides changed)."""
        info = self.infos[name]
        dm = info.dm
        self.rooms[name].restricted = (
            self.policies[name].restricted
            or self.server.restricted
            or (dm is not None and len(info.dm_open) < 2)
        )

    def restrict_all(self) -> None:
        for name in self.infos:
            self.restrict(name)

    # -- joining and leaving ---------------------------------------------------------
    def join_room(
        self,
        name: str,
        member: Member,
        done: JoinCallback,
        request: HistoryRequest | None = None,
        *,
        claimed: bool = False,
        admin: bool = False,
        now: int = 0,
    ) -> None:
        """Start a join; ``done`` gets the handle (perhaps before this returns). Raises
        a Refused when it is known at once: unknown (private rooms one may not join
        look unknown to v1, as the original has no other answer), archived, banned,
        not invited. ``request``: the history a v2 joiner asked for; ``claimed``: the
        joiner's token names the room; ``now``: ms since the epoch (timed bans)."""
        room = self.rooms.get(name)
        info = self.infos.get(name)
        if room is None or info is None:
            raise UnknownRoom(f"no room named {name!r}")
        if info.archived:
            raise Archived(f"room {name!r} is archived")
        user = member.user_id
        if not admin:
            refusal = self.refusal(info, user, claimed, now)
            if refusal is not None:
                raise refusal
        room.begin_join(member, done, request)
        self._presence.join(room, member)

    def refusal(self, info: RoomInfo, user: str, claimed: bool, now: int) -> Refused | None:
        """Why ``user`` may not join ``info`` (its ban, the server's, privacy), or None."""
        refusal = refused_join(self.server, user, False, False, now)
        if refusal is not None:
            return refusal
        dm = info.dm
        if dm is not None:  # only its two users, and no ban but the server's
            return None if name_key(user) in dm else NotAuthorised(PRIVATE_REFUSAL)
        return refused_join(self.policies[info.name], user, info.private, claimed, now)

    def drop_user_session_handle(self, handle: UserSessionHandle) -> None:
        self.leave(handle.room, handle.member)

    def leave(self, room: ChatRoom, member: Member) -> None:
        """Take a member (joined, or still joining) out of a room."""
        if not room.remove(member):
            raise NotJoined(f"not in room {room.name!r}")
        self._presence.leave(room, member)

    # -- /metrics ------------------------------------------------------------------------
    def readings(self) -> list[Reading]:
        """Rooms, rooms with local members, their sizes and the largest ones."""
        sizes = [
            (room.member_count, name) for name, room in self.rooms.items() if room.member_count
        ]
        # Direct messages are counted, never named (their names are the two users').
        named = [(size, name) for size, name in sizes if not name.startswith(DM_PREFIX)]
        histogram = Histogram(ROOM_MEMBER_BUCKETS)
        for size, _ in sizes:
            histogram.observe(size)
        live = sum(1 for info in self.infos.values() if not info.archived)
        out = [
            Reading(
                "rooms", "gauge", "Rooms that are not archived (direct messages included).", live
            ),
            Reading("rooms_with_members", "gauge", "Rooms with local members.", len(sizes)),
            Reading(
                "room_members",
                "histogram",
                "Local members per room, over the rooms with members.",
                histogram,
            ),
        ]
        named.sort(key=lambda pair: (-pair[0], pair[1]))
        for size, name in named[:TOP_ROOMS]:
            out.append(
                Reading(
                    "room_members_top",
                    "gauge",
                    f"Local members of the {TOP_ROOMS} largest rooms.",
                    size,
                    (("room", name),),
                )
            )
        return out
