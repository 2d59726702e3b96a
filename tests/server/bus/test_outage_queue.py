"""The Redis bus's outage queue, in one process on a real Redis: what is held for the
other instances, and what a v2 sender is told past the bound (docs/scaling.md, "What an
outage loses"). The instances' side (held messages reaching the other instance once
Redis is back) is in test_scaleout.py."""

from __future__ import annotations

import asyncio

from roomchat.server import ChatServer
from tests.helpers import until
from tests.redis_servers import RedisServer
from tests.server.test_community import peer
from tests.server.test_history_lasts import config


async def test_past_the_outage_queue_a_v2_sender_is_told_by_the_message_s_id(
    redis_server: RedisServer,
) -> None:
    """Redis away, the outage queue (here 150 bytes) holds the first message for the
    other instances; the ones past it reach this server's members only, and the v2
    sender gets unavailable with each one's id. None of it is lost silently."""
    srv = await ChatServer.start(config(redis_server.url, bus_outage_queue=150))
    try:
        alice, carol = await peer(srv, "alice"), await peer(srv, "carol")
        for who in (alice, carol):
            await who.join("general")
            await who.next("history", r="general")
        await alice.drain()
        await asyncio.to_thread(redis_server.stop)
        await until(lambda: not srv.bus.connected, "the bus noticed Redis is gone")
        for n in range(3):
            await alice.send(_ct="send_message", r="general", c=f"m{n}", id=f"s{n}")
        refused = [await alice.next("error", code="unavailable") for _ in range(2)]
        assert [(e["id"], e["cmd"]) for e in refused] == [
            ("s1", "send_message"),
            ("s2", "send_message"),
        ]
        assert "reached the members on this server only" in refused[0]["msg"]
        assert [(await carol.next("user_message"))["c"] for _ in range(3)] == ["m0", "m1", "m2"]
        stats = {r.name: r.value for r in srv.bus.readings()}
        assert (stats["bus_held"], stats["bus_held_lost"]) == (1, 2)
        for who in (alice, carol):
            who.close()
    finally:
        await srv.close()
