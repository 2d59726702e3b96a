"""The community store in Redis: rooms at run time, policies, audit logs, direct
messages shared by every instance (docs/moderation.md, "Several instances").

Where things live:

- ``rc:{rc}:community:rooms``: room key (lower case) -> the room's info (JSON): the
  registry of run-time rooms and direct messages (HSETNX: a name is taken once,
  ignoring case). A DM's open sides are a set beside it (``...:dm:<room>``).
- Per room, under its hash tag (the slot of its channel and presence): its policy
  (JSON), the policy's version, and its audit log (a list of the last AUDIT_MAX
  entries). The server-wide policy has the same three keys in the registry's slot.

A moderation action is decided by the acting instance on its copy of the policy
(policy.py), then stored by one script (scripts.MODERATE) that refuses it if the
version moved meanwhile (another instance acted first): the instance then reads the
policy again and decides once more. Stored, the change is published on the community's
channel (``D<json>``); every instance applies it in version order (a gap makes it read
the room again). The acting instance applies it at once and ignores its own echo. After
an outage each instance reads everything again (what was published meanwhile is lost).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import msgspec

from roomchat.protocol import AuditEntry, room_key
from roomchat.server.bus.redis.commands import REGISTRY_PREFIX, RoomKeys, room_tag
from roomchat.server.bus.redis.nodes import reason
from roomchat.server.bus.redis.resp import ReplyError, command
from roomchat.server.core.clock import now_ms
from roomchat.server.core.community import AUDIT_MAX, audit_entry
from roomchat.server.core.errors import Refused, RoomExists, Unavailable
from roomchat.server.core.history import HistoryRequest, Snapshot
from roomchat.server.core.policy import Outcome, Policy, RoomInfo
from roomchat.server.core.ports import CommunityListener, Done, Participant

__all__ = ["RedisCommunity"]

log = logging.getLogger("roomchat.bus")

#: Tries of a moderation action whose room changed meanwhile (each one decided again).
_TRIES = 5
_ROOMS = (REGISTRY_PREFIX + "community:rooms").encode()
_SERVER = REGISTRY_PREFIX + "community:server:"
_CHANNEL_ROOM = "\0community"  # the name of the community's channel's room link
#: Seconds a request waits for Redis before it is refused (the session waits meanwhile).
_ANSWER_WITHIN = 5.0

_encode = msgspec.json.Encoder().encode
_info = msgspec.json.Decoder(RoomInfo)
_policy = msgspec.json.Decoder(Policy)
_outcome = msgspec.json.Decoder(Outcome)
_entry = msgspec.json.Decoder(AuditEntry)


class _Change(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the community's channel carries."""

    origin: str
    kind: str  # "room", "moderated", "dm", "disconnect"
    info: RoomInfo | None = None
    policy: Policy | None = None
    outcome: Outcome | None = None
    user: str | None = None
    opened: bool = False
    why: str = ""


_change = msgspec.json.Decoder(_Change)


def _keys(room: str | None) -> tuple[bytes, bytes, bytes]:
    """A room's (None: the server's) policy, version and audit keys."""
    prefix = _SERVER if room is None else f"rc:{{{room_tag(room)}}}:"
    return (prefix + "p").encode(), (prefix + "pv").encode(), (prefix + "a").encode()


class _Channel:
    """The community channel as the bus sees a room: always busy (never unsubscribed),
    without members."""

    name = _CHANNEL_ROOM
    busy = True

    def holds(self, member: Participant) -> bool:
        return False

    def fan_out(self, event: bytes) -> None:
        pass

    def deliver(self, seq: int, ts: int, event: bytes) -> None:
        pass

    def announce(self, event: bytes) -> None:
        pass

    def join_reply(
        self, key: str, users: Iterable[str] | bytes, snapshot: Snapshot | None = None
    ) -> None:
        pass

    def join_marker(self, key: str, announcement: bytes | None) -> None:
        pass

    def joining_request(self, key: str) -> HistoryRequest | None:
        return None


class RedisCommunity:
    """The CommunityStore (core/ports.py) of the Redis bus; see the module docstring."""

    def __init__(self, bus: Any) -> None:
        self._bus = bus
        self._listener: CommunityListener | None = None
        self._channel = _Channel()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- starting ------------------------------------------------------------------------
    def attach(self, listener: CommunityListener) -> None:
        self._listener = listener

    @property
    def _community(self) -> CommunityListener:
        assert self._listener is not None, "attach the community first"
        return self._listener

    async def start(self) -> None:
        """Listen to the community's channel, then read what Redis holds."""
        future = self._bus.listen(self._channel, self._received, self._restored)
        if future is not None:
            async with asyncio.timeout(5.0):
                await future
        await self._load()

    async def _load(self) -> None:
        community = self._community
        server = await self._read_policy(None)
        if server is not None:
            community.server_changed(server)
        reply = await self._bus.call_registry(command(b"HGETALL", _ROOMS))
        infos = [_info.decode(reply[i + 1]) for i in range(0, len(reply), 2)]
        infos.sort(key=lambda info: info.created_at)
        for info in infos:
            if info.dm is not None:
                sides = await self._bus.call_registry(command(b"SMEMBERS", self._dm_key(info)))
                info = replace(info, dm_open=frozenset(side.decode() for side in sides))
            policy = await self._read_policy(info.name) or Policy()
            community.room_added(info, policy, None)
        # The seeds (the rooms file) have policies too once moderated.
        stored = {info.name for info in infos}
        for name in community.names():
            seed = community.room(name)
            if name not in stored and seed is not None:
                found = await self._read_policy(name)
                if found is not None:
                    community.room_added(seed, found, None)

    def _restored(self) -> None:
        self._spawn(self._load())

    async def _read_policy(self, room: str | None) -> Policy | None:
        policy_key, version_key, _ = _keys(room)
        data = await self._bus.call_key(policy_key, command(b"GET", policy_key))
        if data is None:
            return None
        version = await self._bus.call_key(version_key, command(b"GET", version_key))
        return replace(_policy.decode(data), version=int(version or 0))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("community: %s", task.exception())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- publishing and receiving --------------------------------------------------------
    def _publish(self, change: _Change) -> None:
        channel = self._bus.room_keys(self._channel).channel
        data = command(self._bus.publish_verb, channel, b"D" + _encode(change))
        self._bus.queue(self._channel, data, self._published)

    def _published(self, reply: Any) -> None:
        if isinstance(reply, Exception):
            self._bus.report_error(reply, "publishing a community change")

    def _received(self, payload: bytes) -> None:
        try:
            change = _change.decode(payload)
        except msgspec.DecodeError:
            self._bus.report_error(ValueError(payload[:60]), "a community change")
            return
        if change.origin == self._bus.instance_id:
            return  # applied when it was made
        community = self._community
        if change.kind == "room" and change.info is not None:
            community.room_added(change.info, change.policy or Policy(), change.outcome)
        elif change.kind == "moderated" and change.outcome is not None:
            if not community.moderated(change.outcome):
                self._spawn(self._reread(change.outcome.action.room))
        elif change.kind == "dm" and change.info is not None and change.user is not None:
            community.dm_changed(change.info, change.user, change.opened)
        elif change.kind == "disconnect" and change.user is not None:
            community.disconnected(change.user, change.why)

    async def _reread(self, room: str | None) -> None:
        policy = await self._read_policy(room) or Policy()
        community = self._community
        if room is None:
            community.server_changed(policy)
            return
        info = community.room(room)
        if info is not None:
            community.room_added(info, policy, None)

    def _answer(self, done: Done, work: Any) -> None:
        async def run() -> None:
            try:
                async with asyncio.timeout(_ANSWER_WITHIN):  # a stalled Redis: refused
                    result = await work
                done(result)
            except Refused as refused:
                done(refused)
            except ReplyError as exc:
                self._bus.report_error(exc, "a community change")  # NOSCRIPT: reloaded
                done(Unavailable(f"the community store refused it: {exc}"))
            except (ConnectionError, OSError, TimeoutError) as exc:
                done(Unavailable(f"the community store is unreachable: {reason(exc)}"))

        self._spawn(run())

    # -- the store (core/ports.py CommunityStore) ----------------------------------------
    def create(self, info: RoomInfo, policy: Policy, outcome: Outcome, done: Done) -> None:
        self._answer(done, self._create(info, policy, outcome))

    async def _create(self, info: RoomInfo, policy: Policy, outcome: Outcome) -> RoomInfo:
        bus = self._bus
        added = await bus.call_registry(
            command(b"HSETNX", _ROOMS, room_key(info.name), _encode(info))
        )
        if not added:
            raise RoomExists(f"a room named {info.name!r} exists")
        policy_key, _, audit_key = _keys(info.name)
        await bus.call_key(policy_key, command(b"SET", policy_key, _encode(policy)))
        await bus.call_key(audit_key, command(b"RPUSH", audit_key, _encode(audit_entry(outcome))))
        self._community.room_added(info, policy, outcome)
        self._publish(_Change(bus.instance_id, "room", info, policy, outcome))
        return info

    def moderate(self, outcome: Outcome, version: int, done: Done) -> None:
        self._answer(done, self._moderate(outcome, version))

    async def _moderate(self, outcome: Outcome, version: int) -> Outcome:
        bus = self._bus
        community = self._community
        room = outcome.action.room
        policy_key, version_key, audit_key = _keys(room)
        for _ in range(_TRIES):
            after = community.policy_after(outcome)
            stored = await bus.call_key(
                policy_key,
                bus.script(
                    "moderate",
                    (policy_key, version_key, audit_key),
                    version,
                    _encode(replace(after, version=0)),
                    _encode(audit_entry(outcome)),
                    AUDIT_MAX,
                ),
            )
            if stored:
                numbered = replace(outcome, version=int(stored))
                if numbered.action.what == "archive" and room is not None:
                    info = community.room(room)
                    if info is not None:
                        archived = replace(info, archived=True)
                        await bus.call_registry(
                            command(b"HSET", _ROOMS, room_key(room), _encode(archived))
                        )
                if not community.moderated(numbered):
                    await self._reread(room)
                self._publish(_Change(bus.instance_id, "moderated", outcome=numbered))
                return numbered
            # Another instance changed the room first: read it, decide again.
            await self._reread(room)
            outcome, version = community.redecide(outcome)
        raise Refused("the room keeps changing: try again")

    def audit(self, room: str | None, limit: int, done: Done) -> None:
        self._answer(done, self._audit(room, limit))

    async def _audit(self, room: str | None, limit: int) -> list[AuditEntry]:
        if not limit:
            return []
        _, _, audit_key = _keys(room)
        entries = await self._bus.call_key(audit_key, command(b"LRANGE", audit_key, -limit, -1))
        return [_entry.decode(entry) for entry in entries]

    def _dm_key(self, info: RoomInfo) -> bytes:
        return (REGISTRY_PREFIX + "community:dm:" + info.name).encode()

    def dm(self, room: str, user: str, opened: bool, done: Done) -> None:
        self._answer(done, self._dm(room, user, opened))

    async def _dm(self, room: str, user: str, opened: bool) -> str:
        bus = self._bus
        community = self._community
        info = community.room(room) or RoomInfo(room, "", True, created_at=now_ms())
        sides = await bus.call_registry(
            bus.script(
                "dm",
                (_ROOMS, self._dm_key(info)),
                room_key(room),
                _encode(replace(info, dm_open=frozenset())),
                user,
                1 if opened else 0,
            )
        )
        info = replace(info, dm_open=frozenset(side.decode() for side in sides))
        community.dm_changed(info, user, opened)
        self._publish(_Change(bus.instance_id, "dm", info, user=user, opened=opened))
        return room

    def users(self, room: str, done: Done) -> None:
        self._answer(done, self._users(room))

    async def _users(self, room: str) -> list[str]:
        key = RoomKeys(room).users  # presence: user id -> its sessions in the room
        users = await self._bus.call_key(key, command(b"HKEYS", key))
        return sorted(user.decode() for user in users)

    def disconnect(self, user: str, why: str) -> None:
        self._community.disconnected(user, why)
        self._publish(_Change(self._bus.instance_id, "disconnect", user=user, why=why))
