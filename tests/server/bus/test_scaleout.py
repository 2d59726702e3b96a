"""Several instances sharing rooms through a real Redis: delivery, order, presence, faults.

Instances are real ``roomchat serve`` subprocesses (tests/instances.py) on a
redis-server or a 3-master Redis Cluster that the test starts (tests/redis_servers.py).
Every wait is for an event or a log line, with a timeout.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import cast

import pytest

from roomchat import tokens
from roomchat.client import ChatClient, HelloRefused, connect
from roomchat.protocol import Event, RoomParticipation, UserJoinedRoom, UserMessage, encode
from roomchat.server import ChatServer, ServerConfig, load_rooms
from roomchat.server.bus.redis import RedisBus, RoomKeys
from tests.helpers import until
from tests.instances import TIMEOUT, Instance, instances
from tests.redis_servers import RedisCluster, RedisServer
from tests.serve_cli import assert_one_clean_line, run_roomchat

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
    redis_server: RedisServer, tmp_path: Path
) -> None:
    one, two = await _servers(redis_server, tmp_path)
    try:
        observer = await _client(two)
        await join(observer)
        # The same user on both instances: a name and the token its first session got.
        first = await connect("127.0.0.1", one.port, v2=True, name="twin1", timeout=TIMEOUT)
        assert first.token is not None
        second = await connect(
            "127.0.0.1", two.port, v2=True, name="twin1", token=first.token, timeout=TIMEOUT
        )
        assert first.user_id == second.user_id == "twin1"
        await first.join_and_wait(ROOM)
        assert await next_event(observer) == RoomParticipation(ROOM, "twin1", "joined")
        # The user is in the room already: no second "joined".
        assert (await second.join_and_wait(ROOM)).joined.users == (observer.user_id, "twin1")
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


# -- names, unique across instances ----------------------------------------------------


async def _servers(redis_server: RedisServer, tmp_path: Path) -> tuple[ChatServer, ChatServer]:
    """Two in-process instances on one Redis, sharing a token secret (open mode)."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 32)
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        bus_url=redis_server.url,
        auth_secret_file=secret,
        require_tokens=False,
    )
    return await ChatServer.start(config), await ChatServer.start(config)


async def _refused(port: int, name: str, token: str | None = None) -> str:
    with pytest.raises(HelloRefused) as refused:
        await connect("127.0.0.1", port, v2=True, name=name, token=token, timeout=TIMEOUT)
    return refused.value.error.code


async def test_a_name_is_held_once_across_instances(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    one, two = await _servers(redis_server, tmp_path)
    try:
        alice = await connect("127.0.0.1", one.port, v2=True, name="Alice", timeout=TIMEOUT)
        # Taken on the other instance too, whatever the case, without the token.
        for name in ("Alice", "alice", "ALICE"):
            assert await _refused(two.port, name) == "name_taken"
        # A token for another spelling does not prove "Alice".
        wrong = tokens.mint(b"s" * 32, "alice", 2**33)
        assert await _refused(two.port, "alice", wrong) == "name_taken"
        # A v1 user's random id on one instance is a taken name on the other.
        v1 = await _client(one)
        assert await _refused(two.port, v1.user_id.swapcase()) == "name_taken"
        # Two instances asking for one free name at once: one gets it.
        outcomes = await asyncio.gather(
            connect("127.0.0.1", one.port, v2=True, name="bob", timeout=TIMEOUT),
            connect("127.0.0.1", two.port, v2=True, name="BOB", timeout=TIMEOUT),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, ChatClient)]
        losers = [o for o in outcomes if isinstance(o, HelloRefused)]
        assert len(winners) == 1 and len(losers) == 1, outcomes
        assert losers[0].error.code == "name_taken"
        # Free everywhere once its last session has ended.
        alice.close()
        await alice.wait_closed()
        async with asyncio.timeout(TIMEOUT):
            while True:
                try:
                    again = await connect(
                        "127.0.0.1", two.port, v2=True, name="alice", timeout=TIMEOUT
                    )
                    break
                except HelloRefused as refused:  # the release may still be on its way
                    assert refused.error.code == "name_taken"
        assert again.user_id == "alice"
        for client in (again, v1, *winners):
            client.close()
    finally:
        await one.close()
        await two.close()


async def test_a_random_id_another_instance_holds_is_drawn_again(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = await _servers(redis_server, tmp_path)
    try:
        named = await connect("127.0.0.1", one.port, v2=True, name="dup01", timeout=TIMEOUT)
        # Both instances draw ids that another instance's users hold: a v1 user's
        # random id, and a chosen name (any case). Each login gets a fresh one instead.
        monkeypatch.setattr("roomchat.server.shells.shell.new_user_id", lambda: "twin1")
        first = await _client(one)
        assert first.user_id == "twin1"
        second = await _client(two)
        monkeypatch.setattr("roomchat.server.shells.shell.new_user_id", lambda: "DUP01")
        third = await _client(two)
        monkeypatch.undo()
        assert second.user_id not in ("twin1", "dup01", "DUP01")
        assert third.user_id not in ("twin1", "dup01", "DUP01", second.user_id)
        for client in (second, third):  # and the session works as any other
            await join(client)
        for client in (named, first, second, third):
            client.close()
    finally:
        await one.close()
        await two.close()


async def test_names_asserted_again_after_redis_restarts_empty(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    one, two = await _servers(redis_server, tmp_path)
    try:
        carol = await connect("127.0.0.1", one.port, v2=True, name="carol", timeout=TIMEOUT)
        bus = cast(RedisBus, one.bus)
        connects = bus.stats.connects
        await asyncio.to_thread(redis_server.stop)
        await asyncio.to_thread(redis_server.start)  # empty: it kept nothing
        await until(lambda: bus.stats.connects > connects and bus.connected, "one reconnected")
        await until(lambda: two.bus.connected, "two reconnected")
        async with asyncio.timeout(TIMEOUT):
            while await _refused_or_none(two.port, "carol") is None:
                pass  # taken before one re-asserted its names: let it go and ask again
        carol.close()
    finally:
        await one.close()
        await two.close()


async def _refused_or_none(port: int, name: str) -> str | None:
    """The refusal's code, or None after closing a session that got the name."""
    try:
        client = await connect("127.0.0.1", port, v2=True, name=name, timeout=TIMEOUT)
    except HelloRefused as refused:
        return refused.error.code
    client.close()
    await client.wait_closed()
    return None


async def _client(server: ChatServer) -> ChatClient:
    return await connect("127.0.0.1", server.port, timeout=TIMEOUT)


async def test_a_killed_instance_s_members_leave_within_the_lease(
    redis_server: RedisServer,
) -> None:
    async with instances(2, "--bus", redis_server.url, "--bus-lease", "2") as (one, two):
        survivor, doomed = await one.client(), await two.client()
        named = await connect("127.0.0.1", two.port, v2=True, name="dora", timeout=TIMEOUT)
        assert await _refused(one.port, "dora") == "name_taken"
        await join(survivor)
        await join(doomed)
        assert await next_event(survivor) == RoomParticipation(ROOM, doomed.user_id, "joined")
        two.kill()
        assert await next_event(survivor) == RoomParticipation(ROOM, doomed.user_id, "left")
        await one.wait_for_log(r"stopped renewing its lease: removed its 1 sessions")
        newcomer = await one.client()
        assert (await join(newcomer)).users == (survivor.user_id, newcomer.user_id)
        # The dead instance's names are free again.
        dora = await connect("127.0.0.1", one.port, v2=True, name="dora", timeout=TIMEOUT)
        for client in (survivor, newcomer, named, dora):
            client.close()


async def sharing(one: Instance, two: Instance) -> tuple[ChatClient, ChatClient]:
    """alice on ``one`` and bob on ``two`` in ROOM, alice's messages reaching bob."""
    alice, bob = await one.client(), await two.client()
    await join(alice)
    await join(bob)
    await wait_event(alice, RoomParticipation(ROOM, bob.user_id, "joined"))
    await crosses(alice, bob)
    return alice, bob


async def pair_and_one(one: Instance, two: Instance) -> tuple[ChatClient, ...]:
    """alice and carol on ``one``, bob on ``two``, all in ROOM and all seeing bob there."""
    alice, carol, bob = await one.client(), await one.client(), await two.client()
    for client in (alice, carol, bob):
        await join(client)
    await wait_event(alice, RoomParticipation(ROOM, bob.user_id, "joined"))
    await wait_event(carol, RoomParticipation(ROOM, bob.user_id, "joined"))
    return alice, carol, bob


# -- faults -----------------------------------------------------------------------------


async def test_redis_restart_local_delivery_then_recovery(redis_server: RedisServer) -> None:
    async with instances(2, "--bus", redis_server.url) as (one, two):
        alice, carol, bob = await pair_and_one(one, two)
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
        port = cluster.node_for_slot(RoomKeys(detail.name).slot).port
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
        node = redis_cluster.node_for_slot(RoomKeys(red).slot)
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
    slot = RoomKeys(red).slot
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


async def test_a_stray_payload_on_a_room_channel_is_logged_not_fatal(
    redis_server: RedisServer,
) -> None:
    """Someone PUBLISHes by hand on a room's channel: the instances log it and go on (the
    subscriber connection is not lost over it)."""
    async with instances(2, "--bus", redis_server.url) as (one, two):
        alice, bob = await one.client(), await two.client()
        await join(alice)
        await join(bob)
        await wait_event(alice, RoomParticipation(ROOM, bob.user_id, "joined"))
        channel = RoomKeys(ROOM).channel.decode()
        for stray in ("", "Mnot-a-number\nx", "nonsense"):
            await asyncio.to_thread(redis_server.cli, "PUBLISH", channel, stray)
        await one.wait_for_log(r"a message on room 'general'.s channel failed .*not a roomchat")
        await bob.send(ROOM, "still here")
        await wait_event(alice, UserMessage(ROOM, bob.user_id, "still here"))
        assert not re.search(LOST, "\n".join(one.lines)), one.lines
        alice.close()
        bob.close()


# -- script cache and reconnect reasons (issue 19, items 2 and 4) -----------------------


async def test_a_flushed_script_cache_is_loaded_again(redis_server: RedisServer) -> None:
    """SCRIPT FLUSH (as after a failover to a replica) ends nothing: messages need no
    script (posting is a transaction), and the first NOSCRIPT (here a join's) loads the
    scripts again and sends again, in order, every script Redis refused meanwhile (the
    join, the leave and the join behind it), with no outage: the other instance sees
    them in order, and a newcomer there finds the user in the room."""
    async with instances(2, "--bus", redis_server.url) as (one, two):
        alice, bob = await sharing(one, two)
        mark = len(one.lines), len(two.lines)
        await asyncio.to_thread(redis_server.command, "SCRIPT", "FLUSH")
        await crosses(alice, bob)
        carol = await one.client()
        await carol.join(ROOM)  # JOIN meets NOSCRIPT; LEAVE and JOIN follow it in flight
        await carol.leave(ROOM)
        await carol.join(ROOM)
        for kind in ("joined", "left", "joined"):
            await wait_event(bob, RoomParticipation(ROOM, carol.user_id, kind))
        line = await one.wait_for_log(r"answered NOSCRIPT .*\(#(\d+)\)", after=mark[0])
        assert line.group(1) == "1"
        dave = await two.client()
        assert carol.user_id in (await join(dave)).users
        await crosses(alice, bob)
        await crosses(bob, alice)
        for instance, since in zip((one, two), mark, strict=True):
            assert not any(re.search(LOST, text) for text in instance.lines[since:])
            assert not any("Traceback" in text for text in instance.lines)
        for client in (alice, bob, carol, dave):
            client.close()


async def arrive_in_order(client: ChatClient, sender: str, texts: list[str]) -> None:
    """``texts`` from ``sender`` reach ``client`` in order, none before the first."""
    before = await wait_event(client, UserMessage(ROOM, sender, texts[0]))
    assert not any(isinstance(e, UserMessage) and e.content in texts for e in before)
    rest = [await next_event(client) for _ in texts[1:]]
    assert rest == [UserMessage(ROOM, sender, text) for text in texts[1:]]


async def test_messages_redis_refuses_at_maxmemory_arrive_once_it_takes_them(
    redis_server: RedisServer,
) -> None:
    """Redis at maxmemory (noeviction) refuses every post (OOM: EXECABORT). The sender
    and its instance's members get the messages as Redis refuses them (or, posted while
    refusals are under way, once those are all in), in order; the instance holds them,
    logs why and goes local; once Redis takes writes again they reach the other
    instance's members, in order, once (they reached nobody before)."""
    async with instances(2, "--bus", redis_server.url) as (one, two):
        alice, carol, bob = await pair_and_one(one, two)
        await crosses(alice, bob)
        mark = len(one.lines)
        await asyncio.to_thread(redis_server.command, "CONFIG", "SET", "maxmemory", "1")
        texts = [f"refused {i}" for i in range(30)]
        for text in texts:
            await alice.send(ROOM, text)
        for client in (alice, carol):  # the sender's instance: in order
            await arrive_in_order(client, alice.user_id, texts)
        await one.wait_for_log(r"Redis refused messages \(OOM", after=mark)
        await asyncio.to_thread(redis_server.command, "CONFIG", "SET", "maxmemory", "0")
        await one.wait_for_log(BACK, after=mark)
        await arrive_in_order(bob, alice.user_id, texts)
        await alice.send(ROOM, "after")  # and nothing twice on the sender's instance
        for client in (alice, carol, bob):
            assert await wait_event(client, UserMessage(ROOM, alice.user_id, "after")) == []
        for client in (alice, carol, bob):
            client.close()


async def test_each_new_reason_a_reconnect_fails_is_logged(redis_server: RedisServer) -> None:
    """A password that Redis starts to require, then Redis gone: each reason gets its own
    line (not only the first attempt's), and the instance recovers once Redis is back."""
    async with instances(1, "--bus", redis_server.url, "--metrics", "127.0.0.1:0") as (one,):
        mark = len(one.lines)
        redis_server.command("CONFIG", "SET", "requirepass", "s3cret")
        with redis_server.client(password="s3cret") as admin:
            admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await one.wait_for_log(LOST, after=mark)
        refused = r"reconnecting \(attempt \d+\): .*(NOAUTH|WRONGPASS|[Aa]uthenticat)"
        await one.wait_for_log(refused, after=mark)
        await asyncio.to_thread(redis_server.stop)  # forgets the password: not persisted
        line = await one.wait_for_log(
            r"reconnecting \(attempt (\d+)\): Connection refused", after=mark
        )
        # Logged as the reason changed, not at the next 20th attempt (as it was): the
        # attempts before it are the few of the password's phase (backoff from 50 ms).
        assert int(line.group(1)) < 20, line.group(0)
        await asyncio.to_thread(redis_server.start)
        await one.wait_for_log(BACK, after=mark)


async def test_an_instance_frozen_past_its_lease_repairs_itself(
    redis_server: RedisServer,
) -> None:
    """SIGSTOP past the lease: the other instance purges it (its user is announced
    left); after SIGCONT the frozen instance notices its lease had lapsed and asserts its
    sessions again: announced joined once, listed to a newcomer, and chatting again."""
    async with instances(2, "--bus", redis_server.url, "--bus-lease", "1") as (one, two):
        survivor, frozen = await one.client(), await two.client()
        await join(survivor)
        await join(frozen)
        assert await next_event(survivor) == RoomParticipation(ROOM, frozen.user_id, "joined")
        mark = len(two.lines)
        two.process.send_signal(signal.SIGSTOP)
        try:
            assert await next_event(survivor) == RoomParticipation(ROOM, frozen.user_id, "left")
            await one.wait_for_log(r"stopped renewing its lease: removed its 1 sessions")
        finally:
            two.process.send_signal(signal.SIGCONT)
        await two.wait_for_log(r"lease had lapsed .* asserting its sessions", after=mark)
        assert await next_event(survivor) == RoomParticipation(ROOM, frozen.user_id, "joined")
        newcomer = await one.client()
        assert set((await join(newcomer)).users) == {
            survivor.user_id,
            frozen.user_id,
            newcomer.user_id,
        }
        # "joined" came once: nothing of the frozen user's up to the newcomer's join.
        events = await wait_event(survivor, RoomParticipation(ROOM, newcomer.user_id, "joined"))
        assert not [e for e in events if isinstance(e, RoomParticipation)], events
        await crosses(frozen, survivor)
        for client in (survivor, frozen, newcomer):
            client.close()


async def test_credentials_refused_at_start_up_are_one_clear_line(
    redis_server: RedisServer,
) -> None:
    redis_server.command("CONFIG", "SET", "requirepass", "s3cret")
    try:
        status, stderr = await run_roomchat("serve", "--port", "0", "--bus", redis_server.url)
        assert status != 0
        assert_one_clean_line(stderr, "cannot use the Redis bus", "NOAUTH")
        wrong = redis_server.url.replace("redis://", "redis://:wrong@")
        status, stderr = await run_roomchat("serve", "--port", "0", "--bus", wrong)
        assert status != 0
        assert_one_clean_line(stderr, "WRONGPASS")
        assert "wrong" not in stderr  # the password is not logged
    finally:
        with redis_server.client(password="s3cret") as admin:
            admin.execute_command("CONFIG", "SET", "requirepass", "")


async def test_a_history_refused_by_redis_is_counted_and_logged_not_swallowed(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The room's recent runs' key holds something else (WRONGTYPE): the message is still
    delivered, and the refusal is counted and logged (it was dropped silently)."""
    server = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, bus_url=redis_server.url)
    )
    try:
        client = await connect("127.0.0.1", server.port, timeout=TIMEOUT)
        await join(client)
        redis_server.command("SET", RoomKeys(ROOM).recent, "not a list")
        await client.send(ROOM, "still delivered")
        assert await next_event(client) == UserMessage(ROOM, client.user_id, "still delivered")
        bus = cast(RedisBus, server.bus)
        await until(lambda: bus.stats.errors >= 1, "the refusal counted")
        assert any("history" in r.message and "WRONGTYPE" in r.message for r in caplog.records)
        client.close()
    finally:
        await server.close()


@pytest.mark.parametrize("fault", ["restarted", "stalled"])
async def test_messages_posted_during_an_outage_reach_the_other_instances_afterwards(
    redis_server: RedisServer, fault: str
) -> None:
    """Redis restarted (empty) or stalled (SIGSTOP past the stall timeout): what alice
    posts meanwhile reaches carol on her instance at once, and bob on the other instance
    once Redis is back, in alice's order; carol does not get it a second time."""
    args = ("--bus", redis_server.url, "--bus-lease", "1")
    async with instances(2, *args) as (one, two):
        alice, carol, bob = await pair_and_one(one, two)
        mark = len(one.lines), len(two.lines)
        assert redis_server.process is not None
        if fault == "restarted":
            await asyncio.to_thread(redis_server.stop)
        else:
            redis_server.process.send_signal(signal.SIGSTOP)
        try:
            await one.wait_for_log(r"redis bus: .*rooms are local", after=mark[0])
            during = [f"during {n}" for n in range(5)]
            for text in during:
                await alice.send(ROOM, text)
            for client in (alice, carol):  # local members: at once
                for text in during:
                    await wait_event(client, UserMessage(ROOM, alice.user_id, text))
        finally:
            if fault == "restarted":
                await asyncio.to_thread(redis_server.start)
            else:
                redis_server.process.send_signal(signal.SIGCONT)
        await one.wait_for_log(r"5 messages posted during the outage are shared now", after=mark[0])
        seen = []
        async with asyncio.timeout(TIMEOUT):
            while len(seen) < len(during):
                event = await bob.next_event()
                if isinstance(event, UserMessage) and event.content.startswith("during"):
                    seen.append(event.content)
        assert seen == during  # late, not never, and in alice's order
        await crosses(alice, bob)
        await alice.send(ROOM, "after")
        for client in (alice, carol):  # nothing of the outage again before "after"
            before = await wait_event(client, UserMessage(ROOM, alice.user_id, "after"))
            again = [e for e in before if isinstance(e, UserMessage) and "during" in e.content]
            assert again == [], again
        for client in (alice, carol, bob):
            client.close()


async def test_an_instance_cut_off_catches_up_on_what_the_others_posted(
    redis_server: RedisServer,
) -> None:
    """Instance two is cut off from Redis (its Redis user disabled and its connections
    killed: it cannot reconnect) while alice on instance one goes on posting; once two
    is let in again, bob on two gets alice's messages from the room's stream, each once
    and in order, then the live ones."""
    redis_server.command("ACL", "SETUSER", "two", "on", ">pw2", "~*", "&*", "+@all")
    url_two = redis_server.url.replace("redis://", "redis://two:pw2@")
    one = await Instance.start("--bus", redis_server.url)
    two = await Instance.start("--bus", url_two)
    try:
        alice, bob = await one.client(), await two.client()
        await join(alice)
        await join(bob)
        await wait_event(alice, RoomParticipation(ROOM, bob.user_id, "joined"))
        mark = len(two.lines)
        redis_server.command("ACL", "SETUSER", "two", "off")
        redis_server.command("CLIENT", "KILL", "USER", "two")
        await two.wait_for_log(r"redis bus: .*rooms are local", after=mark)
        await two.wait_for_log(r"reconnecting \(attempt", after=mark)
        missed = [f"missed {n}" for n in range(5)]
        for text in missed:
            await alice.send(ROOM, text)
        await wait_event(alice, UserMessage(ROOM, alice.user_id, missed[-1]))
        redis_server.command("ACL", "SETUSER", "two", "on")
        await two.wait_for_log(BACK, after=mark)
        await alice.send(ROOM, "live")
        got = []
        async with asyncio.timeout(TIMEOUT):
            while not got or got[-1] != "live":
                event = await bob.next_event()
                if isinstance(event, UserMessage):
                    got.append(event.content)
        assert got == [*missed, "live"]
        for client in (alice, bob):
            client.close()
    finally:
        await one.stop(kill=True)
        await two.stop(kill=True)


async def test_a_room_left_during_an_outage_holds_no_ghost_afterwards(
    redis_server: RedisServer,
) -> None:
    """alice, the only one of instance one in the room, leaves while one is cut off from
    Redis: once one is back, bob on the other instance is told she left, and a newcomer
    does not find her there (before, the room had no session of one left, so nothing of
    it was asserted again and Redis listed her for good)."""
    redis_server.command("ACL", "SETUSER", "one", "on", ">pw1", "~*", "&*", "+@all")
    one = await Instance.start("--bus", redis_server.url.replace("redis://", "redis://one:pw1@"))
    two = await Instance.start("--bus", redis_server.url)
    try:
        alice, bob = await sharing(one, two)
        mark = len(one.lines)
        redis_server.command("ACL", "SETUSER", "one", "off")
        redis_server.command("CLIENT", "KILL", "USER", "one")
        await one.wait_for_log(r"redis bus: .*rooms are local", after=mark)
        await alice.leave(ROOM)
        other = next(room.name for room in alice.rooms if room.name != ROOM)
        await alice.join(other)  # answered after the leave: then the leave is done
        await wait_event(alice, RoomParticipation(other, alice.user_id, "joined"))
        redis_server.command("ACL", "SETUSER", "one", "on")
        await one.wait_for_log(BACK, after=mark)
        await wait_event(bob, RoomParticipation(ROOM, alice.user_id, "left"))
        newcomer = await two.client()
        assert (await join(newcomer)).users == (bob.user_id, newcomer.user_id)
        for client in (alice, bob, newcomer):
            client.close()
    finally:
        await one.stop(kill=True)
        await two.stop(kill=True)


async def test_a_turn_s_runs_of_one_room_are_posted_as_one(redis_server: RedisServer) -> None:
    """Runs posted into one room in the same turn (here two senders' and a third's,
    posted back to back) go to Redis as one INCRBY, RPUSH and PUBLISH: the room's
    recent runs hold one entry of three lines, every member gets the three in the order
    they were posted, and the message store has each under its own number."""
    server = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, bus_url=redis_server.url, store="memory://")
    )
    try:
        client = await connect("127.0.0.1", server.port, timeout=TIMEOUT)
        await join(client)
        room = server.rooms.rooms[ROOM]
        lines = [encode(UserMessage(ROOM, user, f"m{n}")) for n, user in enumerate("aba")]
        for line in lines:  # one turn: nothing is written before the loop goes on
            room.post(line)
        got = [await next_event(client) for _ in lines]
        assert got == [UserMessage(ROOM, user, f"m{n}") for n, user in enumerate("aba")]
        recent = redis_server.client(decode_responses=False).lrange(RoomKeys(ROOM).recent, 0, -1)
        assert len(recent) == 1 and recent[0].endswith(b"".join(lines)), recent
        assert redis_server.command("GET", RoomKeys(ROOM).counter) == "3"
        archive = server.archive
        await until(lambda: archive.written >= 3, "the three written to the store")
        page = await archive.page(ROOM, room.epoch, before=None, after=0, limit=10)
        assert [(m.seq, m.content) for m in page] == [(1, "m0"), (2, "m1"), (3, "m2")]
        client.close()
    finally:
        await server.close()
