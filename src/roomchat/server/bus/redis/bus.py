"""The Redis bus: instances share rooms through Redis 7 (docs/scaling.md).

- Every event of a room goes through the room's channel (``PUBLISH``; ``SPUBLISH`` on a
  Redis Cluster, where sharded pub/sub keeps a room's traffic on the shard that owns its
  hash slot), local members included: all members everywhere see one order per room.
- Interest-based: an instance subscribes to a room's channel when its first local
  session joins, and unsubscribes about a second after its last one left.
- Presence lives in Redis, next to the channel (same hash tag, same shard). One Lua
  script per join or leave updates it and publishes the announcement atomically, so no
  instance sees an announcement before the state, or in another order (scripts.py).
- A turn's publishes and scripts go out in one write per Redis node (resp.py), in order;
  nothing on the hot path waits for a reply.
- Each instance renews a lease. An instance that stops renewing it (SIGKILL, a lost
  machine) is purged by the survivors: its sessions leave their rooms, announced once.
- When Redis is lost the instance says so (warning), counts it, keeps every session and
  delivers among its local members; it reconnects with a capped backoff, re-subscribes,
  re-asserts its sessions' presence and renews its lease. What an outage loses is listed
  in docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.crc import key_slot

from roomchat.protocol import joined_event, left_event, name_key
from roomchat.server.bus.memory import BUS_CONNECTED_DOC
from roomchat.server.bus.redis import scripts
from roomchat.server.bus.redis.resp import (
    ReplyError,
    RespConnection,
    command,
    open_connection,
    reply_future,
)
from roomchat.server.core.clock import now_ms
from roomchat.server.core.history import Snapshot
from roomchat.server.core.ports import BusError, HeldNames, Participant, RoomLink, Wakeups
from roomchat.server.core.stats import Reading

__all__ = ["BusStats", "RedisBus", "RedisNames", "RedisPresence", "parse_redis_url"]

log = logging.getLogger("roomchat.bus")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0  # so that delivery resumes within about a second of Redis being back
_UNSUBSCRIBE_AFTER = 1.0  # seconds a room stays subscribed after its last local member
#: Past this many unsent bytes to one Redis node (Redis slower than the chat), a room's
#: events are delivered locally only: counted and logged, memory stays bounded.
MAX_BACKLOG = 32 * 1024 * 1024
_LOGGED_EVERY = 1000  # overflow and error log lines: the first, then every 1000th


@dataclass(frozen=True, slots=True)
class RedisTarget:
    cluster: bool
    hosts: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None

    @property
    def display(self) -> str:
        nodes = ",".join(f"{host}:{port}" for host, port in self.hosts)
        return f"{'redis+cluster' if self.cluster else 'redis'}://{nodes}" + (
            f"/{self.db}" if self.db else ""
        )


def parse_redis_url(url: str) -> RedisTarget:
    """``redis://[[user]:password@]HOST[:PORT][/DB]`` or
    ``redis+cluster://[[user]:password@]HOST:PORT[,HOST:PORT...]``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("redis", "redis+cluster"):
        raise BusError(f"bus URL {url!r}: expected redis:// or redis+cluster://")
    netloc = parts.netloc
    credentials, _, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if credentials:
        user, sep, secret = credentials.partition(":")
        username, password = (
            (unquote(user) or None, unquote(secret)) if sep else (None, unquote(user))
        )
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, sep, port_text = item.strip().rpartition(":")
        if not sep:
            host, port_text = port_text, "6379"
        host = host.strip("[]")
        if not host:
            raise BusError(f"bus URL {url!r}: no host")
        try:
            port = int(port_text)
        except ValueError:
            raise BusError(f"bus URL {url!r}: port {port_text!r} is not a number") from None
        if not 0 < port < 65536:
            raise BusError(f"bus URL {url!r}: port {port} out of range")
        hosts.append((host, port))
    cluster = scheme == "redis+cluster"
    if not cluster and len(hosts) != 1:
        raise BusError(f"bus URL {url!r}: one host for redis://, several need redis+cluster://")
    path = parts.path.strip("/")
    db = 0
    if path:
        if cluster:
            raise BusError(f"bus URL {url!r}: a Redis Cluster has no databases")
        try:
            db = int(path)
        except ValueError:
            raise BusError(f"bus URL {url!r}: database {path!r} is not a number") from None
    return RedisTarget(cluster, tuple(hosts), db, username, password)


class BusStats:
    """Counters of the bus (read by logs, tests and metrics)."""

    __slots__ = (
        "connects",
        "errors",
        "local_only",
        "outages",
        "overflow",
        "published",
        "purged_instances",
        "received",
    )

    def __init__(self) -> None:
        self.published = 0  # events written to Redis
        self.received = 0  # events read from Redis (all kinds)
        self.local_only = 0  # events delivered only locally (Redis lost or too slow)
        self.overflow = 0  # ... of which because Redis was too slow
        self.errors = 0  # error replies from Redis
        self.outages = 0  # times the connection to Redis was lost
        self.connects = 0  # successful (re)connections
        self.purged_instances = 0  # dead instances cleaned up by this one


def _tag(room: str) -> str:
    # A hash of the name: any room name makes a valid, distinct hash tag.
    return hashlib.blake2b(room.encode(), digest_size=8).hexdigest()


class _RoomKeys:
    """A room's keys and channel in Redis, all under one hash tag (one cluster slot)."""

    __slots__ = ("channel", "keys", "post_head", "publish_head", "slot")

    def __init__(self, room: str, cluster: bool) -> None:
        prefix = f"rc:{{{_tag(room)}}}:"
        self.channel = (prefix + "c").encode()
        seq, stream = (prefix + "q").encode(), (prefix + "h").encode()
        #: sessions, users, order, order counter, left events, channel, message counter,
        #: history stream (scripts.py)
        self.keys = (*((prefix + k).encode() for k in "suonl"), self.channel, seq, stream)
        self.slot = key_slot(self.channel)
        #: The EVALSHA of POST up to its last argument (the line): set once connected.
        self.post_head: bytes | None = None
        verb = b"SPUBLISH" if cluster else b"PUBLISH"
        self.publish_head = b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(verb),
            verb,
            len(self.channel),
            self.channel,
        )


class _Node:
    """One Redis server: a connection for commands and one for subscriptions."""

    __slots__ = ("address", "cmd", "handlers", "parts", "sub")

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.cmd: RespConnection | None = None
        self.sub: RespConnection | None = None
        self.parts: list[bytes] = []  # commands of this turn, written at its end
        self.handlers: list[Callable[[Any], None]] = []


class RedisBus:
    """Rooms shared through Redis; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        wakeups: Wakeups,
        lease: float,
        history: int,
    ) -> None:
        self._target = parse_redis_url(url)
        self._wakeups = wakeups
        self._lease = lease
        self.history = history
        self.instance_id = secrets.token_hex(6)
        self.stats = BusStats()
        self.presence = RedisPresence(self)
        cluster = self._target.cluster
        self._verbs = (
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"SPUBLISH")
            if cluster
            else (b"SUBSCRIBE", b"UNSUBSCRIBE", b"PUBLISH")
        )
        self._keys: dict[RoomLink, _RoomKeys] = {}
        self._by_channel: dict[bytes, RoomLink] = {}
        self._by_name: dict[str, RoomLink] = {}
        self._nodes: dict[tuple[str, int], _Node] = {}
        self._slots: list[_Node] = []  # slot -> node (cluster), or [the node]
        # Room -> True (subscribed) or the future of its subscription.
        self._subscribed: dict[RoomLink, asyncio.Future[None] | bool] = {}
        self._unsubscribing: set[RoomLink] = set()
        self._shas: dict[str, bytes] = {}
        self._online = False
        self._closing = False
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._offline_since = 0.0
        registry = "rc:{rc}:"
        self._registry = registry.encode()
        self._instances_key = (registry + "instances").encode()
        self.names = RedisNames(self)

    # -- Bus ---------------------------------------------------------------------------
    #: Redis numbers the messages (the POST script), not the rooms.
    numbers_here = False

    @property
    def description(self) -> str:
        return f"{self._target.display} (instance {self.instance_id})"

    @property
    def connected(self) -> bool:
        return self._online

    @property
    def queued_bytes(self) -> int:
        """Bytes not yet sent to Redis: this turn's commands and what the connections'
        transports still hold (/metrics: roomchat_bus_queue_bytes)."""
        total = 0
        for node in self._nodes.values():
            total += sum(map(len, node.parts))
            for connection in (node.cmd, node.sub):
                if connection is not None:
                    total += connection.write_buffer
        return total

    def readings(self) -> Iterable[Reading]:
        stats = self.stats
        return (
            Reading("bus_connected", "gauge", BUS_CONNECTED_DOC, 1 if self._online else 0),
            Reading("bus_published", "counter", "Events published to Redis.", stats.published),
            Reading("bus_received", "counter", "Events received from Redis.", stats.received),
            Reading("bus_errors", "counter", "Error replies from Redis.", stats.errors),
            Reading(
                "bus_outages", "counter", "Times the connection to Redis was lost.", stats.outages
            ),
            Reading(
                "bus_connects",
                "counter",
                "Successful connections to Redis (the first one included).",
                stats.connects,
            ),
            Reading(
                "bus_local_only",
                "counter",
                "Events delivered to local members only (Redis lost or too slow).",
                stats.local_only,
            ),
            Reading(
                "bus_overflow",
                "counter",
                "Of those, events kept local because Redis was too slow.",
                stats.overflow,
            ),
            Reading(
                "bus_purged_instances",
                "counter",
                "Dead instances cleaned up by this one.",
                stats.purged_instances,
            ),
            Reading(
                "bus_queue_bytes",
                "gauge",
                "Bytes queued for Redis and not yet sent.",
                self.queued_bytes,
            ),
        )

    def publisher(self, room: RoomLink) -> Callable[[bytes], None]:
        """Posting a message runs POST (scripts.py): Redis numbers it, keeps it in the
        room's stream and publishes ``M<seq> <ts>\\n<line>``. During an outage the
        message is numbered and delivered on this instance only (room.fan_out)."""
        keys = self._room_keys(room)
        fan_out = room.fan_out
        stats = self.stats
        on_reply = self._on_publish_reply

        def publish(event: bytes) -> None:
            node = self._node_for(keys) if self._online else None
            if node is None or node.cmd is None or node.cmd.write_buffer > MAX_BACKLOG:
                self._local_only(node is not None)
                fan_out(event)
                return
            head = keys.post_head
            if head is None:
                head = keys.post_head = self._post_head(keys)
            if not node.parts:
                self._schedule_flush()
            count = b"%d" % event.count(b"\n")  # a run of messages is one post
            ts = b"%d" % now_ms()
            node.parts.append(
                b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                % (head, len(count), count, len(ts), ts, len(event), event)
            )
            node.handlers.append(on_reply)
            stats.published += 1

        return publish

    def _post_head(self, keys: _RoomKeys) -> bytes:
        # EVALSHA sha 3 <counter> <stream> <channel> <history size> <verb> [line]: RESP
        # of every argument but the last, built once per room.
        whole = command(
            b"EVALSHA",
            self._shas["post"],
            3,
            keys.keys[6],
            keys.keys[7],
            keys.channel,
            self.history,
            self._verbs[2],
            b"",
            b"",
            b"",
        )
        return whole[: -3 * len(b"$0\r\n\r\n")]  # count, time and lines: per post

    async def start(self) -> None:
        try:
            await self._connect()
            await self._renew_once()  # registered (and so purged if killed) from now on
        except (OSError, TimeoutError, ReplyError, ConnectionError, BusError) as exc:
            self._drop_connections()
            raise BusError(
                f"cannot use the Redis bus at {self._target.display}: {_reason(exc)}"
            ) from None
        self._online = True
        self._lease_task = self._spawn(self._renew_lease())

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._online:
            self._flush()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    node = self._registry_node()
                    if node.cmd is not None:
                        me = self.instance_id
                        await self.names.purge(me)
                        await node.cmd.call("DEL", self._registry + b"lease:" + me.encode())
                        await node.cmd.call("DEL", self._registry + b"rooms:" + me.encode())
                        await node.cmd.call("SREM", self._instances_key, me)
        self._online = False
        self._drop_connections()

    # -- wiring ------------------------------------------------------------------------
    def _room_keys(self, room: RoomLink) -> _RoomKeys:
        keys = self._keys.get(room)
        if keys is None:
            keys = self._keys[room] = _RoomKeys(room.name, self._target.cluster)
            self._by_channel[keys.channel] = room
            self._by_name[room.name] = room
        return keys

    def _node_for(self, keys: _RoomKeys) -> _Node | None:
        slots = self._slots
        if not slots:
            return None
        return slots[keys.slot] if len(slots) > 1 else slots[0]

    def _registry_node(self) -> _Node:
        node = self._node_for_slot(key_slot(self._instances_key))
        if node is None:
            raise ConnectionError("not connected to Redis")
        return node

    def _node_for_slot(self, slot: int) -> _Node | None:
        if not self._slots:
            return None
        return self._slots[slot] if len(self._slots) > 1 else self._slots[0]

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- writing -----------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write each node's commands of this turn with one write."""
        self._flush_scheduled = False
        for node in self._nodes.values():
            if node.parts:
                parts, node.parts = node.parts, []
                handlers, node.handlers = node.handlers, []
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                if node.cmd is not None:
                    node.cmd.send_many(data, handlers)
                else:
                    error = ConnectionError("not connected to Redis")
                    for handler in handlers:
                        handler(error)

    def queue(self, room: RoomLink, data: bytes, handler: Callable[[Any], None]) -> None:
        """Queue one command about ``room`` behind the room's earlier events (scripts)."""
        self._queue_on(self._node_for(self._room_keys(room)), data, handler)

    def queue_registry(self, data: bytes, handler: Callable[[Any], None]) -> None:
        """Queue one command on the node of the registry's slot (names, leases)."""
        self._queue_on(self._node_for_slot(key_slot(self._instances_key)), data, handler)

    def _queue_on(self, node: _Node | None, data: bytes, handler: Callable[[Any], None]) -> None:
        if node is None or not self._online:
            handler(ConnectionError("not connected to Redis"))
            return
        if not node.parts:
            self._schedule_flush()
        node.parts.append(data)
        node.handlers.append(handler)

    def script(self, name: str, keys: tuple[bytes, ...], *args: bytes | str | int) -> bytes:
        return command(b"EVALSHA", self._shas[name], len(keys), *keys, *args)

    def _on_publish_reply(self, reply: Any) -> None:
        if isinstance(reply, ReplyError):
            self._reply_error(reply, "publish")

    def _reply_error(self, error: Exception, what: str) -> None:
        self.stats.errors += 1
        message = str(error)
        if message.startswith(("MOVED", "ASK")):
            # A slot moved (resharding): find the new owners, as after any outage.
            self._lost(f"{what}: {message}")
            return
        if isinstance(error, ReplyError) and (
            self.stats.errors == 1 or self.stats.errors % _LOGGED_EVERY == 0
        ):
            log.warning("redis bus: %s failed (#%d): %s", what, self.stats.errors, message)

    def _local_only(self, overflow: bool) -> None:
        stats = self.stats
        stats.local_only += 1
        if overflow:
            stats.overflow += 1
            if stats.overflow == 1 or stats.overflow % _LOGGED_EVERY == 0:
                log.warning(
                    "redis bus: Redis is %d MiB behind; %d events delivered on this "
                    "instance only so far",
                    MAX_BACKLOG >> 20,
                    stats.overflow,
                )

    # -- subscriptions -----------------------------------------------------------------
    def interest(self, room: RoomLink) -> asyncio.Future[None] | None:
        """Make sure this instance receives ``room``'s events: None when it already
        does, else a future done once the subscription is confirmed."""
        state = self._subscribed.get(room)
        if state is True:
            return None
        if isinstance(state, asyncio.Future):
            return state
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscribed[room] = future
        self._send_subscribe(room)
        return future

    def _send_subscribe(self, room: RoomLink) -> None:
        keys = self._room_keys(room)
        node = self._node_for(keys)
        if node is None or node.sub is None:
            return  # subscribed again by the reconnection
        node.sub.subscribe_write(command(self._verbs[0], keys.channel))
        registry = self._registry_node()
        if registry.cmd is not None:
            rooms_key = self._registry + b"rooms:" + self.instance_id.encode()
            registry.cmd.send(command(b"SADD", rooms_key, room.name))

    def lose_interest(self, room: RoomLink) -> None:
        """The room's last local session left: unsubscribe soon, unless one comes back."""
        asyncio.get_running_loop().call_later(_UNSUBSCRIBE_AFTER, self._unsubscribe_idle, room)

    def _unsubscribe_idle(self, room: RoomLink) -> None:
        if room.busy or self._subscribed.get(room) is not True:
            return
        del self._subscribed[room]
        keys = self._room_keys(room)
        node = self._node_for(keys)
        if node is not None and node.sub is not None and self._online:
            self._unsubscribing.add(room)
            node.sub.subscribe_write(command(self._verbs[1], keys.channel))

    def _on_push(self, push: list[Any]) -> None:
        kind = push[0]
        if isinstance(kind, Exception):  # a refused subscription (e.g. CLUSTERDOWN)
            self._subscriptions_failed(str(kind))
            return
        room = self._by_channel.get(push[1])
        if kind == b"message" or kind == b"smessage":
            self.stats.received += 1
            if room is not None:
                payload: bytes = push[2]
                if payload[0] == 77:  # b"M": a message numbered by POST
                    head, _, line = payload.partition(b"\n")
                    seq, _, ts = head[1:].partition(b" ")
                    room.deliver(int(seq), int(ts), line)
                elif payload[0] == 123:  # b"{": an announcement for every member
                    room.announce(payload)
                else:
                    self._control(room, payload)
        elif room is None:
            return
        elif kind == b"subscribe" or kind == b"ssubscribe":
            state = self._subscribed.get(room)
            if isinstance(state, asyncio.Future):
                self._subscribed[room] = True
                if not state.done():
                    state.set_result(None)
        elif room in self._unsubscribing:  # the confirmation of our own unsubscribe
            self._unsubscribing.discard(room)
        elif self._subscribed.get(room) is True:
            # Redis dropped the subscription itself: the slot moved to another shard.
            self._lost(f"subscription to room {room.name!r} dropped by Redis (slot moved)")

    def _control(self, room: RoomLink, payload: bytes) -> None:
        kind = payload[:1]
        if kind == b"J":  # a join's marker: J<session key>\n<"joined" event or nothing>
            key, _, announcement = payload[1:].partition(b"\n")
            room.join_marker(key.decode(), announcement or None)
        elif kind == b"O":  # O<instance>\n<event>: re-asserted presence after an outage
            origin, _, event = payload[1:].partition(b"\n")
            if origin.decode() != self.instance_id and event:
                room.announce(event)

    # -- connecting, losing, reconnecting ----------------------------------------------
    async def _connect(self) -> None:
        target = self._target
        if target.cluster:
            addresses = await self._cluster_map()
        else:
            addresses = [target.hosts[0]]
        nodes: dict[tuple[str, int], _Node] = {}
        self._nodes = nodes  # so that a failure half-way drops what was opened
        for address in dict.fromkeys(addresses):
            node = nodes[address] = _Node(address)
            node.cmd = await self._open(address)
            node.sub = await self._open(address, self._on_push)
            for connection in (node.cmd, node.sub):
                # Bus traffic ends a coalescing wait (outbox.py): never held up by it.
                self._wakeups.watch(connection.fileno)
            for name, source in scripts.SCRIPTS.items():
                sha = await node.cmd.call("SCRIPT", "LOAD", source)
                self._shas[name] = sha
        self._nodes = nodes
        self._slots = [nodes[address] for address in addresses]
        self.stats.connects += 1

    async def _open(
        self,
        address: tuple[str, int],
        on_push: Callable[[list[Any]], None] | None = None,
        *,
        watched: bool = True,
    ) -> RespConnection:
        """Connect to one node; ``watched``: losing it means Redis is lost."""
        target = self._target
        return await open_connection(
            *address,
            self._on_connection_lost if watched else _ignore_lost,
            on_push,
            username=target.username,
            password=target.password,
            db=target.db,
        )

    async def _cluster_map(self) -> list[tuple[str, int]]:
        """slot -> node address, from the first seed node that answers CLUSTER SLOTS."""
        errors: list[str] = []
        for host, port in self._target.hosts:
            try:
                seed = await self._open((host, port), watched=False)
            except (OSError, TimeoutError, ReplyError) as exc:
                errors.append(f"{host}:{port}: {_reason(exc)}")
                continue
            try:
                ranges = await seed.call("CLUSTER", "SLOTS")
            finally:
                seed.close()
            if isinstance(ranges, ReplyError):
                errors.append(f"{host}:{port}: {ranges}")
                continue
            owners: list[tuple[str, int] | None] = [None] * 16384
            for start, end, master, *_replicas in ranges:
                address = ((master[0] or b"").decode() or host, int(master[1]))
                for slot in range(start, end + 1):
                    owners[slot] = address
            missing = owners.count(None)
            if missing:
                raise BusError(f"the cluster does not cover {missing} hash slots")
            return [address for address in owners if address is not None]
        raise BusError("no cluster node answered: " + "; ".join(errors))

    def _on_connection_lost(self, connection: RespConnection, exc: Exception | None) -> None:
        if self._closing:
            return
        for node in self._nodes.values():
            if connection is node.cmd or connection is node.sub:
                what = "subscriber" if connection is node.sub else "command"
                self._lost(f"{what} connection to {connection.name} lost: {exc or 'closed'}")
                return

    def _lost(self, reason: str) -> None:
        """Redis is gone (or moved): go local, say so, and reconnect in the background."""
        if self._closing or not self._online:
            return
        self._online = False
        self._offline_since = time.monotonic()
        self.stats.outages += 1
        log.warning(
            "redis bus: %s; rooms are local to this instance until it is back (outage #%d)",
            reason,
            self.stats.outages,
        )
        self._drop_connections()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = self._spawn(self._reconnect())

    def _subscriptions_failed(self, reason: str) -> None:
        """Every subscription is void (its connection is gone, or Redis refused it)."""
        subscriptions, self._subscribed = self._subscribed, {}
        self._unsubscribing.clear()
        for state in subscriptions.values():
            if isinstance(state, asyncio.Future) and not state.done():
                state.set_exception(ConnectionError(reason))
        if self._online:
            self._lost(f"subscription refused: {reason}")

    def _drop_connections(self) -> None:
        self._subscriptions_failed("Redis connection lost")
        nodes, self._nodes = self._nodes, {}
        self._slots = []
        error = ConnectionError("Redis connection lost")
        for node in nodes.values():
            handlers, node.handlers, node.parts = node.handlers, [], []
            for handler in handlers:
                handler(error)
            for connection in (node.cmd, node.sub):
                if connection is not None:
                    self._wakeups.unwatch(connection.fileno)
                    connection.abort()

    async def _reconnect(self) -> None:
        delay = _BACKOFF_FIRST
        attempts = 0
        while not self._closing:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                await self._connect()
                self._online = True
                await self._restore()
            except (OSError, TimeoutError, ReplyError, ConnectionError, BusError) as exc:
                self._online = False
                self._drop_connections()
                if attempts == 1 or attempts % 20 == 0:
                    log.warning("redis bus: reconnecting (attempt %d): %s", attempts, _reason(exc))
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            log.warning(
                "redis bus: reconnected after %.1f s (%d attempts); rooms shared again",
                time.monotonic() - self._offline_since,
                attempts,
            )
            return

    async def _restore(self) -> None:
        """After a reconnection: subscribe to every room with local sessions again and
        re-assert their presence (Redis may have lost it), then renew the lease."""
        rooms = self.presence.local_rooms()
        futures = [future for room in rooms if (future := self.interest(room)) is not None]
        async with asyncio.timeout(5.0):
            for outcome in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise ConnectionError(f"subscribing again failed: {outcome}")
            for room in rooms:
                await self.presence.reassert(room)
            await self.names.reassert()
            await self._renew_once()

    # -- leases ------------------------------------------------------------------------
    async def _renew_lease(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            if not self._online:
                continue
            try:
                async with asyncio.timeout(self._lease / 3):
                    await self._renew_once()
                    await self._purge_dead()
            except TimeoutError:
                self._lost(f"no answer from Redis within {self._lease / 3:g} s")
            except (ConnectionError, ReplyError) as exc:
                if self._online:
                    log.warning("redis bus: lease renewal failed: %s", _reason(exc))

    async def _renew_once(self) -> None:
        node = self._registry_node()
        assert node.cmd is not None
        me = self.instance_id.encode()
        await node.cmd.call(
            "SET", self._registry + b"lease:" + me, b"1", "PX", int(self._lease * 1000)
        )
        await node.cmd.call("SADD", self._instances_key, me)

    async def _purge_dead(self) -> None:
        """Remove the sessions of instances whose lease ran out."""
        node = self._registry_node()
        assert node.cmd is not None
        instances = await node.cmd.call("SMEMBERS", self._instances_key)
        for other in instances:
            if other.decode() == self.instance_id:
                continue
            if await node.cmd.call("EXISTS", self._registry + b"lease:" + other):
                continue
            rooms_key = self._registry + b"rooms:" + other
            names = await node.cmd.call("SMEMBERS", rooms_key)
            removed = 0
            for name in names:
                room = self._by_name.get(name.decode())
                if room is not None:
                    removed += await self.presence.purge(room, other.decode())
            await self.names.purge(other.decode())
            await node.cmd.call("DEL", rooms_key)
            await node.cmd.call("SREM", self._instances_key, other)
            self.stats.purged_instances += 1
            log.warning(
                "redis bus: instance %s stopped renewing its lease: removed its %d sessions",
                other.decode(),
                removed,
            )


def _ignore_lost(connection: RespConnection, exc: Exception | None) -> None:
    pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class RedisPresence:
    """Who is in a room, kept in Redis (scripts.py) and mirrored locally for this
    instance's own sessions (to answer joins during an outage and re-assert after)."""

    def __init__(self, bus: RedisBus) -> None:
        self._bus = bus
        # room -> session key -> user id: this instance's sessions, joined or joining.
        self._local: dict[RoomLink, dict[str, str]] = {}

    def local_rooms(self) -> list[RoomLink]:
        return [room for room, sessions in self._local.items() if sessions]

    def users(self, room: RoomLink) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self._local.get(room, {}).values()))

    def join(self, room: RoomLink, member: Participant) -> None:
        sessions = self._local.setdefault(room, {})
        sessions[member.key] = member.user_id
        bus = self._bus
        if not bus.connected:
            self._answer_locally(room, member)
            return
        future = bus.interest(room)
        if future is None:
            self._send_join(room, member)
            return

        def subscribed(done: asyncio.Future[None]) -> None:
            if not room.holds(member):  # left (or gone) while waiting
                return
            if done.cancelled() or done.exception() is not None:
                self._answer_locally(room, member)
            else:
                self._send_join(room, member)

        future.add_done_callback(subscribed)

    def _send_join(self, room: RoomLink, member: Participant) -> None:
        bus = self._bus
        keys = bus._room_keys(room)
        key, user = member.key, member.user_id
        v2 = getattr(member, "v2", False)

        def reply(answer: Any) -> None:
            if isinstance(answer, Exception):
                if isinstance(answer, ReplyError):
                    bus._reply_error(answer, f"join of room {room.name!r}")
                if room.holds(member):
                    self._answer_locally(room, member)
                return
            users, seq, entries = answer
            snapshot = None
            if v2:
                held = [
                    (first + n, int(fields[1]), line)
                    for ident, fields in reversed(entries)
                    for first in (int(ident.partition(b"-")[0]),)
                    for n, line in enumerate(fields[3].split(b"\r\n")[:-1])
                ]
                snapshot = Snapshot(int(seq), held)
            room.join_reply(key, [u.decode() for u in users], snapshot)

        mode, count, after = b"", 0, 0
        if v2:
            request = room.joining_request(key)
            if request is not None and request.after is not None:
                mode, count, after = b"a", bus.history, min(request.after, 10**14)
            elif request is not None and request.last:
                mode, count = b"h", min(request.last, bus.history)
        bus.queue(
            room,
            bus.script(
                "join",
                keys.keys,
                key,
                bus.instance_id,
                user,
                bus._verbs[2],
                joined_event(room.name, user),
                left_event(room.name, user),
                mode,
                count,
                after,
            ),
            reply,
        )

    def _answer_locally(self, room: RoomLink, member: Participant) -> None:
        """Redis is not there: the room is this instance's alone until it is back."""
        sessions = self._local.get(room, {})
        users = list(dict.fromkeys(sessions.values()))
        first = list(sessions.values()).count(member.user_id) == 1
        room.join_reply(member.key, users)
        room.join_marker(member.key, joined_event(room.name, member.user_id) if first else None)

    def leave(self, room: RoomLink, member: Participant) -> None:
        sessions = self._local.get(room)
        if sessions is None or sessions.pop(member.key, None) is None:
            return
        bus = self._bus
        user = member.user_id
        if bus.connected:
            keys = bus._room_keys(room)
            bus.queue(
                room,
                bus.script("leave", keys.keys, member.key, user, bus._verbs[2]),
                lambda reply: self._leave_reply(room, reply),
            )
        elif user not in sessions.values():
            room.announce(left_event(room.name, user))
        if not room.busy:
            bus.lose_interest(room)

    def _leave_reply(self, room: RoomLink, reply: Any) -> None:
        if isinstance(reply, ReplyError):
            self._bus._reply_error(reply, f"leave of room {room.name!r}")

    async def reassert(self, room: RoomLink) -> None:
        """Make Redis hold exactly this instance's sessions of ``room`` (after an
        outage); users who appear or disappear are announced to the other instances."""
        bus = self._bus
        keys = bus._room_keys(room)
        args: list[bytes | str] = []
        for key, user in self._local.get(room, {}).items():
            args += [key, user, joined_event(room.name, user), left_event(room.name, user)]
        origin = b"O" + bus.instance_id.encode() + b"\n"
        await self._call(
            room, bus.script("assert", keys.keys, bus.instance_id, bus._verbs[2], origin, *args)
        )

    async def purge(self, room: RoomLink, instance: str) -> int:
        """Remove a dead instance's sessions from ``room``; how many there were."""
        bus = self._bus
        keys = bus._room_keys(room)
        removed = await self._call(
            room, bus.script("assert", keys.keys, instance, bus._verbs[2], b"")
        )
        return int(removed)

    async def _call(self, room: RoomLink, data: bytes) -> Any:
        future, handler = reply_future()
        self._bus.queue(room, data, handler)
        return await future


class RedisNames:
    """The user names of every instance, kept in Redis (scripts.py ``NAME_*``), for
    roomchat.server.core.names. Every command goes to the registry's node in the turn's
    pipeline; a claim's answer comes with Redis' reply."""

    def __init__(self, bus: RedisBus) -> None:
        self._bus = bus
        #: Set by the server: this process's registry (asserted again after an outage).
        self.local: HeldNames | None = None
        prefix = bus._registry
        self._keys = (prefix + b"names", prefix + b"holds")
        self.clashes = 0  # names found held elsewhere too when asserted after an outage

    def attach(self, local: HeldNames) -> None:
        self.local = local

    def _keys_of(self, instance: str) -> tuple[bytes, bytes, bytes]:
        return (*self._keys, self._bus._registry + b"held:" + instance.encode())

    def claim(self, name: str, how: str, answer: Callable[[str | None], None]) -> None:
        bus = self._bus
        if not bus.connected:
            answer(None)  # an outage: this instance decides alone
            return

        def reply(holder: Any) -> None:
            if isinstance(holder, Exception):
                if isinstance(holder, ReplyError):
                    bus._reply_error(holder, f"claim of name {name!r}")
                answer(None)  # as in an outage; asserted again on reconnection
            else:
                answer(None if holder is None else holder.decode())

        keys = self._keys_of(bus.instance_id)
        bus.queue_registry(bus.script("name_claim", keys, name_key(name), name, how), reply)

    def hold(self, name: str) -> None:
        self._tell("name_claim", name, name_key(name), name, "hold")

    def release(self, name: str) -> None:
        self._tell("name_release", name, name_key(name))

    def _tell(self, script: str, name: str, *args: str) -> None:
        bus = self._bus
        if not bus.connected:
            return  # the registry is asserted again on reconnection

        def reply(answer: Any) -> None:
            if isinstance(answer, ReplyError):
                bus._reply_error(answer, f"{script} of name {name!r}")

        bus.queue_registry(bus.script(script, self._keys_of(bus.instance_id), *args), reply)

    async def reassert(self) -> None:
        """After an outage: the registry holds exactly this instance's names."""
        args: list[str | int] = []
        for name, count in self.local.held() if self.local is not None else ():
            args += [name_key(name), name, count]
        clashes = int(await self._call(self._bus.instance_id, args))
        if clashes:
            self.clashes += clashes
            log.warning(
                "redis bus: %d names were taken on another instance during the outage too "
                "(both keep them until their sessions end)",
                clashes,
            )

    async def purge(self, instance: str) -> None:
        """Drop every name ``instance`` (a dead one, or this one closing) held."""
        await self._call(instance, [])

    async def _call(self, instance: str, args: list[str | int]) -> Any:
        bus = self._bus
        future, handler = reply_future()
        bus.queue_registry(bus.script("name_assert", self._keys_of(instance), *args), handler)
        return await future
