"""Several instances sharing rooms through a real Redis: delivery, order, presence, faults.

Instances are real ``roomchat serve`` subprocesses (tests/instances.py) on a
redis-server or a 3-master Redis Cluster that the test starts (tests/redis_servers.py).
Every wait is for an event or a log line, with a timeout.
"""

from __future__ import annotations

import asyncio
import re

import pytest

from roomchat.client import ChatClient, connect
from roomchat.protocol import Event, RoomParticipation, UserJoinedRoom, UserMessage
from roomchat.server import ChatServer, ServerConfig, load_rooms
from roomchat.server.bus.redis import _RoomKeys
from tests.instances import TIMEOUT, instances
from tests.redis_servers import RedisCluster, RedisServer

ROOM = "general"
LOST = r"redis bus: .*(lost|dropped)"
BACK = r"redis bus: reconnected after"


async def next_event(client: ChatClient) -> Event:
    return await client.next_event(timeout=TIMEOUT)


async def join(client: ChatClient, room: str = ROOM) -> UserJoinedRoom:
    """Join; return user_joined_room after checking one's own "joined" follows it."""
    await client.join(room)
    reply = await next_event(client)
    assert isinstance(reply, UserJoinedRoom), reply
    assert await next_event(client) == RoomParticipation(room, client.user_id, "joined")
    return reply


async def wait_event(client: ChatClient, wanted: Event) -> list[Event]:
    """Read until ``wanted`` arrives; return what came before it."""
    before: list[Event] = []
    async with asyncio.timeout(TIMEOUT):
        while (event := await client.next_event()) != wanted:
            before.append(event)
    return before


async def crosses(sender: ChatClient, receiver: ChatClient, room: str = ROOM) -> None:
    """Send until a message from ``sender`` reaches ``receiver`` (after an outage, the
    instances may need a moment to subscribe again; what was sent meanwhile is lost)."""
    async with asyncio.timeout(TIMEOUT):
        for attempt in range(1000):
            text = f"probe {attempt}"
            await sender.send(room, text)
            try:
                async with asyncio.timeout(0.5):
                    while True:
                        event = await receiver.next_event()
                        if event == UserMessage(room, sender.user_id, text):
                            return
            except TimeoutError:
                continue


# -- sharing rooms ------------------------------------------------------------------------


async def test_members_on_two_instances_see_each_other(redis_server: RedisServer) -> None:
    async with instances(2, "--bus", redis_server.url) as (one, two):
        alice, bob, carol = await one.client(), await two.client(), await one.client()
        assert (await join(alice)).users == (alice.user_id,)
        assert (await join(bob)).users == (alice.user_id, bob.user_id)
        assert await next_event(alice) == RoomParticipation(ROOM, bob.user_id, "joined")
        assert (await join(carol)).users == (alice.user_id, bob.user_id, carol.user_id)
        for client in (alice, bob):
            assert await next_event(client) == RoomParticipation(ROOM, carol.user_id, "joined")
        await bob.send(ROOM, "from two")
        for client in (alice, bob, carol):
            assert await next_event(client) == UserMessage(ROOM, bob.user_id, "from two")
        await bob.leave(ROOM)
        for client in (alice, carol):
            assert await next_event(client) == RoomParticipation(ROOM, bob.user_id, "left")
        carol.close()
        assert await next_event(alice) == RoomParticipation(ROOM, carol.user_id, "left")
        for client in (alice, bob):
            client.close()


async def test_every_member_everywhere_sees_one_order(redis_server: RedisServer) -> None:
    async with instances(3, "--bus", redis_server.url) as servers:
        clients = [await server.client() for server in servers for _ in range(2)]
        for client in clients:
            await join(client)
        # Everyone reads until the last joiner's "joined": from there the streams agree.
        last = RoomParticipation(ROOM, clients[-1].user_id, "joined")
        for client in clients[:-1]:
            await wait_event(client, last)
        per_client = 40
        await asyncio.gather(
            *(
                client.send(ROOM, f"{n}/{i}")
                for n, client in enumerate(clients)
                for i in range(per_client)
            )
        )
        total = per_client * len(clients)
        streams = []
        for client in clients:
            got = [await next_event(client) for _ in range(total)]
            assert all(isinstance(e, UserMessage) for e in got)
            streams.append(got)
        assert all(stream == streams[0] for stream in streams)
        # ... and each sender's own messages are in the order it sent them.
        for n, client in enumerate(clients):
            mine = [e.content for e in streams[0] if isinstance(e, UserMessage)]
            mine = [c for c in mine if c.startswith(f"{n}/")]
            assert mine == [f"{n}/{i}" for i in range(per_client)]
            client.close()


async def test_a_user_on_two_instances_is_announced_once(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ServerConfig(host="127.0.0.1", port=0, bus_url=redis_server.url)
    one, two = await ChatServer.start(config), await ChatServer.start(config)
    try:
        observer = await _client(two)
        await join(observer)
        monkeypatch.setattr("roomchat.server.connection.new_user_id", lambda: "twin1")
        first, second = await _client(one), await _client(two)
        monkeypatch.undo()
        assert first.user_id == second.user_id == "twin1"
        await join(first)
        assert await next_event(observer) == RoomParticipation(ROOM, "twin1", "joined")
        await second.join(ROOM)  # the user is in the room already: no second "joined"
        assert await next_event(second) == UserJoinedRoom(ROOM, (observer.user_id, "twin1"))
        late = await _client(one)
        assert (await join(late)).users == (observer.user_id, "twin1", late.user_id)
        assert await next_event(observer) == RoomParticipation(ROOM, late.user_id, "joined")
        await first.leave(ROOM)  # one session of the user is still there: no "left"
        await observer.send(ROOM, "still here?")
        assert await next_event(observer) == UserMessage(ROOM, observer.user_id, "still here?")
        second.close()  # its last session: "left", once, everywhere
        assert await next_event(observer) == RoomParticipation(ROOM, "twin1", "left")
        assert await next_event(late) == UserMessage(ROOM, observer.user_id, "still here?")
        assert await next_event(late) == RoomParticipation(ROOM, "twin1", "left")
        for client in (observer, first, late):
            client.close()
    finally:
        await one.close()
        await two.close()


async def _client(server: ChatServer) -> ChatClient:
    return await connect("127.0.0.1", server.port, timeout=TIMEOUT)


async def test_a_killed_instance_s_members_leave_within_the_lease(
    redis_server: RedisServer,
) -> None:
    async with instances(2, "--bus", redis_server.url, "--bus-lease", "2") as (one, two):
        survivor, doomed = await one.client(), await two.client()
        await join(survivor)
        await join(doomed)
        assert await next_event(survivor) == RoomParticipation(ROOM, doomed.user_id, "joined")
        two.kill()
        assert await next_event(survivor) == RoomParticipation(ROOM, doomed.user_id, "left")
        await one.wait_for_log(r"stopped renewing its lease: removed its 1 sessions")
        newcomer = await one.client()
        assert (await join(newcomer)).users == (survivor.user_id, newcomer.user_id)
        survivor.close()
        newcomer.close()


# -- faults -----------------------------------------------------------------------------


async def test_redis_restart_local_delivery_then_recovery(redis_server: RedisServer) -> None:
    async with instances(2, "--bus", redis_server.url) as (one, two):
        alice, carol, bob = await one.client(), await one.client(), await two.client()
        for client in (alice, carol, bob):
            await join(client)
        await wait_event(alice, RoomParticipation(ROOM, bob.user_id, "joined"))
        await wait_event(carol, RoomParticipation(ROOM, bob.user_id, "joined"))
        mark = len(one.lines), len(two.lines)
        await asyncio.to_thread(redis_server.stop)
        await one.wait_for_log(LOST, after=mark[0])
        await two.wait_for_log(LOST, after=mark[1])
        # Redis is gone: sessions stay, and members on the same instance still chat.
        await alice.send(ROOM, "local only")
        for client in (alice, carol):
            assert await next_event(client) == UserMessage(ROOM, alice.user_id, "local only")
        await asyncio.to_thread(redis_server.start)  # empty: it kept nothing
        await one.wait_for_log(BACK, after=mark[0])
        await two.wait_for_log(BACK, after=mark[1])
        await crosses(alice, bob)
        await crosses(bob, carol)
        # Presence was re-asserted by both instances into the empty Redis.
        newcomer = await two.client()
        users = (await join(newcomer)).users
        assert set(users) == {alice.user_id, carol.user_id, bob.user_id, newcomer.user_id}
        assert not any(line for line in one.lines + two.lines if "Traceback" in line)
        for client in (alice, carol, bob, newcomer):
            client.close()


@pytest.mark.parametrize("how", ["client kill", "output buffer limit"])
async def test_subscriber_connection_killed_by_redis_recovers(
    redis_server: RedisServer, how: str
) -> None:
    async with instances(2, "--bus", redis_server.url) as (one, two):
        alice, bob = await one.client(), await two.client()
        await join(alice)
        await join(bob)
        await wait_event(alice, RoomParticipation(ROOM, bob.user_id, "joined"))
        mark = len(one.lines), len(two.lines)
        if how == "client kill":
            killed = await asyncio.to_thread(redis_server.cli, "CLIENT", "KILL", "TYPE", "pubsub")
            assert killed.strip() == "2"  # one subscriber connection per instance
        else:
            # Redis cuts a subscriber whose unread output passes the limit.
            await asyncio.to_thread(
                redis_server.cli, "CONFIG", "SET", "client-output-buffer-limit", "pubsub 1024 0 0"
            )
            big = "x" * 8192
            for _ in range(4):
                await alice.send(ROOM, big)
            await one.wait_for_log(LOST, after=mark[0])
            await asyncio.to_thread(
                redis_server.cli,
                "CONFIG",
                "SET",
                "client-output-buffer-limit",
                "pubsub 32mb 8mb 60",
            )
        await one.wait_for_log(BACK, after=mark[0])
        await crosses(bob, alice)
        await crosses(alice, bob)
        assert re.search(LOST, "\n".join(one.lines[mark[0] :]))
        alice.close()
        bob.close()


# -- Redis Cluster ------------------------------------------------------------------------


def rooms_on_two_shards(cluster: RedisCluster) -> tuple[str, str]:
    """Two of the packaged rooms whose channels live on different masters."""
    owners: dict[int, str] = {}
    for detail in load_rooms():
        port = cluster.node_for_slot(_RoomKeys(detail.name, cluster=True).slot).port
        owners.setdefault(port, detail.name)
        if len(owners) == 2:
            first, second = owners.values()
            return first, second
    raise AssertionError("all packaged rooms hash to one shard")


async def test_cluster_rooms_on_different_shards(redis_cluster: RedisCluster) -> None:
    red, blue = rooms_on_two_shards(redis_cluster)
    async with instances(2, "--bus", redis_cluster.url) as (one, two):
        alice, bob = await one.client(), await two.client()
        for room in (red, blue):
            await join(alice, room)
            await join(bob, room)
            await wait_event(alice, RoomParticipation(room, bob.user_id, "joined"))
        for room in (red, blue):
            await bob.send(room, f"to {room}")
            assert await next_event(alice) == UserMessage(room, bob.user_id, f"to {room}")
            assert await next_event(bob) == UserMessage(room, bob.user_id, f"to {room}")
        # The shard that owns the red room restarts: the instances reconnect.
        node = redis_cluster.node_for_slot(_RoomKeys(red, cluster=True).slot)
        mark = len(one.lines), len(two.lines)
        await asyncio.to_thread(redis_cluster.restart_node, node)
        await one.wait_for_log(BACK, after=mark[0])
        await two.wait_for_log(BACK, after=mark[1])
        await crosses(alice, bob, red)
        await crosses(bob, alice, blue)
        alice.close()
        bob.close()


async def test_cluster_slot_migration_resubscribes(redis_cluster: RedisCluster) -> None:
    red, _ = rooms_on_two_shards(redis_cluster)
    slot = _RoomKeys(red, cluster=True).slot
    async with instances(2, "--bus", redis_cluster.url) as (one, two):
        alice, bob = await one.client(), await two.client()
        await join(alice, red)
        await join(bob, red)
        await wait_event(alice, RoomParticipation(red, bob.user_id, "joined"))
        owner = redis_cluster.node_for_slot(slot)
        target = next(node for node in redis_cluster.nodes if node.port != owner.port)
        mark = len(one.lines), len(two.lines)
        await asyncio.to_thread(redis_cluster.migrate_slot, slot, target)
        await one.wait_for_log(BACK, after=mark[0])
        await two.wait_for_log(BACK, after=mark[1])
        await crosses(alice, bob, red)
        await crosses(bob, alice, red)
        # The room's presence moved with its slot: a newcomer sees both.
        newcomer = await two.client()
        assert set((await join(newcomer, red)).users) == {
            alice.user_id,
            bob.user_id,
            newcomer.user_id,
        }
        for client in (alice, bob, newcomer):
            client.close()
