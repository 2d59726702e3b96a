"""The community across two instances on one real Redis (docs/moderation.md, "Several
instances"): what is created, moderated or opened on one instance takes effect on the
other, and both read the same audit log. Each test waits for the event that shows the
change arrived, never for a fixed time (the 1 s bound is measured in
benchmarks/community.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from roomchat.server import ChatServer, ServerConfig
from roomchat.server.bus.redis import community as redis_community
from tests.helpers import until
from tests.redis_servers import RedisCluster, RedisServer
from tests.server.test_community import SECRET, Peer, dm_got, names_of, peer

KEY = "k" * 32


@pytest.fixture
async def pair(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[ChatServer, ChatServer]]:
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        bus_url=redis_server.url,
        auth_secret_file=secret,
        require_tokens=False,
        user_rooms=True,
        admins=("root",),
        metrics=("127.0.0.1", 0),
        api_key_file=keys,
    )
    a = await ChatServer.start(config)
    b = await ChatServer.start(config)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_a_room_created_on_a_is_listed_and_joinable_on_b(
    pair: tuple[ChatServer, ChatServer],
) -> None:
    a, b = pair
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.send(_ct="create_room", r="games", d="fun")
    assert (await bob.next("room_added"))["rm"] == {"n": "games", "d": "fun"}
    await bob.join("games")
    await alice.join("games")
    await alice.say("games", "hi from a")
    assert (await bob.next("user_message"))["c"] == "hi from a"
    # An instance started later reads it from Redis.
    late = await ChatServer.start(a.config)
    try:
        carol = await peer(late, "carol")
        assert "games" in names_of(carol.login["rs"])
        await carol.join("games")
    finally:
        await late.close()
    # The name is taken on every instance, ignoring case.
    await bob.send(_ct="create_room", r="GAMES")
    await bob.error("room_exists")


async def test_a_ban_on_a_refuses_a_join_on_b_and_a_kick_on_b_removes_on_a(
    pair: tuple[ChatServer, ChatServer],
) -> None:
    a, b = pair
    alice = await peer(a, "alice")
    await alice.send(_ct="create_room", r="club")
    await alice.next("room_added")
    await alice.join("club")
    bob_b = await peer(b, "bob", proven=True)
    bob_a = await peer(a, "bob", proven=True)
    await bob_b.join("club")
    await bob_a.join("club")
    # A kick issued on B (by a moderator there) removes bob on A and on B.
    await alice.send(_ct="set_role", r="club", u="carol", role="moderator")
    carol = await peer(b, "carol")
    await carol.join("club")
    await carol.send(_ct="kick", r="club", u="bob", why="out")
    for conn in (bob_a, bob_b):
        event = await conn.next("moderation", what="kick")
        assert (event["by"], event["why"]) == ("carol", "out")
    await alice.next("room_participation", s="left", u="bob")
    await bob_a.say("club", "still?")
    await bob_a.error("not_member")
    # A ban issued on A refuses the join on B.
    await alice.send(_ct="ban", r="club", u="bob")
    await bob_b.next("moderation", what="ban")
    await bob_b.send(_ct="join_room", r="club")
    await bob_b.error("banned")
    # Both instances read one audit log.
    await carol.send(_ct="audit_log", r="club")
    audit = await carol.next("audit")
    assert [(e["by"], e["what"]) for e in audit["es"]] == [
        ("alice", "create"),
        ("alice", "role"),
        ("carol", "kick"),
        ("alice", "ban"),
    ]


async def test_a_private_room_is_neither_listed_nor_joinable_on_another_instance(
    pair: tuple[ChatServer, ChatServer],
) -> None:
    a, b = pair
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.send(_ct="create_room", r="vault", p=True)
    await alice.next("room_added")
    await alice.send(_ct="create_room", r="public")
    await bob.next("room_added", rm={"n": "public", "d": ""})  # after vault's creation
    assert "vault" not in names_of((await peer(b, "dave")).login["rs"])
    await bob.send(_ct="join_room", r="vault")
    await bob.error("not_authorised")
    await alice.send(_ct="invite", r="vault", u="bob")
    await bob.next("room_added", rm={"n": "vault", "d": "", "p": True})
    await bob.join("vault")


async def test_a_direct_message_across_instances(pair: tuple[ChatServer, ChatServer]) -> None:
    a, b = pair
    alice, bob = await peer(a, "alice"), await peer(b, "bob")
    await alice.send(_ct="open_dm", u="bob")
    room = (await alice.next("room_added"))["rm"]["n"]
    await alice.next("user_joined_room", r=room)
    await alice.say(room, "across")
    assert (await bob.next("room_added"))["rm"]["dm"] == "alice"
    await bob.next("user_joined_room", r=room)
    await dm_got(bob, room, "across")
    await bob.say(room, "back")
    await alice.next("user_message", c="back")


async def test_the_api_on_one_instance_acts_on_every_instance(
    pair: tuple[ChatServer, ChatServer],
) -> None:
    a, b = pair
    bob: Peer = await peer(b, "bob")
    await bob.join("general")
    assert a.metrics is not None
    base = f"http://127.0.0.1:{a.metrics.port}/api/v1"
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        # Members and counts are every instance's (bob is on B only).
        async with http.get(base + "/rooms/general/members") as response:
            assert json.loads(await response.text()) == {"room": "general", "users": ["bob"]}
        async with http.get(base + "/rooms") as response:
            rooms = {r["name"]: r for r in json.loads(await response.text())["rooms"]}
        assert (rooms["general"]["members"], rooms["general"]["local_sessions"]) == (1, 0)
        async with http.post(base + "/rooms/general/bans", json={"user": "bob"}) as response:
            assert response.status == 201, await response.text()
        await bob.next("moderation", what="ban")
        await bob.send(_ct="join_room", r="general")
        await bob.error("banned")
        async with http.delete(base + "/users/bob/sessions") as response:
            assert response.status == 200
        await bob.error("not_authorised")
        async with http.get(base + "/rooms/general/audit") as response:
            body = json.loads(await response.text())
        assert [e["what"] for e in body["entries"]] == ["ban"]
    await until(lambda: not b.context.community.of("bob"), "bob is gone from B")


async def test_on_a_redis_cluster(redis_cluster_shared: RedisCluster, tmp_path: Path) -> None:
    """Sharded pub/sub and scripts on a room's own shard: creation, a ban and a direct
    message reach the other instance on a 3-master cluster."""
    config = ServerConfig(
        host="127.0.0.1", port=0, bus_url=redis_cluster_shared.url, user_rooms=True
    )
    a, b = await ChatServer.start(config), await ChatServer.start(config)
    try:
        alice, bob = await peer(a, "alice"), await peer(b, "bob")
        for index in range(3):  # rooms on (most likely) several shards
            await alice.send(_ct="create_room", r=f"shard{index}")
            await bob.next("room_added", rm={"n": f"shard{index}", "d": ""})
        await bob.join("shard2")
        await alice.send(_ct="ban", r="shard2", u="bob")
        await bob.next("moderation", what="ban")
        await bob.send(_ct="join_room", r="shard2")
        await bob.error("banned")
        await alice.drain()  # the room_added of the rooms it created
        await alice.send(_ct="open_dm", u="bob")
        room = (await alice.next("room_added"))["rm"]["n"]
        await alice.next("user_joined_room", r=room)
        await alice.say(room, "sharded")
        await bob.next("room_added")
        await dm_got(bob, room, "sharded")
    finally:
        await a.close()
        await b.close()


async def test_a_stalled_redis_refuses_a_change_instead_of_hanging(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis paused (CLIENT PAUSE): a community request is refused after the store's
    wait (shortened here), the session reads again, and works once Redis does."""
    monkeypatch.setattr(redis_community, "_ANSWER_WITHIN", 0.3)
    srv = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, bus_url=redis_server.url, user_rooms=True)
    )
    try:
        alice = await peer(srv, "alice")
        redis_server.command("CLIENT", "PAUSE", "3000", "ALL")
        await alice.send(_ct="create_room", r="stalled", id="c1")
        error = await alice.error("unavailable")
        assert error["id"] == "c1" and "unreachable" in error["msg"], error
        await alice.send(_ct="ping", id="p1")  # the session reads again at once
        assert (await alice.next("pong"))["id"] == "p1"
        redis_server.command("CLIENT", "UNPAUSE")
        await alice.send(_ct="create_room", r="after")
        await alice.next("room_added", rm={"n": "after", "d": "", "role": "owner"})
    finally:
        await srv.close()
