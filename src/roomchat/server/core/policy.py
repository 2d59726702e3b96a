"""Who may do what in a room: roles, bans, mutes, invitations, slow mode (docs/moderation.md).

Pure rules, no I/O. A room's :class:`Policy` is its moderation state; :func:`decide`
checks a moderation :class:`Action` against it and returns the :class:`Outcome` (what
changes, the event everyone sees, the audit entry) or raises a
:class:`~roomchat.server.core.errors.Refused`. The in-process backend applies outcomes
to the one Policy there is; the Redis backend runs the same rules in one Lua script per
action on the room's hash slot (bus/redis/scripts.py), and every instance applies the
outcome it publishes to its own copy (:meth:`Policy.apply`). tests/server/core/
test_policy.py states the rules once and runs them against both.

Ranks: a server-wide admin (a token's ``admin`` claim, ``--admin``) outranks every
room's owner, an owner a moderator, a moderator a member. Names are compared by their
key (ignoring case), as user names are.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from roomchat.protocol import (
    ModerationAction,
    Role,
    RoomDetail,
    RoomListing,
    dm_users,
    name_key,
    valid_name,
)
from roomchat.server.core.errors import BadCommand, Banned, NotAuthorised, Refused

__all__ = [
    "ADMIN",
    "MEMBER",
    "MODERATOR",
    "OWNER",
    "PRIVATE_REFUSAL",
    "Action",
    "Actor",
    "Outcome",
    "Policy",
    "RoomInfo",
    "decide",
    "rank_of",
    "refused_join",
]

MEMBER, MODERATOR, OWNER, ADMIN = 0, 1, 2, 3
_RANKS: dict[Role | None, int] = {
    None: MEMBER,
    "member": MEMBER,
    "moderator": MODERATOR,
    "owner": OWNER,
}


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """What a room is, the same on every instance: the rooms file's seeds, and the rooms
    created at run time (with Redis, kept in its registry)."""

    name: str
    description: str = ""
    private: bool = False
    archived: bool = False
    created_by: str | None = None
    created_at: int = 0
    #: A direct-message room: the users (name keys) who have it open (listed, joined
    #: on login); the next message opens it for the other again.
    dm_open: frozenset[str] = frozenset()

    @property
    def dm(self) -> tuple[str, str] | None:
        """The two users of a direct-message room (name keys), or None."""
        return dm_users(self.name)

    @property
    def detail(self) -> RoomDetail:
        return RoomDetail(self.name, self.description)

    def listing(self, viewer: str, role: Role | None = None) -> RoomListing:
        dm = self.dm
        peer = None if dm is None else (dm[1] if dm[0] == name_key(viewer) else dm[0])
        return RoomListing(self.name, self.description, self.private, peer, role)


#: The rank an action needs (at least), and whether it needs to outrank its target.
_NEEDS: dict[ModerationAction, tuple[int, bool]] = {
    "kick": (MODERATOR, True),
    "ban": (MODERATOR, True),
    "unban": (MODERATOR, False),
    "mute": (MODERATOR, True),
    "unmute": (MODERATOR, False),
    "invite": (MODERATOR, False),
    "slow_mode": (MODERATOR, False),
    "role": (OWNER, False),
    "archive": (OWNER, False),
}


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks: a user (its name, whether a server admin, the roles its token gives) or
    the operator API (``api``: may do anything, named ``by`` in the audit log)."""

    name: str
    admin: bool = False
    #: Room name -> role, from the login token (docs/moderation.md, "Tokens").
    roles: tuple[tuple[str, Role], ...] = ()
    api: bool = False

    def token_role(self, room: str) -> Role | None:
        for name, role in self.roles:
            if name == room:
                return role
        return None


@dataclass(frozen=True, slots=True)
class Action:
    """One moderation request: ``what`` to do in ``room`` (None: server-wide) to ``user``."""

    what: ModerationAction
    room: str | None
    actor: Actor
    user: str | None = None
    seconds: int | None = None
    role: Role | None = None
    why: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an action did: the change every copy of the policy applies, the time it was
    decided (ms), and the user it removes from the room (kick, ban)."""

    action: Action
    at: int
    #: For a timed ban or mute: when it ends (ms); None: until lifted (or not timed).
    until: int | None = None
    #: The policy's version this outcome makes (the store numbers it: Policy.version).
    version: int = 0

    @property
    def removes(self) -> str | None:
        """The user whose sessions leave the room (kick, ban), by name key."""
        action = self.action
        if action.what in ("kick", "ban") and action.user is not None:
            return name_key(action.user)
        return None


@dataclass(slots=True)
class Policy:
    """One room's moderation state (or, with ``room`` None in Action, the server's)."""

    #: name key -> owner or moderator (members are everyone else who may join).
    roles: dict[str, Role] = field(default_factory=dict)
    #: Private rooms: who may join besides those with a role (name keys).
    invited: set[str] = field(default_factory=set)
    #: name key -> until (ms since the epoch; 0: until lifted).
    bans: dict[str, int] = field(default_factory=dict)
    mutes: dict[str, int] = field(default_factory=dict)
    #: Slow mode: seconds between two messages of one user (0: off).
    slow: int = 0
    #: How many outcomes this copy reflects: every instance applies them in this order
    #: (an outcome that is not the next one makes the copy be read again).
    version: int = 0

    # -- reading ---------------------------------------------------------------------------
    def role_of(self, user: str) -> Role | None:
        return self.roles.get(name_key(user))

    def owners(self) -> int:
        return sum(1 for role in self.roles.values() if role == "owner")

    def banned(self, user: str, now: int) -> int | None:
        """When the user's ban ends (0: never), or None if not banned."""
        return _active(self.bans, name_key(user), now)

    def muted(self, user: str, now: int) -> int | None:
        return _active(self.mutes, name_key(user), now)

    def may_join(self, user: str, private: bool, claimed: bool) -> bool:
        """Whether ``user`` may join (a ban aside): public rooms are for everyone; a
        private one for those invited, with a role, or whose token claims it."""
        if not private or claimed:
            return True
        key = name_key(user)
        return key in self.invited or key in self.roles

    @property
    def restricted(self) -> bool:
        """Whether sending needs a check (someone muted, or slow mode): the hot path
        looks only at this."""
        return bool(self.mutes) or self.slow > 0

    # -- changing --------------------------------------------------------------------------
    def apply(self, outcome: Outcome) -> None:
        """Make this copy reflect ``outcome`` (decided here or on another instance)."""
        action = outcome.action
        what = action.what
        key = name_key(action.user) if action.user is not None else ""
        if what == "ban":
            self.bans[key] = outcome.until or 0
            self.invited.discard(key)
        elif what == "unban":
            self.bans.pop(key, None)
        elif what == "mute":
            self.mutes[key] = outcome.until or 0
        elif what == "unmute":
            self.mutes.pop(key, None)
        elif what == "invite":
            self.invited.add(key)
        elif what == "role":
            if action.role in (None, "member"):
                self.roles.pop(key, None)
            else:
                assert action.role is not None
                self.roles[key] = action.role
        elif what == "slow_mode":
            self.slow = action.seconds or 0
        self.version += 1

    def copy(self) -> Policy:
        return replace(
            self,
            roles=dict(self.roles),
            invited=set(self.invited),
            bans=dict(self.bans),
            mutes=dict(self.mutes),
        )


def _active(table: dict[str, int], key: str, now: int) -> int | None:
    until = table.get(key)
    if until is None:
        return None
    if until and until <= now:
        del table[key]  # lapsed: forget it
        return None
    return until


def rank_of(actor: Actor, policy: Policy, room: str | None) -> int:
    """The actor's rank where the action applies (a server-wide one: admins only)."""
    if actor.api or actor.admin:
        return ADMIN
    if room is None:
        return MEMBER
    return max(_RANKS[policy.role_of(actor.name)], _RANKS[actor.token_role(room)])


def decide(action: Action, policy: Policy, now: int) -> Outcome:
    """Check ``action`` against ``policy`` (not changed here); the outcome, or Refused."""
    what, user = action.what, action.user
    needs, over_target = _NEEDS.get(what, (OWNER, False))
    actor_rank = rank_of(action.actor, policy, action.room)
    if actor_rank < needs:
        where = f"room {action.room!r}" if action.room is not None else "this server"
        raise NotAuthorised(f"{what} needs {_RANK_NAMES[needs]} rights in {where}")
    if what in ("kick", "ban", "unban", "mute", "unmute", "invite", "role"):
        if user is None or not valid_name(user):
            raise BadCommand(f"{what}: {user!r} is not a user name")
        if name_key(user) == name_key(action.actor.name) and what in ("kick", "ban", "mute"):
            raise BadCommand(f"{what}: one cannot {what} oneself")
    target_rank = _RANKS[policy.role_of(user)] if user is not None else MEMBER
    if over_target and target_rank >= actor_rank:
        raise NotAuthorised(f"{what}: {user!r} has a role as high as yours")
    if what == "role":
        if action.role is None:
            raise BadCommand("role: which role?")
        if (
            user is not None
            and policy.role_of(user) == "owner"
            and action.role != "owner"
            and policy.owners() == 1
        ):
            raise BadCommand(f"role: {user!r} is the room's last owner")
    if (
        what == "ban"
        and user is not None
        and policy.role_of(user) == "owner"
        and policy.owners() == 1
    ):
        raise BadCommand(f"ban: {user!r} is the room's last owner")
    if what == "slow_mode" and action.seconds is None:
        raise BadCommand("slow_mode: how many seconds?")
    until = None
    if what in ("ban", "mute") and action.seconds:
        until = now + action.seconds * 1000
    return Outcome(action, now, until)


#: Why a private room (or another pair's direct message) refuses a join.
PRIVATE_REFUSAL = "a private room: you need an invitation"

_RANK_NAMES = {MEMBER: "member", MODERATOR: "moderator", OWNER: "owner", ADMIN: "admin"}


def refused_join(
    policy: Policy, user: str, private: bool, claimed: bool, now: int
) -> Refused | None:
    """Why ``user`` may not join, or None."""
    banned = policy.banned(user, now)
    if banned is not None:
        return Banned("you are banned from this room" + (f" until {banned}" if banned else ""))
    if not policy.may_join(user, private, claimed):
        return NotAuthorised(PRIVATE_REFUSAL)
    return None
