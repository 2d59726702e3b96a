"""A script that runs ahead of one Redis refused (NOSCRIPT), on a real redis-server.

After SCRIPT FLUSH the bus loads the scripts again and sends again, in order, what the
node refused (test_scaleout.py). But when another client loads the scripts between two
of this instance's scripts in flight, the second runs while the first was refused: their
order is lost. The bus then re-asserts presence and names from what it holds, as after
an outage, rather than send the first again behind the second.
"""

from __future__ import annotations

import asyncio

from roomchat.server import ChatServer, ServerConfig
from roomchat.server.bus.redis import RedisBus
from roomchat.server.bus.redis.scripts import SCRIPTS
from tests.helpers import until
from tests.redis_servers import RedisServer


async def test_a_script_run_ahead_of_a_refused_one_is_repaired_as_an_outage(
    redis_server: RedisServer,
) -> None:
    server = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, bus_url=redis_server.url)
    )
    try:
        bus = server.bus
        assert isinstance(bus, RedisBus)
        await until(lambda: bus.sharing, "the bus shares rooms")
        redis_server.command("SCRIPT", "FLUSH")
        bus.names.release("first")
        await asyncio.sleep(0)  # the turn's end: written to Redis, which refuses it
        # Another client loads the script meanwhile (blocking this loop: the first's
        # NOSCRIPT waits unread), then the second is written and runs.
        redis_server.command("SCRIPT", "LOAD", SCRIPTS["name_release"])
        bus.names.release("second")
        await asyncio.sleep(0)
        await until(lambda: bus.stats.outages == 1, "the order lost is handled as an outage")
        assert bus.stats.script_reloads == 1
        await until(lambda: bus.sharing, "the bus shares rooms again")
    finally:
        await server.close()
