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

This module is the bus alone: connections, routing, the turn's writes, subscriptions,
outages and leases. Presence (presence.py) and names (names.py) use it only through
its command interface (commands.py ``Commands``), as any further room action should.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from redis.crc import key_slot

from roomchat.protocol import MessageDeleted, MessageEdited
from roomchat.server.bus.redis import scripts
from roomchat.server.bus.redis.commands import (
    EXEC,
    MULTI,
    REGISTRY_PREFIX,
    Posting,
    ReplyHandler,
    RoomKeys,
    numbered_runs,
)
from roomchat.server.bus.redis.community import RedisCommunity
from roomchat.server.bus.redis.names import RedisNames
from roomchat.server.bus.redis.nodes import (
    Address,
    Node,
    check_master,
    cluster_map,
    load_scripts,
    open_node,
    reason,
    sentinel_master,
)
from roomchat.server.bus.redis.posting import (
    DEFAULT_OUTAGE_QUEUE,
    TRIM_EVERY,
    HeldPosts,
    Post,
    PostBatch,
    PostRun,
)
from roomchat.server.bus.redis.presence import RedisPresence
from roomchat.server.bus.redis.resp import ReplyError, RespConnection, command, reply_future
from roomchat.server.bus.redis.stats import BusStats
from roomchat.server.bus.redis.url import parse_redis_url
from roomchat.server.core.ports import Archiving, BusError, Publisher, RoomLink, Wakeups
from roomchat.server.core.stats import Reading

__all__ = ["MAX_BACKLOG", "RedisBus"]

log = logging.getLogger("roomchat.bus")

_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0  # so that delivery resumes within about a second of Redis being back
_UNSUBSCRIBE_AFTER = 1.0  # seconds a room stays subscribed after its last local member
#: Past this many unsent bytes to one Redis node (Redis slower than the chat), a room's
#: events are delivered locally only: counted and logged, memory stays bounded.
MAX_BACKLOG = 32 * 1024 * 1024
_LOGGED_EVERY = 1000  # overflow and error log lines: the first, then every 1000th

# A channel payload's first byte (scripts.py), as ints: ``payload[0]`` is an int, and
# comparing it costs less on the receiving hot path than slicing ``payload[:1]``.
_MESSAGE = scripts.MESSAGE[0]
_EVENT = scripts.EVENT[0]
#: The rarer kinds (control payloads), compared as bytes.
_MARKER = scripts.MARKER
_SYNCED = scripts.SYNCED
_REASSERTED = scripts.REASSERTED
_RELAYED = scripts.RELAYED
_PURGED = scripts.PURGED
_COMMUNITY = scripts.COMMUNITY
#: A handler's error when there is no connection to write to.
_NOT_CONNECTED = "not connected to Redis"
_EVALSHA = b"\r\nEVALSHA\r\n"  # in the first bytes of a script's command (RESP)
_RELOADS = 3  # NOSCRIPT answers to one command that load the scripts again, at most


_decode_change = msgspec.json.Decoder(MessageEdited | MessageDeleted).decode


class CatchingUp:
    """A room's catch-up after an outage (RedisBus._catch_up). CATCH_UP reads the
    room's recent runs and puts a sync point (C) in its channel at that place: runs the
    channel brings before the sync point are in what it read (dropped), runs after it
    are new, delivered behind what it read (held here until its reply)."""

    __slots__ = ("marked", "replied", "runs")

    def __init__(self) -> None:
        self.marked = False  # its sync point came through the channel
        self.replied = False  # its reply came (and was delivered)
        self.runs: list[tuple[int, bytes]] = []  # (time, lines) after the sync point


def _changed_seq(event: bytes) -> int | None:
    """The message an edit or deletion event is about (None: another event)."""
    if not event.startswith(b'{"_et":"message_'):
        return None
    try:
        return _decode_change(event).seq
    except msgspec.DecodeError:
        return None


class RedisBus:
    """Rooms shared through Redis; see the module docstring. Implements the rules' Bus
    port (core/ports.py) and, for presence and names, commands.py ``Commands``."""

    def __init__(
        self,
        url: str,
        *,
        wakeups: Wakeups,
        lease: float,
        history: int,
        outage_queue: int = DEFAULT_OUTAGE_QUEUE,
    ) -> None:
        self._target = parse_redis_url(url)
        self.outage_queue = outage_queue
        self.stats = BusStats()
        # Messages posted while Redis was away (or while these wait), and those it
        # refused: posted once Redis is back.
        self._held = HeldPosts(outage_queue, self.stats)
        # Rooms catching up after an outage (_catch_up).
        self._catching_up: dict[RoomLink, CatchingUp] = {}
        self._wakeups = wakeups
        self._lease = lease
        self.history = history
        self.instance_id = secrets.token_hex(6)
        #: The start of an epoch this instance sets for a room whose numbering
        #: (re)starts in Redis (the scripts add Redis's time: a new one each time).
        self.epoch_candidate = secrets.token_hex(3)
        #: Where the messages posted here are kept (keep_with), or None.
        self._archive: Archiving | None = None
        cluster = self._target.cluster
        self._subscribe_verb, self._unsubscribe_verb, self.publish_verb = (
            (b"SSUBSCRIBE", b"SUNSUBSCRIBE", b"SPUBLISH")
            if cluster
            else (b"SUBSCRIBE", b"UNSUBSCRIBE", b"PUBLISH")
        )
        self._keys: dict[RoomLink, RoomKeys] = {}
        self._by_channel: dict[bytes, RoomLink] = {}
        self._by_name: dict[str, RoomLink] = {}
        self._nodes: dict[Address, Node] = {}
        self._slots: list[Node] = []  # slot -> node (cluster), or [the node]
        # Room -> True (subscribed) or the future of its subscription.
        self._subscribed: dict[RoomLink, asyncio.Future[None] | bool] = {}
        self._unsubscribing: set[RoomLink] = set()
        # Channels listened to for their D payloads (the community's), and what to call
        # once an outage is over (the community reads its state again).
        self._listeners: dict[RoomLink, Callable[[bytes], None]] = {}
        self._restored: list[Callable[[], None]] = []
        self._shas: dict[str, bytes] = {}
        self._online = False
        # Whether posts go to Redis: online, and not catching up after an outage (what
        # is posted meanwhile is held, and posted behind what the catch-up delivers).
        self._posting = False
        # Rooms subscribed to whose count is not known yet: their runs are dropped
        # until a sync point (a J or C marker) says where the numbering stands.
        self._unsynced: set[RoomLink] = set()
        self._closing = False
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnecting: asyncio.Task[None] | None = None
        # The sentinel connection subscribed to +switch-master (redis+sentinel://).
        self._sentinel: RespConnection | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._offline_since = 0.0
        self._registry = REGISTRY_PREFIX.encode()
        self._instances_key = self.registry_key("instances")
        self._registry_slot = key_slot(self._instances_key)
        # The names of the rooms this instance ever had interest in (purged if it dies).
        self._rooms_key = self.registry_key("rooms:" + self.instance_id)
        self.presence = RedisPresence(self)
        self.names = RedisNames(self)
        self.community = RedisCommunity(self)

    # -- Bus ---------------------------------------------------------------------------
    #: Redis numbers the messages (the room's counter, posting.py), not the rooms.
    numbers_here = False

    @property
    def description(self) -> str:
        return f"{self._target.display} (instance {self.instance_id})"

    @property
    def connected(self) -> bool:
        return self._online

    @property
    def sharing(self) -> bool:
        """Connected and caught up after any outage: posts go to Redis again."""
        return self._posting

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
        return self.stats.readings(connected=self._online, queued_bytes=self.queued_bytes)

    def keep_with(self, archive: Archiving) -> None:
        """Hand every message posted here to ``archive`` once Redis has numbered it
        (POST's reply): each is written once, by the instance it was posted on."""
        self._archive = archive

    def publisher(self, room: RoomLink) -> Publisher:
        """Posting a run of messages is one step of a transaction (scripts.py): INCRBY
        of the room's counter, RPUSH to its recent runs and PUBLISH of ``M<ts>\\n<lines>``
        (every instance numbers it by counting: _on_push). During an outage (or while
        the instance catches up after one) the message is delivered on this instance at
        once (room.fan_out, numbered here) and held (:meth:`_hold`): once Redis is back
        it is posted, behind what was held before it, numbered then and delivered to
        the other instances' members (this instance's skip it: room.replayed)."""
        keys = self.room_keys(room)
        fan_out = room.fan_out
        stats = self.stats
        slot = keys.slot if self._target.cluster else 0
        posting = Posting(keys, self.publish_verb, self.history)
        trim = self.history > 0
        held_queue = self._held.queue  # tested on every post: a deque's truth, in C
        posts = 0  # runs posted here, for the LTRIM every TRIM_EVERY

        def post(event: bytes, count: int, replayed: bool = False) -> bool | None:
            """Post ``event``, a run of ``count`` messages (held before, if
            ``replayed``): True, posted to Redis; None, held for later; False,
            delivered on this instance only."""
            nonlocal posts
            node = self._node_for(keys) if self._posting or replayed else None
            if node is None or node.cmd is None:
                if replayed:  # it stays first of what is held
                    return None
                return self._hold(post, event, fan_out)
            if not replayed:
                if held_queue:  # behind what waits from the outage, in order
                    return self._hold(post, event, fan_out)
                if node.cmd.write_buffer > MAX_BACKLOG:
                    self._local_only(True)
                    fan_out(event, count)
                    return False
            elif self._subscribed.get(room) is True:  # its channel will bring it back
                room.replayed(event)  # and its local members saw it when it was posted
            batch = node.batch
            if batch is None or batch.slot != slot:
                batch = self._open_batch(node, slot)
            run = batch.add(posting, post, room, event, count, replayed)
            posts += 1
            if trim and posts % TRIM_EVERY == 0:
                run.trim = True
            stats.published += 1
            return True

        return post

    def _open_batch(self, node: Node, slot: int) -> PostBatch:
        """Start the transaction of the turn's next runs on ``node`` (MULTI): after
        whatever the turn queued there before them, so they keep their place."""
        self._close_batch(node)
        if not node.parts:
            self._schedule_flush()
        batch = node.batch = PostBatch(slot, self)
        node.parts.append(MULTI)
        node.handlers.append(batch.queued)
        return batch

    def _close_batch(self, node: Node) -> None:
        """End the open transaction on ``node`` (EXEC), before anything else is queued."""
        batch = node.batch
        if batch is not None:
            node.batch = None
            data, commands = batch.build()
            node.parts += (data, EXEC)
            node.handlers += [batch.queued] * commands
            node.handlers.append(batch.executed)

    def posted(self, run: PostRun, first: int) -> None:
        """A run's first number, from EXEC's reply: its messages are kept in the message
        store, under the room's epoch. A counter that starts again at 1 where this
        instance had numbers (Redis flushed, evicted or restarted empty without the
        connection breaking) ends cross-instance numbering until it is resynchronised:
        handled as an outage (the reconnection's catch-up starts a new epoch)."""
        room = run.room
        if first == 1 and run.known > 0:
            self._lost(f"Redis lost room {room.name!r}'s numbering (flushed or evicted)")
            return
        archive = self._archive
        if archive is not None:
            for event in run.events:
                count = event.count(b"\n")
                archive.run(room.name, room.epoch, first, count, run.ts, event)
                first += count

    def refused(self, batch: PostBatch, error: ReplyError) -> None:
        """Redis refused a transaction of posts (EXECABORT: OOM at maxmemory, or another
        refusal at queueing): nothing in it was published. As in an outage, its messages
        reach this instance's members now (those posted again after an outage had) and
        are held for Redis, ahead of what was held since and in the order they were
        posted (transactions still in flight behind it are refused in turn, and join
        them); once their replies are in, the instance goes local until Redis takes
        writes again, and its reconnection posts them (HeldPosts.post_all)."""
        self.report_error(error, "posting messages")
        held = self._held
        if held.refused_at is None:  # the first refusal: stop posting, go local soon
            held.refused_at = 0
            self._posting = False
            node = self._node_for_slot(batch.slot)
            why = f"Redis refused messages ({error}); holding them until it takes them"
            if node is not None and node.cmd is not None:
                # behind every transaction sent or queued this turn: once it answers,
                # they all have (and those refused have joined the held ones, in order)
                self._queue_on(node, command(b"PING"), lambda _: self._refusal_over(why))
            else:
                self._refusal_over(why)
        for run, _ in batch.runs:
            room = run.room
            for event in run.events:
                if run.replayed:  # its local members saw it when it was posted
                    room.unreplayed(event)
                else:
                    room.fan_out(event)
                    self.stats.local_only += 1
                held.hold_refused(run.post, event)

    def _refusal_over(self, why: str) -> None:
        self._held.refusal_over()
        self._lost(why)

    def _hold(self, post: Post, event: bytes, fan_out: Callable[[bytes], None]) -> bool | None:
        """Deliver ``event`` on this instance only (HeldPosts.deliver) and hold it."""
        self.stats.local_only += 1
        held = self._held
        held.deliver(fan_out, event)
        return held.hold(post, event)

    def relay(self, room: RoomLink, event: bytes) -> None:
        """A v2-only event through the room's channel, behind its messages (V<event>);
        during an outage, to this instance's members only."""
        node = self._node_for(self.room_keys(room)) if self._online else None
        if node is None or node.cmd is None:
            room.relay(event)
            return
        keys = self.room_keys(room)
        seq = _changed_seq(event)
        if seq is None:  # typing: only passed on
            data = command(self.publish_verb, keys.channel, _RELAYED + event)
        else:  # an edit or a deletion: kept for joins' history too
            data = self.script("change", keys.script_keys, self.publish_verb, seq, event)
        self._queue_on(node, data, self._on_relay_reply)

    def forget(self, room: RoomLink) -> None:
        """The room's history purged: FORGET deletes its recent runs, every instance drops
        what it holds (P); during an outage, this instance's only."""
        node = self._node_for(self.room_keys(room)) if self._online else None
        if node is None or node.cmd is None:
            room.forget()
            return
        data = self.script("forget", self.room_keys(room).script_keys, self.publish_verb)
        self._queue_on(node, data, self._on_relay_reply)

    def _on_relay_reply(self, reply: Any) -> None:
        if isinstance(reply, ReplyError):
            self.report_error(reply, "relaying an event")

    async def start(self) -> None:
        try:
            await self._connect()
            await self._renew_once()  # registered (and so purged if killed) from now on
        except (OSError, TimeoutError, ReplyError, ConnectionError, BusError) as exc:
            self._drop_connections()
            raise BusError(
                f"cannot use the Redis bus at {self._target.display}: {reason(exc)}"
            ) from None
        self._online = self._posting = True
        self._lease_task = self._spawn(self._renew_lease())
        try:
            await self.community.start()
        except (OSError, TimeoutError, ReplyError, ConnectionError) as exc:
            self._drop_connections()
            raise BusError(
                f"cannot read the community from {self._target.display}: {reason(exc)}"
            ) from None

    async def close(self) -> None:
        self._closing = True
        await self.community.close()
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
                        await node.cmd.call("DEL", self.registry_key("lease:" + me))
                        await node.cmd.call("DEL", self._rooms_key)
                        await node.cmd.call("SREM", self._instances_key, me)
        if self.stats.held:
            log.error(
                "redis bus: %d messages posted during an outage were never shared "
                "(Redis did not come back before the shutdown)",
                self.stats.held,
            )
        self._online = self._posting = False
        self._drop_connections()

    # -- the command interface (commands.Commands) -------------------------------------
    def room_keys(self, room: RoomLink) -> RoomKeys:
        keys = self._keys.get(room)
        if keys is None:
            keys = self._keys[room] = RoomKeys(room.name)
            self._by_channel[keys.channel] = room
            self._by_name[room.name] = room
        return keys

    def registry_key(self, suffix: str) -> bytes:
        return self._registry + suffix.encode()

    def script(self, name: str, keys: tuple[bytes, ...], *args: bytes | str | int) -> bytes:
        return command(b"EVALSHA", self._shas[name], len(keys), *keys, *args)

    def queue(self, room: RoomLink, data: bytes, handler: ReplyHandler) -> None:
        """Queue one command about ``room`` behind the room's earlier events (scripts)."""
        self._queue_on(self._node_for(self.room_keys(room)), data, handler)

    def queue_registry(self, data: bytes, handler: ReplyHandler) -> None:
        """Queue one command on the node of the registry's slot (names, leases)."""
        self._queue_on(self._node_for_slot(self._registry_slot), data, handler)

    async def call(self, room: RoomLink, data: bytes) -> Any:
        future, handler = reply_future()
        self.queue(room, data, handler)
        return await future

    async def call_registry(self, data: bytes) -> Any:
        future, handler = reply_future()
        self.queue_registry(data, handler)
        return await future

    async def call_key(self, key: bytes, data: bytes) -> Any:
        """A command on the node of ``key``'s slot, and its reply (raises as call)."""
        future, handler = reply_future()
        self._queue_on(self._node_for_slot(key_slot(key)), data, handler)
        return await future

    def report_spending(
        self, user: str, count: int, window: int, answer: Callable[[int], None]
    ) -> None:
        """Per-user limits (core/flood.py): add ``count`` to the user's spending in
        ``window`` on every instance; ``answer`` gets the total (not during outages)."""
        key = self.registry_key(f"spent:{window}:{user}")

        def told(reply: Any) -> None:
            if isinstance(reply, int):
                answer(reply)

        self.queue_registry(command(b"INCRBY", key, count), told)
        self.queue_registry(command(b"EXPIRE", key, 5), _ignored)

    def listen(
        self, room: RoomLink, payloads: Callable[[bytes], None], restored: Callable[[], None]
    ) -> asyncio.Future[None] | None:
        """Receive the D payloads of ``room``'s channel (without the D), for good, and
        be told when an outage is over (what came meanwhile is lost)."""
        self._listeners[room] = payloads
        self._restored.append(restored)
        return self.interest(room)

    def report_error(self, error: Exception, what: str) -> None:
        self.stats.errors += 1
        message = str(error)
        if message.startswith(("MOVED", "ASK")):
            # A slot moved (resharding): find the new owners, as after any outage.
            self._lost(f"{what}: {message}")
            return
        if message.startswith("READONLY"):
            # The node was demoted (a failover, or an operator's REPLICAOF): writes go
            # to the new master, which reconnecting finds (the sentinels name it).
            self._lost(f"{what}: {self._nodes_named()} is a replica now (READONLY)")
            return
        if message.startswith("NOSCRIPT"):
            # Still refused after the scripts were loaded again _RELOADS times in a row
            # (_reload): something flushes them as fast as they load. Reconnect, as after
            # an outage (it loads them, re-asserts presence and names) rather than spin.
            self._lost(f"{what}: Redis keeps losing its scripts (NOSCRIPT)")
            return
        if not isinstance(error, ConnectionError) and (
            self.stats.errors == 1 or self.stats.errors % _LOGGED_EVERY == 0
        ):
            log.warning("redis bus: %s failed (#%d): %s", what, self.stats.errors, message)

    def _nodes_named(self) -> str:
        return ", ".join(f"{host}:{port}" for host, port in self._nodes) or "Redis"

    # -- routing -----------------------------------------------------------------------
    def _node_for(self, keys: RoomKeys) -> Node | None:
        slots = self._slots
        if not slots:
            return None
        return slots[keys.slot] if len(slots) > 1 else slots[0]

    def _registry_node(self) -> Node:
        node = self._node_for_slot(self._registry_slot)
        if node is None:
            raise ConnectionError(_NOT_CONNECTED)
        return node

    def _node_for_slot(self, slot: int) -> Node | None:
        if not self._slots:
            return None
        return self._slots[slot] if len(self._slots) > 1 else self._slots[0]

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A background task (lease renewal, reconnection) ended: one that died of an
        exception is a bug that would go unseen (the lease would lapse): say so."""
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("redis bus: %s died", task.get_coro(), exc_info=exc)

    # -- writing -----------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        """Write each node's commands of this turn with one write."""
        self._flush_scheduled = False
        for node in self._nodes.values():
            if node.batch is not None:
                self._close_batch(node)
            if node.parts and node.reloading is None:  # (else held: _reloaded sends them)
                parts, node.parts = node.parts, []
                handlers, node.handlers = node.handlers, []
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                if node.cmd is not None:
                    node.cmd.send_many(data, handlers)
                else:
                    error = ConnectionError(_NOT_CONNECTED)
                    for handler in handlers:
                        handler(error)

    def _queue_on(self, node: Node | None, data: bytes, handler: ReplyHandler) -> None:
        if node is None or not self._online:
            handler(ConnectionError(_NOT_CONNECTED))
            return
        if data.find(_EVALSHA, 0, 24) > 0:  # a script: sent again if Redis lost it
            handler = self._scripted(node, data, handler)
        if node.batch is not None:
            self._close_batch(node)
        elif not node.parts:
            self._schedule_flush()
        node.parts.append(data)
        node.handlers.append(handler)

    # -- scripts lost (NOSCRIPT) --------------------------------------------------------
    def _scripted(self, node: Node, data: bytes, handler: ReplyHandler) -> ReplyHandler:
        """The reply handler of the script ``data`` on ``node``: a NOSCRIPT reply (Redis
        lost its scripts) is not the caller's to see; the scripts are loaded again and
        ``data`` sent again (:meth:`_reload`), up to _RELOADS times in a row."""
        tries = 0

        def reply(answer: Any) -> None:
            nonlocal tries
            current = self._nodes.get(node.address) is node
            if type(answer) is ReplyError and str(answer).startswith("NOSCRIPT"):
                if tries < _RELOADS and current:
                    tries += 1
                    self._reload(node, data, reply)
                    return
            elif current and node.reloading:
                # A script sent behind one the node refused ran first: another client
                # loaded the scripts in between. Their order is lost (a leave before
                # the join it followed): re-assert presence and names from what this
                # instance holds, as after an outage (the refused ones fail with it).
                handler(answer)
                self._lost("a script ran ahead of one Redis had refused (NOSCRIPT)")
                return
            handler(answer)

        return reply

    def _reload(self, node: Node, data: bytes, handler: ReplyHandler) -> None:
        """``node`` refused the script ``data``: NOSCRIPT (SCRIPT FLUSH, a failover to a
        replica, a restart not seen as one). The first refusal loads every script again
        (SCRIPT LOAD, behind what is in flight); the scripts in flight behind it are
        refused too and join the list, in order. Until the scripts are loaded, what is
        queued on the node waits; then the refused scripts go first, in the order they
        were sent, and what waited behind them (:meth:`_reloaded`). Commands that need no
        script (messages: a transaction) and were in flight have gone on meanwhile."""
        retry = node.reloading
        if retry is None:
            assert node.cmd is not None
            retry = node.reloading = []
            stats = self.stats
            stats.script_reloads += 1
            log.warning(
                "redis bus: %s:%d answered NOSCRIPT (its scripts were flushed: SCRIPT"
                " FLUSH, a failover or a restart); loading them again and sending again, in"
                " order, what it refused (#%d)",
                *node.address,
                stats.script_reloads,
            )
            names, replies = list(scripts.SCRIPTS), []

            def loaded(sha: Any) -> None:
                replies.append(sha)
                if len(replies) == len(names):
                    self._reloaded(node, dict(zip(names, replies, strict=True)))

            node.cmd.send_many(
                b"".join(command(b"SCRIPT", b"LOAD", scripts.SCRIPTS[n]) for n in names),
                [loaded] * len(names),
            )
        retry.append((data, handler))

    def _reloaded(self, node: Node, shas: dict[str, Any]) -> None:
        retry, node.reloading = node.reloading, None
        if retry is None or self._nodes.get(node.address) is not node or node.cmd is None:
            return  # the connection was lost meanwhile: failed as in any outage
        if any(self._shas.get(name) != sha for name, sha in shas.items()):
            failed = next(sha for name, sha in shas.items() if self._shas.get(name) != sha)
            node.reloading = retry  # failed with the connection, as in any outage
            self._lost(f"loading the scripts again on {node.address[0]} failed: {failed}")
            return
        if node.batch is not None:
            self._close_batch(node)
        parts, node.parts = [data for data, _ in retry] + node.parts, []
        handlers, node.handlers = [handler for _, handler in retry] + node.handlers, []
        node.cmd.send_many(b"".join(parts), handlers)

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
        self._unsynced.add(room)
        self._send_subscribe(room)
        return future

    def _send_subscribe(self, room: RoomLink) -> None:
        keys = self.room_keys(room)
        node = self._node_for(keys)
        if node is None or node.sub is None:
            return  # subscribed again by the reconnection
        node.sub.subscribe_write(command(self._subscribe_verb, keys.channel))
        registry = self._registry_node()
        if registry.cmd is not None:
            registry.cmd.send(command(b"SADD", self._rooms_key, room.name))

    def lose_interest(self, room: RoomLink) -> None:
        """The room's last local session left: unsubscribe soon, unless one comes back."""
        asyncio.get_running_loop().call_later(_UNSUBSCRIBE_AFTER, self._unsubscribe_idle, room)

    def _unsubscribe_idle(self, room: RoomLink) -> None:
        if room.busy or self._subscribed.get(room) is not True:
            return
        del self._subscribed[room]
        keys = self.room_keys(room)
        node = self._node_for(keys)
        if node is not None and node.sub is not None and self._online:
            self._unsubscribing.add(room)
            node.sub.subscribe_write(command(self._unsubscribe_verb, keys.channel))

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
                try:
                    if payload[0] == _MESSAGE:  # M<ts>\n<lines>: numbered on from the last
                        head, _, lines = payload.partition(b"\n")
                        if self._unsynced or self._catching_up:
                            self._run_aside(room, int(head[1:]), lines)
                        else:
                            room.deliver(room.shared + 1, int(head[1:]), lines)
                    elif payload[0] == _EVENT:  # an announcement for every member
                        room.announce(payload)
                    else:
                        self._control(room, payload)
                except (IndexError, ValueError):
                    # Not from a roomchat instance (someone PUBLISHed by hand): it must
                    # not end the subscriber connection (it runs in data_received).
                    self.report_error(
                        ValueError(f"not a roomchat payload: {payload[:60]!r}"),
                        f"a message on room {room.name!r}'s channel",
                    )
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

    def _run_aside(self, room: RoomLink, ts: int, lines: bytes) -> None:
        """A run while some room is not counting on from a sync point (_on_push)."""
        state = self._catching_up.get(room)
        if state is not None:
            if state.marked:  # new since the catch-up read the room: after what it read
                state.runs.append((ts, lines))
            return  # else the catch-up's read holds it
        if room in self._unsynced:
            return  # before the first sync point since subscribing: for nobody here
        room.deliver(room.shared + 1, ts, lines)

    def _sync(self, room: RoomLink, head: bytes) -> bytes:
        """A sync point's ``<seq> <epoch> <rest>``: where the room's numbering stands
        at this place of its channel. Returns the rest."""
        seq_text, epoch_bytes, rest = head.split(b" ", 2)
        seq, epoch = int(seq_text), epoch_bytes.decode()
        if room in self._unsynced:
            self._unsynced.discard(room)
        elif seq != room.shared and room not in self._catching_up:
            stats = self.stats
            stats.resynced += 1
            if stats.resynced == 1 or stats.resynced % _LOGGED_EVERY == 0:
                log.warning(
                    "redis bus: room %r's numbering was out of step here (%d, Redis %d): "
                    "resynchronised (#%d)",
                    room.name,
                    room.shared,
                    seq,
                    stats.resynced,
                )
        room.shared = seq
        if epoch != room.epoch:
            room.epoch = epoch
        return rest

    def _control(self, room: RoomLink, payload: bytes) -> None:
        kind = payload[:1]
        if kind == _MARKER:  # J<seq> <epoch> <session key>\n<"joined" event or nothing>
            head, _, announcement = payload[1:].partition(b"\n")
            key = self._sync(room, head)
            room.join_marker(key.decode(), announcement or None)
        elif kind == _SYNCED:  # C<seq> <epoch> <instance>: a catch-up's sync point
            state = self._catching_up.get(room)
            if self._sync(room, payload[1:]).decode() == self.instance_id and state:
                if state.replied:
                    del self._catching_up[room]
                else:
                    state.marked = True
        elif kind == _COMMUNITY:  # D<json>: a community change (community.py)
            listener = self._listeners.get(room)
            if listener is not None:
                listener(payload[1:])
        elif kind == _RELAYED:  # V<event>: for the v2 members (an edit, typing)
            room.relay(payload[1:])
        elif kind == _PURGED:  # P: an admin purged the room's history
            room.forget()
        elif kind == _REASSERTED:  # O<instance>\n<event>: presence re-asserted after an outage
            origin, _, event = payload[1:].partition(b"\n")
            if origin.decode() != self.instance_id and event:
                room.announce(event)

    # -- connecting, losing, reconnecting ----------------------------------------------
    async def _connect(self) -> None:
        target = self._target
        if target.cluster:
            addresses = await cluster_map(target)
        elif target.service is not None:  # the master the sentinels name now
            address, self._sentinel = await sentinel_master(
                target, self._on_sentinel_lost, self._on_sentinel_push
            )
            addresses = [address]
        else:
            addresses = [target.hosts[0]]
        nodes: dict[Address, Node] = {}
        self._nodes = nodes  # so that a failure half-way drops what was opened
        for address in dict.fromkeys(addresses):
            node = nodes[address] = Node(address)
            # Watched: losing either connection means Redis is lost.
            node.cmd = await open_node(target, address, self._on_connection_lost)
            node.sub = await open_node(target, address, self._on_connection_lost, self._on_push)
            for connection in (node.cmd, node.sub):
                # Bus traffic ends a coalescing wait (outbox.py): never held up by it.
                self._wakeups.watch(connection.fileno)
            if target.service is not None:
                await check_master(node.cmd)
            self._shas.update(await load_scripts(node.cmd))
        self._nodes = nodes
        self._slots = [nodes[address] for address in addresses]
        self.stats.connects += 1

    def _on_sentinel_push(self, push: list[Any]) -> None:
        """``+switch-master <service> <old host> <old port> <new host> <new port>``: the
        sentinels promoted a replica. Go to it now (as after an outage): the old master,
        if it is alive, still takes writes until the sentinels demote it."""
        if push[0] != b"message" or len(push) < 3:
            return
        fields = push[2].decode(errors="replace").split()
        if len(fields) != 5 or fields[0] != self._target.service or not fields[4].isdigit():
            return
        if (fields[3], int(fields[4])) not in self._nodes:  # not where this instance is
            self._lost(f"the sentinels moved the master to {fields[3]}:{fields[4]}")

    def _on_sentinel_lost(self, connection: RespConnection, exc: Exception | None) -> None:
        """The sentinel's connection ended: not an outage (the master is what counts).
        The lease renewal asks the sentinels again (_watch_sentinel)."""
        if connection is self._sentinel:
            self._sentinel = None

    async def _watch_sentinel(self) -> None:
        """No sentinel connection (it was lost): ask the sentinels again where the
        master is; somewhere else is a failover this instance missed."""
        assert self._target.service is not None
        address, sentinel = await sentinel_master(
            self._target, self._on_sentinel_lost, self._on_sentinel_push
        )
        if not self._online or self._closing:
            sentinel.abort()
            return
        self._sentinel = sentinel
        if address not in self._nodes:
            self._lost(f"the sentinels name another master now, {address[0]}:{address[1]}")

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
        self._online = self._posting = False
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
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            sentinel.abort()
        self._subscriptions_failed("Redis connection lost")
        nodes, self._nodes = self._nodes, {}
        self._slots = []
        error = ConnectionError("Redis connection lost")
        for node in nodes.values():
            handlers, node.handlers, node.parts, node.batch = node.handlers, [], [], None
            retry, node.reloading = node.reloading or [], None
            handlers = [handler for _, handler in retry] + handlers
            for handler in handlers:
                handler(error)
            for connection in (node.cmd, node.sub):
                if connection is not None:
                    self._wakeups.unwatch(connection.fileno)
                    connection.abort()

    async def _reconnect(self) -> None:
        delay = _BACKOFF_FIRST
        attempts = 0
        last = ""
        while not self._closing:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                await self._connect()
                self._online = True
                await self._restore()
            except (OSError, TimeoutError, ReplyError, ConnectionError, BusError) as exc:
                self._online = self._posting = False
                self._drop_connections()
                self.stats.reconnect_failures += 1
                why = reason(exc)
                # Each new reason once (refused, then a password refused, ...), and the
                # same one every 20th attempt: the log says why, and stays short.
                if why != last or attempts % 20 == 0:
                    log.warning("redis bus: reconnecting (attempt %d): %s", attempts, why)
                last = why
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            log.warning(
                "redis bus: reconnected after %.1f s (%d attempts); rooms shared again",
                time.monotonic() - self._offline_since,
                attempts,
            )
            self._posting = True
            self._held.post_all()
            return

    async def _restore(self) -> None:
        """After a reconnection: subscribe to every room with local sessions again,
        deliver what they missed (_catch_up), re-assert their presence (Redis may have
        lost it), then renew the lease."""
        local = list(self.presence.local_rooms())
        for room in local:  # from the subscription on, the channel's runs wait for it
            self._catching_up[room] = CatchingUp()
        try:
            await self._resubscribe(local)
        finally:  # a failed attempt: the next one catches up again
            for room in local:
                self._catching_up.pop(room, None)
        for restored in self._restored:
            restored()

    async def _resubscribe(self, local: list[RoomLink]) -> None:
        rooms = [*local, *self._listeners]
        futures = [future for room in rooms if (future := self.interest(room)) is not None]
        async with asyncio.timeout(5.0):
            for outcome in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise ConnectionError(f"subscribing again failed: {outcome}")
            await asyncio.gather(*(self._catch_up(room) for room in local))
            for room in self.presence.rooms_to_assert():
                await self.presence.reassert(room)
            await self.names.reassert()
            await self._renew_once()

    async def _catch_up(self, room: RoomLink) -> None:
        """Deliver the runs of ``room`` numbered while this instance was cut off (what
        the other instances posted meanwhile, kept in the room's recent runs), then the
        runs its channel brought since CATCH_UP's sync point, each once and in order. A
        new epoch (a Redis that lost its data, or a failover that lost the latest
        writes: scripts.py) is delivered from its start."""
        base = room.shared
        keys = self.room_keys(room)
        reply = await self.call(
            room,
            self.script(
                "catch_up",
                keys.script_keys,
                self.instance_id,
                self.publish_verb,
                self.epoch_candidate,
                self.history,
                base,
                room.epoch,
            ),
        )
        if isinstance(reply, ReplyError):
            self.report_error(reply, f"catching up room {room.name!r}")
            raise ConnectionError(f"catching up room {room.name!r} failed: {reply}")
        epoch_bytes, seq, entries = reply
        epoch = epoch_bytes.decode()
        if epoch != room.epoch:
            if room.epoch:  # a new numbering: every run kept is new here
                base = 0
            room.epoch = epoch
        for first, ts, lines in numbered_runs(seq, entries):
            if first > base:
                room.deliver(first, ts, lines)
                self.stats.caught_up += lines.count(b"\n")
        room.shared = seq
        state = self._catching_up.get(room)
        if state is None:
            return
        state.replied = True
        for ts, lines in state.runs:
            room.deliver(room.shared + 1, ts, lines)
        state.runs = []
        if state.marked:
            del self._catching_up[room]

    # -- leases ------------------------------------------------------------------------
    async def _renew_lease(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            if not self._online:
                continue
            try:
                async with asyncio.timeout(self._lease / 3):
                    if await self._renew_once():
                        await self._repair()
                    await self._purge_dead()
                    if self._target.service is not None and self._sentinel is None:
                        await self._watch_sentinel()
            except TimeoutError:
                self._lost(f"no answer from Redis within {self._lease / 3:g} s")
            except (ConnectionError, ReplyError, OSError, BusError) as exc:
                if self._online:
                    log.warning("redis bus: lease renewal failed: %s", reason(exc))

    async def _renew_once(self) -> bool:
        """Renew the lease; whether it had lapsed meanwhile (so the others may have
        purged this instance's sessions and names). The first renewal, at start-up or
        after an outage, has no lease before it: the caller knows that."""
        # Straight on the registry node's connection, not through queue_registry:
        # start() renews before the bus is online (queueing would refuse).
        node = self._registry_node()
        assert node.cmd is not None
        me = self.instance_id
        before = await node.cmd.call(
            "SET", self.registry_key("lease:" + me), b"1", "PX", int(self._lease * 1000), "GET"
        )
        await node.cmd.call("SADD", self._instances_key, me)
        return before is None

    async def _repair(self) -> None:
        """The lease had lapsed (this process was frozen, or cut off, for longer than the
        lease): the others may have announced its users ``left`` and dropped its names.
        Assert every session and name again, as after an outage: users the others
        removed are announced ``joined`` again, once; a name taken meanwhile is handled
        as in an outage (names.py)."""
        self.stats.lease_repairs += 1
        log.warning(
            "redis bus: this instance's lease had lapsed (frozen or cut off for longer "
            "than --bus-lease %g s): asserting its sessions and names again (#%d)",
            self._lease,
            self.stats.lease_repairs,
        )
        node = self._registry_node()
        assert node.cmd is not None
        for room in self.presence.rooms_to_assert():
            await node.cmd.call("SADD", self._rooms_key, room.name)
            await self.presence.reassert(room)
        await self.names.reassert()

    async def _purge_dead(self) -> None:
        """Remove the sessions of instances whose lease ran out."""
        node = self._registry_node()
        assert node.cmd is not None
        instances = await node.cmd.call("SMEMBERS", self._instances_key)
        for member in instances:
            other = member.decode()
            if other == self.instance_id:
                continue
            if await node.cmd.call("EXISTS", self.registry_key("lease:" + other)):
                continue
            rooms_key = self.registry_key("rooms:" + other)
            names = await node.cmd.call("SMEMBERS", rooms_key)
            removed = 0
            for name in names:
                room = self._by_name.get(name.decode())
                if room is not None:
                    removed += await self.presence.purge(room, other)
            await self.names.purge(other)
            await node.cmd.call("DEL", rooms_key)
            await node.cmd.call("SREM", self._instances_key, member)
            self.stats.purged_instances += 1
            log.warning(
                "redis bus: instance %s stopped renewing its lease: removed its %d sessions",
                other,
                removed,
            )


def _ignored(reply: Any) -> None:
    pass
