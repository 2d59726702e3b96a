"""High availability through Redis Sentinel (``--bus redis+sentinel://``): a real master,
a replica of it and a sentinel watching them (tests/redis_servers.py RedisSentinelSet),
two real ``roomchat serve`` instances on it. The master is killed, or demoted by a
failover the operator asks for; the instances follow the promoted replica, and what a
user posts meanwhile reaches the other instance's members afterwards. Every wait is for
an event or a log line, with a timeout; nothing is timed here (the follow-up times are
in docs/scaling.md)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from typing import cast

import pytest

from roomchat.client import ChatClient, connect
from roomchat.protocol import UserMessage
from roomchat.server import ChatServer, ServerConfig
from roomchat.server.bus import BusError
from roomchat.server.bus.redis import RedisBus
from tests.helpers import until
from tests.instances import TIMEOUT, instances
from tests.redis_servers import HOST, RedisSentinel, RedisSentinelSet
from tests.server.bus.test_scaleout import BACK, ROOM, crosses, join, sharing, wait_event
from tests.server.test_community import peer
from tests.server.test_history_lasts import history_of, say_all

LOCAL = r"redis bus: .*rooms are local"


@pytest.fixture
def sentinels() -> Iterator[RedisSentinelSet]:
    with RedisSentinelSet.launch() as found:
        yield found


async def _received(client: ChatClient, texts: list[str]) -> list[str]:
    """The user messages starting like ``texts``' first word, until as many came."""
    prefix = texts[0].split()[0]
    seen: list[str] = []
    async with asyncio.timeout(TIMEOUT):
        while len(seen) < len(texts):
            event = await client.next_event()
            if isinstance(event, UserMessage) and event.content.startswith(prefix):
                seen.append(event.content)
    return seen


@pytest.mark.parametrize("fault", ["master killed", "failover asked"])
async def test_instances_follow_the_promoted_replica(
    sentinels: RedisSentinelSet, fault: str
) -> None:
    """The master dies (SIGKILL) or the operator asks for a failover (SENTINEL FAILOVER:
    the old master is demoted, its clients cut off): both instances go local, ask the
    sentinel again, find the promoted replica and share rooms again; what alice posted
    in between reaches bob afterwards, in her order, and alice never twice."""
    async with instances(2, "--bus", sentinels.url, "--bus-lease", "1") as (one, two):
        alice, bob = await sharing(one, two)
        mark = len(one.lines), len(two.lines)
        if fault == "master killed":
            await asyncio.to_thread(sentinels.master.kill)
        else:
            await asyncio.to_thread(
                sentinels.sentinel.command, "SENTINEL", "FAILOVER", sentinels.sentinel.service
            )
        await one.wait_for_log(LOCAL, after=mark[0])
        during = [f"during {n}" for n in range(5)]
        for text in during:
            await alice.send(ROOM, text)
        assert await _received(alice, during) == during  # her own instance: at once
        await asyncio.to_thread(sentinels.wait_failover)
        for instance, start in zip((one, two), mark, strict=True):
            await instance.wait_for_log(BACK, after=start)
        assert await _received(bob, during) == during  # late, not never, and in order
        await crosses(alice, bob)
        await crosses(bob, alice)
        await alice.send(ROOM, "after")
        before = await wait_event(alice, UserMessage(ROOM, alice.user_id, "after"))
        again = [e for e in before if isinstance(e, UserMessage) and "during" in e.content]
        assert again == [], again
        assert not any("Traceback" in line for line in one.lines + two.lines)
        for client in (alice, bob):
            client.close()


async def test_a_sentinel_that_names_no_master_is_one_clear_line() -> None:
    """Start-up against a sentinel that does not know the service: a clear error naming
    the service, not a crash (and nothing listens)."""
    with RedisSentinelSet.launch() as found:
        url = f"redis+sentinel://{found.sentinel.address}/nosuchservice"
        with pytest.raises(BusError, match="nosuchservice"):
            await ChatServer.start(ServerConfig(host=HOST, port=0, bus_url=url))


async def test_a_replica_named_as_master_is_refused(sentinels: RedisSentinelSet) -> None:
    """A node that is not (or no longer) a master is not used, even if asked for: the
    bus checks ROLE after the sentinel named it. Here a second sentinel is configured
    to watch our replica as if it were a master."""
    other = RedisSentinel("wrong", sentinels.replica, 1000)
    try:
        other.start()
        url = f"redis+sentinel://{other.address}/wrong"
        with pytest.raises(BusError, match="replica, not the master"):
            await ChatServer.start(ServerConfig(host=HOST, port=0, bus_url=url))
    finally:
        other.close(kill=True)


async def test_a_single_server_behind_sentinel_url_works(sentinels: RedisSentinelSet) -> None:
    """The plain case: a server on the sentinel URL serves and shares a room."""
    server = await ChatServer.start(ServerConfig(host=HOST, port=0, bus_url=sentinels.url))
    try:
        client = await connect(HOST, server.port, timeout=TIMEOUT)
        await join(client)
        await client.send(ROOM, "hello")
        assert await client.next_event(timeout=TIMEOUT) == UserMessage(
            ROOM, client.user_id, "hello"
        )
        client.close()
    finally:
        await server.close()


async def test_a_failover_that_lost_writes_starts_a_new_epoch(
    sentinels: RedisSentinelSet,
) -> None:
    """The replica is stopped and cut off while ann posts two more messages (the master numbers
    them 4 and 5 and both instances deliver them), then the master dies and the replica,
    which never got them, is promoted with the room's counter at 3. Numbers must not be
    given twice in one epoch: the catch-up sees the counter behind what it delivered and
    starts a new epoch, which v2 clients are told of (``e`` in ``history``, ``gap`` for a
    catch-up in the old one); the next message is numbered on in it."""
    configs = [ServerConfig(host=HOST, port=0, bus_url=sentinels.url, bus_lease=1.0) for _ in "ab"]
    one, two = [await ChatServer.start(config) for config in configs]
    try:
        ann, bob = await peer(one, "ann"), await peer(two, "bob")
        for who in (ann, bob):
            await who.join(ROOM)
            await who.next("history", r=ROOM)
        before = await say_all(ann, ROOM, ["m1", "m2", "m3"])
        epoch = (await history_of(await peer(two, "cy"), ROOM))["e"]
        replica = sentinels.replica.process
        assert replica is not None
        replica.send_signal(signal.SIGSTOP)
        try:  # and cut off: what the master writes from now on, it never gets
            sentinels.master.command("CLIENT", "KILL", "TYPE", "replica")
            lost = await say_all(ann, ROOM, ["m4", "m5"])
            assert [m["q"] for m in before + lost] == [1, 2, 3, 4, 5]
            for content in ("m4", "m5"):  # both instances delivered them
                await bob.next("user_message", r=ROOM, c=content)
            await asyncio.to_thread(sentinels.master.kill)
        finally:
            replica.send_signal(signal.SIGCONT)
        await asyncio.to_thread(sentinels.wait_failover)
        dee = await peer(one, "dee")
        await until(
            lambda: cast(RedisBus, one.bus).sharing and cast(RedisBus, two.bus).sharing,
            "both instances on the new master",
        )
        after = await history_of(dee, ROOM)
        assert after["e"] != epoch and after["q"] == 3  # the replica's numbering, anew
        # bob catches up from m5 in the old epoch: told of the gap, given what is kept.
        rejoin = await peer(two, "bob2")
        caught = await history_of(rejoin, ROOM, after=5, e=epoch)
        assert caught["gap"] is True and caught["e"] == after["e"]
        await ann.say(ROOM, "m6")
        numbered = await bob.next("user_message", r=ROOM, c="m6")
        mine = await ann.next("user_message", r=ROOM, c="m6")
        assert numbered["q"] == mine["q"] == 4  # 4 again, but in the new epoch
    finally:
        for server in (one, two):
            await server.close()
