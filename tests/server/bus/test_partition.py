"""A real network partition between the instances and Redis, not a process kill: Redis
runs in a network namespace of this test's own, reached over a veth pair; the test cuts
the link (the packets go nowhere: no reset, no error, a silent peer) and heals it.

Needs root (network namespaces), as `make test` runs here and in CI. The namespace and
the link are made and removed by the test itself.
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from roomchat.server import ChatServer, ServerConfig
from tests.helpers import until
from tests.redis_servers import RedisServer
from tests.server.test_community import peer

_made = itertools.count(1)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Partition:
    """A network namespace with one end of a veth pair (10.77.N.2); the other end
    (10.77.N.1) stays here. ``cut`` takes this end's link down, ``heal`` up again."""

    def __init__(self) -> None:
        n = next(_made)
        tag = f"{os.getpid() % 100_000}x{n}"
        self.namespace = f"rc{tag}"
        self.here, self.there = f"rch{tag}"[:15], f"rct{tag}"[:15]
        subnet = 100 + os.getpid() % 100 + n
        self.address = f"10.77.{subnet % 250}.2"
        local = f"10.77.{subnet % 250}.1"
        ip("netns", "add", self.namespace)
        try:
            ip("link", "add", self.here, "type", "veth", "peer", "name", self.there)
            ip("link", "set", self.there, "netns", self.namespace)
            ip("addr", "add", f"{local}/24", "dev", self.here)
            ip("link", "set", self.here, "up")
            inside = ("netns", "exec", self.namespace, "ip")
            ip(*inside, "addr", "add", f"{self.address}/24", "dev", self.there)
            ip(*inside, "link", "set", self.there, "up")
            ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def cut(self) -> None:
        ip("link", "set", self.here, "down")

    def heal(self) -> None:
        ip("link", "set", self.here, "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.here], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True)


class NamespacedRedis(RedisServer):
    """A redis-server inside ``partition``'s namespace, listening on its address."""

    def __init__(self, partition: Partition) -> None:
        super().__init__()
        self.partition = partition

    def _command(self) -> list[str]:
        command = super()._command()
        command[command.index("--bind") + 1] = self.partition.address
        return ["ip", "netns", "exec", self.partition.namespace, *command]

    @property
    def url(self) -> str:
        return f"redis://{self.partition.address}:{self.port}"

    def ping(self, timeout: float = 0.5) -> bool:
        try:
            with socket.create_connection((self.partition.address, self.port), timeout) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@pytest.fixture
def partitioned_redis() -> Iterator[tuple[Partition, NamespacedRedis]]:
    partition = Partition()
    redis = NamespacedRedis(partition)
    try:
        redis.start()
        yield partition, redis
    finally:
        partition.heal()
        redis.close(kill=True)
        partition.close()


async def test_a_partition_from_redis_is_noticed_served_locally_and_healed(
    partitioned_redis: tuple[Partition, NamespacedRedis],
) -> None:
    """The link to Redis goes silent: both instances notice within their stall timeout
    (the lease's third: 1/3 s here), serve locally (alice's message reaches carol on her
    instance), and once the link is back they reconnect, and bob on the other instance
    gets alice's message, late rather than never."""
    partition, redis = partitioned_redis
    settings = ServerConfig(
        host="127.0.0.1", port=0, bus_url=redis.url, bus_lease=1.0, store="memory://"
    )
    one, two = await ChatServer.start(settings), await ChatServer.start(settings)
    try:
        alice, carol, bob = (
            await peer(one, "alice"),
            await peer(one, "carol"),
            await peer(two, "bob"),
        )
        for who in (alice, carol, bob):
            await who.join("general")
        await alice.next("room_participation", u="bob")
        await carol.next("room_participation", u="bob")

        partition.cut()
        await until(
            lambda: not one.bus.connected and not two.bus.connected,
            "both instances noticed that Redis went silent",
        )
        await alice.say("general", "during the partition")
        await carol.next("user_message", c="during the partition")  # local: at once

        partition.heal()
        await until(lambda: one.bus.connected and two.bus.connected, "both reconnected")
        await bob.next("user_message", c="during the partition")  # shared: late, not never
        await bob.say("general", "after")
        await alice.next("user_message", c="after")
        for who in (alice, carol, bob):
            who.close()
    finally:
        await one.close()
        await two.close()
