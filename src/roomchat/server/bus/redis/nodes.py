"""Reaching Redis servers: one node's two connections, a cluster's slot map, and the
master the sentinels name.

Apart from the bus (bus.py) because none of it depends on the bus's state: given a
:class:`~roomchat.server.bus.redis.url.RedisTarget`, open a node's connections and learn
which node owns which hash slot. The bus decides what losing them means.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from roomchat.server.bus.redis import scripts
from roomchat.server.bus.redis.commands import ReplyHandler
from roomchat.server.bus.redis.resp import (
    PushHandler,
    ReplyError,
    RespConnection,
    command,
    open_connection,
)
from roomchat.server.bus.redis.url import RedisTarget
from roomchat.server.core.ports import BusError

__all__ = [
    "SLOTS",
    "Address",
    "LostHandler",
    "Node",
    "check_master",
    "cluster_map",
    "load_scripts",
    "reason",
    "sentinel_master",
]

#: Hash slots of a Redis Cluster.
SLOTS = 16384

Address = tuple[str, int]
LostHandler = Callable[[RespConnection, Exception | None], None]


class Node:
    """One Redis server: a connection for commands and one for subscriptions, and the
    commands of this turn, written together at its end (bus.py ``_flush``)."""

    __slots__ = ("address", "batch", "cmd", "handlers", "parts", "reloading", "sub")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.cmd: RespConnection | None = None
        self.sub: RespConnection | None = None
        self.parts: list[bytes] = []  # commands of this turn, written at its end
        self.handlers: list[ReplyHandler] = []
        #: The transaction of posts open at the end of ``parts`` (bus.py PostBatch).
        self.batch: Any = None
        #: While the node loads its scripts again (it answered NOSCRIPT: bus.py
        #: ``_reload``), the scripts it refused, in order, to send again; ``parts`` wait.
        self.reloading: list[tuple[bytes, ReplyHandler]] | None = None


def reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words for a log line."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _ignore_lost(connection: RespConnection, exc: Exception | None) -> None:
    pass


async def open_node(
    target: RedisTarget,
    address: Address,
    on_lost: LostHandler = _ignore_lost,
    on_push: PushHandler | None = None,
) -> RespConnection:
    """Connect to one node with the target's credentials and database."""
    return await open_connection(
        *address,
        on_lost,
        on_push,
        username=target.username,
        password=target.password,
        db=target.db,
    )


async def load_scripts(connection: RespConnection) -> dict[str, bytes]:
    """SCRIPT LOAD every script on the node: name -> its SHA1 (what EVALSHA takes)."""
    shas: dict[str, bytes] = {}
    for name, source in scripts.SCRIPTS.items():
        shas[name] = await connection.call("SCRIPT", "LOAD", source)
    return shas


async def cluster_map(target: RedisTarget) -> list[Address]:
    """slot -> node address, from the first seed node that answers CLUSTER SLOTS."""
    errors: list[str] = []
    for host, port in target.hosts:
        try:
            # Not watched: losing a seed after it answered is no outage.
            seed = await open_node(target, (host, port))
        except (OSError, TimeoutError, ReplyError) as exc:
            errors.append(f"{host}:{port}: {reason(exc)}")
            continue
        try:
            ranges: Any = await seed.call("CLUSTER", "SLOTS")
        finally:
            seed.close()
        if isinstance(ranges, ReplyError):
            errors.append(f"{host}:{port}: {ranges}")
            continue
        owners: list[Address | None] = [None] * SLOTS
        for start, end, master, *_replicas in ranges:
            address = ((master[0] or b"").decode() or host, int(master[1]))
            for slot in range(start, end + 1):
                owners[slot] = address
        missing = owners.count(None)
        if missing:
            raise BusError(f"the cluster does not cover {missing} hash slots")
        return [address for address in owners if address is not None]
    raise BusError("no cluster node answered: " + "; ".join(errors))


async def sentinel_master(
    target: RedisTarget, on_lost: LostHandler, on_push: PushHandler
) -> tuple[Address, RespConnection]:
    """The master's address as the first sentinel that knows ``target.service`` says
    (``SENTINEL get-master-addr-by-name``), and that sentinel's connection, left
    subscribed to its ``+switch-master`` announcements (``on_push`` gets them): a
    failover is seen when the sentinel decides it, not only when the old master's
    connections break (a demoted master that is alive keeps them open until the
    sentinel reconfigures it, seconds later). Sentinels that do not answer, or do not
    know the name, are passed over; BusError if none knows it."""
    assert target.service is not None
    errors: list[str] = []
    for host, port in target.hosts:
        try:
            sentinel = await open_connection(
                host, port, on_lost, on_push, password=target.sentinel_password
            )
        except (OSError, TimeoutError, ReplyError) as exc:
            errors.append(f"sentinel {host}:{port}: {reason(exc)}")
            continue
        try:
            reply: Any = await sentinel.call("SENTINEL", "get-master-addr-by-name", target.service)
        except (ReplyError, ConnectionError) as exc:
            sentinel.close()
            errors.append(f"sentinel {host}:{port}: {reason(exc)}")
            continue
        if not reply:
            sentinel.close()
            errors.append(f"sentinel {host}:{port} knows no master {target.service!r}")
            continue
        sentinel.subscribe_write(command("SUBSCRIBE", "+switch-master"))
        return (reply[0].decode(), int(reply[1])), sentinel
    raise BusError(f"no sentinel gave the master {target.service!r}: " + "; ".join(errors))


async def check_master(connection: RespConnection) -> None:
    """BusError unless the node is a master (ROLE): a sentinel may still name a master
    that was demoted, or the node may be a replica being promoted."""
    role: Any = await connection.call("ROLE")
    kind = role[0].decode() if isinstance(role, list) and role else repr(role)
    kind = "replica" if kind == "slave" else kind  # ROLE's word for it
    if kind != "master":
        raise BusError(f"{connection.name} is a {kind}, not the master (a failover under way?)")
