"""What presence, names and any further room action may ask of the Redis bus.

The bus (bus.py) owns the connections, the routing to the node of a key's hash slot,
the turn's pipelined writes and the outages. Presence (presence.py), the name registry
(names.py), and whatever comes next (a moderation action: one Lua script in scripts.py
per room action, atomic on the room's slot) talk to it only through :class:`Commands`
and name a room's keys through :class:`RoomKeys`. A new room action is::

    keys = bus.room_keys(room)
    bus.queue(room, bus.script("kick", keys.script_keys, user, bus.publish_verb), handler)

or ``await bus.call(room, ...)`` when the caller needs the reply. The protocol lives
here, apart from the bus, so that those modules never import bus.py (which builds
them): the dependency goes one way.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Protocol

from redis.crc import key_slot

from roomchat.server.bus.redis.resp import ReplyHandler
from roomchat.server.core.ports import RoomLink

__all__ = [
    "EXEC",
    "MULTI",
    "REGISTRY_PREFIX",
    "Commands",
    "Posting",
    "ReplyHandler",
    "RoomKeys",
    "numbered_runs",
    "room_tag",
]

#: Posting's transaction (scripts.py: a turn's consecutive runs on a node share one).
MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"

#: The instance registry and the names: one hash tag, so one slot (one node) for all.
REGISTRY_PREFIX = "rc:{rc}:"


def room_tag(room: str) -> str:
    """The room's hash tag. A hash of the name: any room name makes a valid, distinct
    tag (a name may contain braces)."""
    return hashlib.blake2b(room.encode(), digest_size=8).hexdigest()


class RoomKeys:
    """A room's keys and channel in Redis, all under one hash tag (one cluster slot).
    What each holds is in scripts.py's docstring."""

    __slots__ = (
        "arrivals",
        "changes",
        "channel",
        "counter",
        "epoch",
        "left",
        "order",
        "recent",
        "script_keys",
        "sessions",
        "slot",
        "users",
    )

    def __init__(self, room: str) -> None:
        prefix = f"rc:{{{room_tag(room)}}}:"
        self.sessions = (prefix + "s").encode()  # session key -> "<instance>\n<user>"
        self.users = (prefix + "u").encode()  # user id -> its sessions in the room
        self.order = (prefix + "o").encode()  # user id -> arrival number
        self.arrivals = (prefix + "n").encode()  # counter of arrivals
        self.left = (prefix + "l").encode()  # user id -> its encoded "left" event
        self.channel = (prefix + "c").encode()  # every event of the room
        self.counter = (prefix + "q").encode()  # latest message sequence number
        self.recent = (prefix + "m").encode()  # the last runs of messages (a list)
        self.epoch = (prefix + "e").encode()  # the epoch of the counter's numbering
        self.changes = (prefix + "x").encode()  # q -> its message_edited/_deleted event
        #: KEYS of the room's presence scripts (JOIN, LEAVE, ASSERT; a new room action
        #: takes the same), in the order scripts.py numbers them.
        self.script_keys = (
            self.sessions,
            self.users,
            self.order,
            self.arrivals,
            self.left,
            self.channel,
            self.counter,
            self.recent,
            self.epoch,
            self.changes,
        )
        self.slot = key_slot(self.channel)


class Posting:
    """The commands that post a run of messages to one room, inside a MULTI/EXEC
    (scripts.py): INCRBY of the counter by the run's length, RPUSH of ``M<ts>\\n<lines>``
    to the recent runs (unless ``history`` is 0) and PUBLISH of the same bytes. Their
    RESP up to the per-run arguments is built once per room (this is the hot path)."""

    __slots__ = ("_incrby", "_publish", "_rpush", "size", "trim")

    def __init__(self, keys: RoomKeys, verb: bytes, history: int) -> None:
        self._incrby = b"*3\r\n$6\r\nINCRBY\r\n$%d\r\n%s\r\n" % (
            len(keys.counter),
            keys.counter,
        )
        self._rpush = (
            b"*3\r\n$5\r\nRPUSH\r\n$%d\r\n%s\r\n" % (len(keys.recent), keys.recent)
            if history
            else b""
        )
        self._publish = b"*3\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            len(verb),
            verb,
            len(keys.channel),
            keys.channel,
        )
        #: Replies per run (QUEUED each, then one result each in EXEC's): the INCRBY's
        #: (the run's last number) first, then the RPUSH's, if any.
        self.size = 3 if history else 2
        #: LTRIM to the last ``history`` runs (queued every few runs: bus.py).
        self.trim = b"*4\r\n$5\r\nLTRIM\r\n$%d\r\n%s\r\n$%d\r\n-%d\r\n$2\r\n-1\r\n" % (
            len(keys.recent),
            keys.recent,
            len(str(history)) + 1,
            history,
        )

    def run(self, count: int, ts: int, lines: bytes) -> bytes:
        """The RESP of posting one run of ``count`` messages (``lines``) at ``ts`` ms."""
        payload = b"M%d\n%s" % (ts, lines)
        value = b"$%d\r\n%s\r\n" % (len(payload), payload)
        counted = b"%d" % count
        incrby = self._incrby + b"$%d\r\n%s\r\n" % (len(counted), counted)
        if self._rpush:
            return incrby + self._rpush + value + self._publish + value
        return incrby + self._publish + value


def numbered_runs(last: int, entries: list[bytes]) -> list[tuple[int, int, bytes]]:
    """The room's recent runs (a list's ``M<ts>\\n<lines>`` entries, oldest first, the
    newest ending at message ``last``: the counter read with them), as (first number,
    time, lines), oldest first. A run's messages are its lines, so the numbers are
    counted back from the counter (posting increments it and pushes the run at once)."""
    runs: list[tuple[int, int, bytes]] = []
    for entry in reversed(entries):
        head, _, lines = entry.partition(b"\n")
        first = last - lines.count(b"\n") + 1
        runs.append((first, int(head[1:]), lines))
        last = first - 1
    runs.reverse()
    return runs


class Commands(Protocol):
    """The bus as presence, names and room actions use it (implemented by RedisBus).

    Commands are queued behind what this turn already queued for the same node and
    written with it at the turn's end (one write per node), so a room's scripts keep the
    order of its events. Nothing here blocks; during an outage a queued command's
    handler gets a ConnectionError at once.
    """

    @property
    def instance_id(self) -> str:
        """This instance's id (in session values, lease and held-names keys)."""
        ...

    @property
    def connected(self) -> bool:
        """Whether Redis is reachable now (else: answer locally, assert on return)."""
        ...

    @property
    def publish_verb(self) -> bytes:
        """What the scripts publish with: ``PUBLISH``, or ``SPUBLISH`` on a cluster."""
        ...

    @property
    def history(self) -> int:
        """Runs of messages kept per room in Redis (0: none)."""
        ...

    @property
    def epoch_candidate(self) -> str:
        """What JOIN and POST start a room's new epoch with (scripts.py, key 9)."""
        ...

    def room_keys(self, room: RoomLink) -> RoomKeys:
        """``room``'s keys; from now on the bus routes the room's channel to it."""
        ...

    def registry_key(self, suffix: str) -> bytes:
        """A key of the instance registry and the names (all in one slot)."""
        ...

    def script(self, name: str, keys: tuple[bytes, ...], *args: bytes | str | int) -> bytes:
        """The EVALSHA of ``scripts.SCRIPTS[name]``, as RESP bytes to queue."""
        ...

    def queue(self, room: RoomLink, data: bytes, handler: ReplyHandler) -> None:
        """Queue one command about ``room`` on the node of its slot."""

    def queue_registry(self, data: bytes, handler: ReplyHandler) -> None:
        """Queue one command on the node of the registry's slot."""

    async def call(self, room: RoomLink, data: bytes) -> Any:
        """:meth:`queue`, and wait for the reply; raises ReplyError or ConnectionError."""

    async def call_registry(self, data: bytes) -> Any:
        """:meth:`queue_registry`, and wait for the reply (raises as :meth:`call`)."""

    def report_error(self, error: Exception, what: str) -> None:
        """An error reply to ``what``: counted, logged (the first, then every 1000th);
        a MOVED/ASK one means a slot moved, so the bus reconnects to learn where."""

    def interest(self, room: RoomLink) -> asyncio.Future[None] | None:
        """Receive ``room``'s events: None when it does already, else a future done
        once the subscription is confirmed (failed: it was refused or lost)."""
        ...

    def lose_interest(self, room: RoomLink) -> None:
        """The room's last local session left: unsubscribe soon unless one comes back."""
