"""The community service: rooms at run time, private rooms, moderation, direct messages
(docs/moderation.md). Sans-I/O, like the rest of core/.

:class:`Community` is what sessions and the operator API ask: create or archive a room,
moderate, read the audit log, open or close a direct message, disconnect a user. It
checks the request against this instance's copy of the rules (policy.py), then hands the
change to its :class:`~roomchat.server.core.ports.CommunityStore`: in one process the
:class:`MemoryStore` applies it at once; with Redis (bus/redis/community.py) one Lua
script per change writes it atomically on the room's hash slot, refusing it if another
instance changed the room meanwhile, and publishes it to every instance. Either way the
change comes back through :class:`Community`'s listener methods (:meth:`room_added`,
:meth:`moderated`, :meth:`dm_changed`, :meth:`disconnected`), on every instance, which
update the :class:`~roomchat.server.core.directory.Directory` and tell the local
sessions (:class:`Occupant`): an event, a room left, a connection closed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

from roomchat.protocol import (
    HISTORY_MAX,
    AuditEntry,
    Moderated,
    RoomAdded,
    RoomListing,
    RoomRemoved,
    UserMessage,
    dm_room,
    encode,
    name_key,
    valid_name,
    valid_room_name,
)
from roomchat.server.core.clock import now_ms
from roomchat.server.core.directory import Directory
from roomchat.server.core.errors import (
    Archived,
    BadCommand,
    Muted,
    NotAuthorised,
    RoomExists,
    RoomInvalid,
    SlowModeWait,
    UnknownRoom,
)
from roomchat.server.core.policy import (
    MODERATOR,
    Action,
    Actor,
    Outcome,
    Policy,
    RoomInfo,
    decide,
    rank_of,
    refused_join,
)
from roomchat.server.core.ports import CommunityListener, CommunityStore, Done

__all__ = [
    "API_SENDER",
    "AUDIT_MAX",
    "Community",
    "MemoryStore",
    "Occupant",
    "audit_entry",
    "moderation_event",
]

log = logging.getLogger("roomchat.server")

#: The sender of messages posted through the operator API: not a valid user name, so no
#: user can be mistaken for it.
API_SENDER = "@server"
#: Audit entries kept per room (and for the server).
AUDIT_MAX = 1000
#: Messages a direct message's receiver gets with it when it opens on their side.
DM_HISTORY = HISTORY_MAX


class Occupant(Protocol):
    """A session as the community sees it (implemented by session.Session): who, and
    what the community may do to it."""

    @property
    def session_id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def v2(self) -> bool: ...

    @property
    def actor(self) -> Actor:
        """Who the session is to the rules (its name, admin, the roles its token gives)."""
        ...

    @property
    def claims(self) -> tuple[str, ...]:
        """Private rooms the login token lets this user join."""
        ...

    def tell(self, event: bytes) -> None:
        """An event for this session (v2 only)."""

    def in_room(self, room: str) -> bool:
        """Whether the session is in ``room`` or joining it."""
        ...

    def remove_from(self, room: str) -> None:
        """Leave ``room`` (kicked, banned, archived, a DM closed): the others see
        ``left`` as after a ``leave_room``."""

    def open_room(self, room: str, history: int) -> None:
        """Join ``room`` on the server's initiative (a direct message that opened)."""

    def disconnect(self, code: str, why: str) -> None:
        """Close the session (v2: an ``error`` with ``code`` first)."""


def audit_entry(outcome: Outcome) -> AuditEntry:
    """The audit log's entry of ``outcome``."""
    action = outcome.action
    return AuditEntry(
        outcome.at,
        action.actor.name,
        action.what,
        action.user,
        outcome.until,
        action.role if action.what == "role" else None,
        action.seconds if action.what == "slow_mode" else None,
        action.why,
    )


def moderation_event(outcome: Outcome) -> bytes:
    """The ``moderation`` event of ``outcome`` (server-wide: ``r`` is empty)."""
    room = outcome.action.room or ""
    entry = audit_entry(outcome)
    return encode(
        Moderated(
            room,
            entry.by,
            entry.what,
            entry.user,
            entry.until,
            entry.role,
            entry.seconds,
            entry.why,
            entry.timestamp,
        )
    )


class Community:
    """See the module docstring. ``user_rooms``: whether users may create rooms (else
    admins and the API only); ``admins``: the names (keys) of server-wide admins, for
    sessions whose name is proven (a token)."""

    def __init__(
        self,
        directory: Directory,
        store: CommunityStore,
        *,
        user_rooms: bool = False,
        admins: Iterable[str] = (),
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.directory = directory
        self.store = store
        self.user_rooms = user_rooms
        self.admins = frozenset(name_key(name) for name in admins)
        self._now = clock_ms
        #: name key -> this instance's sessions of that user.
        self.sessions: dict[str, set[Occupant]] = {}
        #: Slow mode: (room, name key) -> when the user last sent there (ms). Kept per
        #: instance (docs/moderation.md says what that allows).
        self._last_sent: dict[tuple[str, str], int] = {}
        store.attach(self)

    def find(self, name: str) -> RoomInfo | None:
        return self.directory.find(name)

    def room(self, name: str) -> RoomInfo | None:
        return self.directory.infos.get(name)

    def names(self) -> list[str]:
        return list(self.directory.infos)

    def local_users(self, room: str) -> list[str]:
        """The room's users as this instance's presence knows them."""
        return self.directory.users(room)

    def users(self, room: str, done: Done) -> None:
        """The room's users on every instance (the store asks Redis's presence)."""
        self.store.users(room, done)

    def _policy_of(self, room: str | None) -> Policy:
        return self.directory.server if room is None else self.directory.policies[room]

    def policy_after(self, outcome: Outcome) -> Policy:
        policy = self._policy_of(outcome.action.room).copy()
        policy.apply(outcome)
        return policy

    def redecide(self, outcome: Outcome) -> tuple[Outcome, int]:
        policy = self._policy_of(outcome.action.room)
        return decide(outcome.action, policy, self._now()), policy.version

    def server_changed(self, policy: Policy) -> None:
        self.directory.server = policy
        self.directory.restrict_all()

    # -- sessions ------------------------------------------------------------------------
    def enter(self, occupant: Occupant) -> None:
        self.sessions.setdefault(name_key(occupant.user_id), set()).add(occupant)

    def leave(self, occupant: Occupant, user_id: str | None = None) -> None:
        key = name_key(user_id if user_id is not None else occupant.user_id)
        sessions = self.sessions.get(key)
        if sessions is not None:
            sessions.discard(occupant)
            if not sessions:
                del self.sessions[key]

    def of(self, user: str) -> list[Occupant]:
        return list(self.sessions.get(name_key(user), ()))

    def listing_for(self, occupant: Occupant) -> tuple[RoomListing, ...]:
        actor = occupant.actor
        return self.directory.visible(occupant.user_id, occupant.claims, actor.admin)

    def open_dms(self, user: str) -> list[str]:
        """The direct messages ``user`` has open (joined at login)."""
        key = name_key(user)
        return [
            info.name
            for info in self.directory.infos.values()
            if info.dm is not None and key in info.dm_open and not info.archived
        ]

    # -- requests ------------------------------------------------------------------------
    def create_room(
        self,
        actor: Actor,
        name: str,
        description: str,
        private: bool,
        done: Done,
    ) -> None:
        """A new room; its creator (a user) becomes its owner. ``done``: the RoomInfo."""
        if not (actor.api or actor.admin or self.user_rooms):
            raise NotAuthorised("creating rooms needs admin rights on this server")
        if not valid_room_name(name):
            raise RoomInvalid(
                "a room name is 1 to 32 of A-Z a-z 0-9 _ - . starting with a letter or a digit"
            )
        if self.directory.find(name) is not None:
            raise RoomExists(f"a room named {name!r} exists")
        at = self._now()
        info = RoomInfo(name, description, private, False, actor.name, at)
        policy = Policy()
        if not actor.api:
            policy.roles[name_key(actor.name)] = "owner"
        creation = Outcome(Action("create", name, actor), at)
        self.store.create(info, policy, creation, done)

    def moderate(self, action: Action, done: Done) -> None:
        """Check ``action`` here; the store applies it everywhere (or refuses it, if the
        room changed meanwhile and the rules now say no). ``done``: the Outcome."""
        now = self._now()
        if action.room is None:
            policy = self.directory.server
            if action.what not in ("ban", "unban", "mute", "unmute"):
                raise BadCommand(f"{action.what} needs a room")
        else:
            info = self.directory.find(action.room)
            if info is None or (info.private and not self._sees(action.actor, info)):
                raise UnknownRoom(f"no room named {action.room!r}")
            if info.archived:
                raise Archived(f"room {info.name!r} is archived")
            if info.dm is not None:
                raise BadCommand("direct messages have no moderators")
            action = replace(action, room=info.name)
            policy = self.directory.policies[info.name]
        outcome = decide(action, policy, now)
        self.store.moderate(outcome, policy.version, done)

    def _sees(self, actor: Actor, info: RoomInfo) -> bool:
        if actor.api or actor.admin:
            return True
        return self.directory.may_see(info, actor.name)

    def audit(self, actor: Actor, room: str | None, limit: int, done: Done) -> None:
        """The room's (None: the server's) audit log, newest last, for its moderators."""
        if room is None:
            if not (actor.api or actor.admin):
                raise NotAuthorised("the server's audit log is for admins")
            self.store.audit(None, limit, done)
            return
        info = self.directory.find(room)
        if info is None or not self._sees(actor, info):
            raise UnknownRoom(f"no room named {room!r}")
        if rank_of(actor, self.directory.policies[info.name], info.name) < MODERATOR:
            raise NotAuthorised(f"the audit log of {info.name!r} is for its moderators")
        self.store.audit(info.name, limit, done)

    def open_dm(self, actor: Actor, peer: str, done: Done) -> None:
        """The direct-message room with ``peer``, opened on ``actor``'s side (created on
        first use). ``done``: its name."""
        if not valid_name(peer):
            raise BadCommand(f"open_dm: {peer!r} is not a user name")
        if name_key(peer) == name_key(actor.name):
            raise BadCommand("open_dm: a direct message needs two users")
        refusal = refused_join(self.directory.server, actor.name, False, False, self._now())
        if refusal is not None:
            raise refusal
        name = dm_room(actor.name, peer)
        self.store.dm(name, name_key(actor.name), True, done)

    def close_dm(self, actor: Actor, peer: str, done: Done) -> None:
        if not valid_name(peer):
            raise BadCommand(f"close_dm: {peer!r} is not a user name")
        name = dm_room(actor.name, peer)
        info = self.directory.infos.get(name)
        if info is None or name_key(actor.name) not in info.dm_open:
            raise BadCommand(f"close_dm: no direct message with {peer!r} is open")
        self.store.dm(name, name_key(actor.name), False, done)

    def disconnect(self, user: str, why: str) -> None:
        """Close every session of ``user`` on every instance."""
        self.store.disconnect(name_key(user), why)

    def post(self, room: str, content: str) -> None:
        """A message from :data:`API_SENDER` (the operator API), numbered as any."""
        info = self.directory.find(room)
        if info is None:
            raise UnknownRoom(f"no room named {room!r}")
        if info.archived:
            raise Archived(f"room {info.name!r} is archived")
        self.directory.rooms[info.name].post(encode(UserMessage(info.name, API_SENDER, content)))

    # -- the hot path's slow lane ----------------------------------------------------------
    def may_send(self, user: str, room: str, count: int = 1) -> int:
        """How many of ``count`` messages ``user`` may send to ``room`` now (a restricted
        room: a mute, slow mode, a direct message to open), or a Refused. Opens a direct
        message on the peer's side on its first message."""
        directory = self.directory
        now = self._now()
        key = name_key(user)
        muted = directory.server.muted(user, now)
        if muted is None:
            muted = directory.policies[room].muted(user, now)
        if muted is not None:
            raise Muted("you are muted here" + (f" until {muted}" if muted else ""))
        info = directory.infos[room]
        if info.dm is not None:
            if len(info.dm_open) < 2:
                for side in info.dm:
                    if side not in info.dm_open:
                        self.store.dm(room, side, True, _ignore)
            directory.restrict(room)
            return count
        slow = directory.policies[room].slow
        if slow:
            last = self._last_sent.get((room, key))
            if last is not None and now - last < slow * 1000:
                wait = slow * 1000 - (now - last)
                raise SlowModeWait(f"slow mode: one message per {slow} s, wait {wait} ms")
            self._last_sent[(room, key)] = now
            return 1
        directory.restrict(room)  # a mute lapsed: the room may be unrestricted again
        return count

    # -- changes, on every instance (the store's listener) ---------------------------------
    def room_added(self, info: RoomInfo, policy: Policy, outcome: Outcome | None) -> None:
        """A room was created (here or elsewhere), or is known again after an outage."""
        known = self.directory.infos.get(info.name)
        self.directory.add(info, policy)
        if known is None and outcome is not None:
            self._tell_viewers(info, None)

    def _tell_viewers(self, info: RoomInfo, only: str | None) -> None:
        """RoomAdded for the v2 sessions that may now see ``info`` (``only``: one user's)."""
        directory = self.directory
        users = [only] if only is not None else list(self.sessions)
        for user in users:
            for occupant in self.sessions.get(user, ()):
                if not occupant.v2:
                    continue
                actor = occupant.actor
                if directory.may_see(info, occupant.user_id, occupant.claims, actor.admin):
                    role = directory.policies[info.name].role_of(occupant.user_id)
                    occupant.tell(encode(RoomAdded(info.listing(occupant.user_id, role))))

    def moderated(self, outcome: Outcome) -> bool:
        """An action decided and stored (here or elsewhere). False when this copy is not
        at the version before it (the store then reads the room again)."""
        action = outcome.action
        directory = self.directory
        room = action.room
        if room is None:
            policy = directory.server
        else:
            if room not in directory.infos:
                return False
            policy = directory.policies[room]
        if outcome.version <= policy.version:
            return True  # applied already (its echo)
        if outcome.version != policy.version + 1:
            return False
        policy.apply(outcome)
        if action.what == "archive" and room is not None:
            self._archived(room, outcome)
            return True
        if room is None:
            directory.restrict_all()
            self._server_action(outcome)
            return True
        directory.restrict(room)
        event = moderation_event(outcome)
        target = action.user
        told: set[Occupant] = set()
        chat = directory.rooms[room]
        for member in chat.members:
            occupant = self._occupant_of(member.user_id, member.key)
            if occupant is not None and occupant.v2:
                occupant.tell(event)
                told.add(occupant)
        if target is not None:
            for occupant in self.of(target):
                if occupant.v2 and occupant not in told:
                    occupant.tell(event)
            removes = outcome.removes
            if removes is not None:
                for occupant in self.of(removes):
                    if occupant.in_room(room):
                        occupant.remove_from(room)
            if action.what == "invite":
                self._tell_viewers(directory.infos[room], name_key(target))
        return True

    def _occupant_of(self, user: str, key: str) -> Occupant | None:
        for occupant in self.sessions.get(name_key(user), ()):
            if occupant.session_id == key:
                return occupant
        return None

    def _server_action(self, outcome: Outcome) -> None:
        action = outcome.action
        if action.user is None:
            return
        event = moderation_event(outcome)
        for occupant in self.of(action.user):
            if action.what == "ban":
                occupant.disconnect("banned", action.why or "banned from this server")
            elif occupant.v2:
                occupant.tell(event)

    def _archived(self, room: str, outcome: Outcome) -> None:
        directory = self.directory
        info = directory.infos[room]
        directory.infos[room] = replace(info, archived=True)
        why = outcome.action.why
        gone = encode(RoomRemoved(room, why or "archived"))
        event = moderation_event(outcome)
        for sessions in list(self.sessions.values()):
            for occupant in list(sessions):
                inside = occupant.in_room(room)
                if inside:
                    if occupant.v2:
                        occupant.tell(event)
                    occupant.remove_from(room)
                if occupant.v2 and (inside or directory.may_see(info, occupant.user_id)):
                    occupant.tell(gone)

    def dm_changed(self, info: RoomInfo, user: str, opened: bool) -> None:
        """A direct message opened or closed on ``user``'s side (name key)."""
        directory = self.directory
        if info.name not in directory.infos:
            directory.add(info)
        else:
            directory.infos[info.name] = info
            directory.restrict(info.name)
        if opened:
            self._tell_viewers(info, user)
            for occupant in self.of(user):
                if occupant.v2 and not occupant.in_room(info.name):
                    occupant.open_room(info.name, DM_HISTORY)
        else:
            gone = encode(RoomRemoved(info.name, "closed"))
            for occupant in self.of(user):
                if occupant.in_room(info.name):
                    occupant.remove_from(info.name)
                if occupant.v2:
                    occupant.tell(gone)

    def disconnected(self, user: str, why: str) -> None:
        """Every session of ``user`` (name key) here is closed."""
        for occupant in self.of(user):
            occupant.disconnect("not_authorised", why)


def _ignore(result: object) -> None:
    pass


class MemoryStore:
    """One process: every change applies at once, the audit log is kept in memory."""

    def __init__(self, audit_max: int = AUDIT_MAX) -> None:
        self._listener: CommunityListener | None = None
        self._audit: dict[str | None, deque[AuditEntry]] = {}
        self._max = audit_max

    def attach(self, listener: CommunityListener) -> None:
        self._listener = listener

    @property
    def _community(self) -> CommunityListener:
        assert self._listener is not None, "attach the community first"
        return self._listener

    def _log(self, room: str | None, outcome: Outcome) -> None:
        self._audit.setdefault(room, deque(maxlen=self._max)).append(audit_entry(outcome))

    def create(self, info: RoomInfo, policy: Policy, outcome: Outcome, done: Done) -> None:
        community = self._community
        if community.find(info.name) is not None:
            done(RoomExists(f"a room named {info.name!r} exists"))
            return
        self._log(info.name, outcome)
        community.room_added(info, policy, outcome)
        done(info)

    def moderate(self, outcome: Outcome, version: int, done: Done) -> None:
        numbered = replace(outcome, version=version + 1)
        self._log(outcome.action.room, numbered)
        self._community.moderated(numbered)
        done(numbered)

    def audit(self, room: str | None, limit: int, done: Done) -> None:
        entries = self._audit.get(room, ())
        done(list(entries)[-limit:] if limit else [])

    def dm(self, room: str, user: str, opened: bool, done: Done) -> None:
        community = self._community
        info = community.room(room)
        if info is None:
            info = RoomInfo(room, "", True, created_at=now_ms())
        sides = set(info.dm_open)
        if opened:
            sides.add(user)
        else:
            sides.discard(user)
        info = replace(info, dm_open=frozenset(sides))
        community.dm_changed(info, user, opened)
        done(room)

    def disconnect(self, user: str, why: str) -> None:
        self._community.disconnected(user, why)

    def users(self, room: str, done: Done) -> None:
        done(self._community.local_users(room))
