"""Instances that share rooms over Redis and their history in one PostgreSQL, end to
end: real redis-server, real PostgreSQL, real roomchat servers and sockets. A page on
one instance holds what was posted on both; PostgreSQL killed and started again loses
nothing: delivery goes on, the backlog waits and is written in order when it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from roomchat.server import ChatServer, ServerConfig
from tests.helpers import until
from tests.redis_servers import RedisServer
from tests.server.store.postgres_server import PostgresServer
from tests.server.test_community import Peer, peer


def settings(redis: RedisServer, store: str) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=0, bus_url=redis.url, store=store)


@pytest.fixture
async def pair(
    redis_server: RedisServer, own_postgres: PostgresServer
) -> AsyncIterator[tuple[ChatServer, ChatServer]]:
    url = own_postgres.create_database("chat")
    first = await ChatServer.start(settings(redis_server, url))
    second = await ChatServer.start(settings(redis_server, url))
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def say(who: Peer, others: list[Peer], contents: list[str]) -> None:
    """``who`` posts ``contents``; wait until every one of ``others`` has them all."""
    for content in contents:
        await who.say("general", content)
    for other in others:
        for content in contents:
            await other.next("user_message", c=content)


async def page(who: Peer, ident: str, **bounds: int) -> dict:
    await who.send(_ct="history", r="general", id=ident, limit=200, **bounds)
    while True:
        event = await who.event()
        if event.get("id") == ident:
            return event


async def test_a_page_holds_both_instances_messages_and_an_outage_loses_none(
    pair: tuple[ChatServer, ChatServer], own_postgres: PostgresServer
) -> None:
    first, second = pair
    alice, bob = await peer(first, "alice"), await peer(second, "bob")
    for who in (alice, bob):
        await who.join("general")
        await who.next("history", r="general")
    await say(alice, [alice, bob], ["a1", "a2"])
    await say(bob, [alice, bob], ["b1", "b2"])
    await say(alice, [alice, bob], ["a3"])
    await until(
        lambda: first.archive.unwritten == 0 and second.archive.unwritten == 0,
        "both instances wrote what they numbered",
    )
    for who, ident in ((alice, "p1"), (bob, "p2")):
        answer = await page(who, ident, before=6)
        assert answer["_et"] == "history", answer
        assert [(m["q"], m["c"]) for m in answer["ms"]] == [
            (1, "a1"),
            (2, "a2"),
            (3, "b1"),
            (4, "b2"),
            (5, "a3"),
        ]
    epoch = answer["e"]

    # PostgreSQL dies: delivery goes on, what is not written waits (counted), a page
    # is refused with a defined error instead of a wrong answer.
    await asyncio.to_thread(own_postgres.kill)
    await say(bob, [alice, bob], [f"during-{n}" for n in range(20)])
    await say(alice, [alice, bob], ["during-alice"])
    await until(
        lambda: first.archive.unwritten + second.archive.unwritten == 21,
        "the messages posted during the outage wait, counted",
    )
    await until(lambda: second.archive.failures > 0, "the failed writes are counted")
    refused = await page(alice, "p3", before=6)
    assert (refused["_et"], refused["code"]) == ("error", "unavailable"), refused

    await asyncio.to_thread(own_postgres.start)
    await until(
        lambda: first.archive.unwritten == 0 and second.archive.unwritten == 0,
        "the backlog is written once PostgreSQL is back",
    )
    assert first.archive.lost == second.archive.lost == 0
    answer = await page(bob, "p4", after=5)
    assert answer["e"] == epoch
    assert [(m["q"], m["c"]) for m in answer["ms"]] == [
        *((6 + n, f"during-{n}") for n in range(20)),
        (26, "during-alice"),
    ]
    for who in (alice, bob):
        who.close()


async def test_a_restart_of_every_instance_goes_on_with_the_numbering_and_the_epoch(
    redis_server: RedisServer, own_postgres: PostgresServer
) -> None:
    """Redis keeps the numbering while it runs; PostgreSQL keeps the messages: an
    instance started again pages back through what the others posted before."""
    url = own_postgres.create_database("chat")
    srv = await ChatServer.start(settings(redis_server, url))
    try:
        alice = await peer(srv, "alice")
        await alice.join("general")
        first = await alice.next("history", r="general")
        await say(alice, [alice], [f"m{n}" for n in range(3)])
        await until(lambda: srv.archive.unwritten == 0, "written")
        alice.close()
    finally:
        await srv.close()
    srv = await ChatServer.start(settings(redis_server, url))
    try:
        carol = await peer(srv, "carol")
        await carol.join("general", after=0, e=first["e"])
        caught = await carol.next("history", r="general")
        assert caught["e"] == first["e"] and caught["gap"] is False
        assert [m["c"] for m in caught["ms"]] == ["m0", "m1", "m2"]
        answer = await page(carol, "p", before=3)
        assert [(m["q"], m["c"]) for m in answer["ms"]] == [(1, "m0"), (2, "m1")]
        carol.close()
    finally:
        await srv.close()


async def test_unread_counts_at_a_login_on_an_instance_nobody_used_the_room_on(
    pair: tuple[ChatServer, ChatServer],
) -> None:
    """The second instance never followed #general (no member there): the unread
    counts of a login on it come from the shared store, not from its idle room."""
    first, second = pair
    alice = await peer(first, "alice")
    await alice.join("general")
    await say(alice, [alice], ["one", "two", "three", "four", "five"])
    await alice.send(_ct="mark_read", r="general", q=2)
    await alice.drain()
    await until(lambda: first.archive.unwritten == 0, "written")
    assert second.rooms.rooms["general"].seq == 0  # it never followed the room
    alice.close()
    again = await login_when_free(second, "alice")
    listing = {room["n"]: room for room in again.login["rs"]}
    assert (listing["general"]["rd"], listing["general"]["un"]) == (2, 3)
    again.close()


async def login_when_free(server: ChatServer, name: str) -> Peer:
    """A v2 login as ``name`` once the session that had it is gone everywhere."""
    async with asyncio.timeout(10):
        while True:
            try:
                return await peer(server, name)
            except AssertionError as refused:
                if "name_taken" not in str(refused):
                    raise
            await asyncio.sleep(0.01)  # the other instance's release is on its way
