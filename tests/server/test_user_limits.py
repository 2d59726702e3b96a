"""Per-user send limits (docs/moderation.md, "Per-user limits"): one bucket for all of a
user's sessions, on one instance and across two on a real Redis. Over it, the user's
sessions are read more slowly (v2: ``rate_limited``); nothing they sent is dropped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from roomchat.server import ChatServer, ServerConfig
from roomchat.server.core.flood import WINDOW, UserBuckets
from tests.helpers import until
from tests.redis_servers import RedisServer
from tests.server.test_community import SECRET, Peer, peer


def limited(bus_url: str, secret: Path) -> ServerConfig:
    return ServerConfig(
        host="127.0.0.1",
        port=0,
        bus_url=bus_url,
        auth_secret_file=secret,
        require_tokens=False,
        user_rate=1.0,
        user_burst=5.0,
    )


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET)
    return path


async def burst(conn: Peer, count: int, start: int = 0) -> None:
    """``count`` messages in one write (one read, one charge)."""
    lines = b"".join(
        b'{"_ct":"send_message","r":"general","c":"m%d"}\n' % i for i in range(start, start + count)
    )
    await asyncio.get_running_loop().sock_sendall(conn.sock, lines)


async def received(conn: Peer, count: int) -> list[str]:
    out: list[Any] = []
    while len(out) < count:
        event = await conn.next("user_message")
        out.append(event["c"])
    return out


def spent(buckets: UserBuckets) -> int:
    """alice's spending on every instance, as the store last told this one."""
    bucket = buckets.of("alice")
    return 0 if bucket is None else bucket.total


async def test_two_sessions_of_a_user_share_one_bucket(secret: Path) -> None:
    server = await ChatServer.start(limited("memory://", secret))
    try:
        bob = await peer(server, "bob")
        await bob.join("general")
        first = await peer(server, "alice", proven=True)
        second = await peer(server, "alice", proven=True)
        for conn in (first, second):
            await conn.join("general")
        await burst(first, 4)  # 5 - 4: within the user's burst
        assert await received(first, 4) == ["m0", "m1", "m2", "m3"]
        await burst(second, 4, 4)  # alone within a session's budget, not the user's
        limited_event = await second.next("rate_limited")
        assert limited_event["retry_ms"] > 0
        assert await received(bob, 8) == [f"m{i}" for i in range(8)]  # none dropped
    finally:
        await server.close()


async def test_a_user_s_sessions_on_two_instances_share_one_budget(
    redis_server: RedisServer, secret: Path
) -> None:
    config = limited(redis_server.url, secret)
    a, b = await ChatServer.start(config), await ChatServer.start(config)
    try:
        bob = await peer(a, "bob")
        await bob.join("general")
        on_a = await peer(a, "alice", proven=True)
        on_b = await peer(b, "alice", proven=True)
        for conn in (on_a, on_b):
            await conn.join("general")
        buckets_a, buckets_b = a.context.user_buckets, b.context.user_buckets
        assert buckets_a is not None and buckets_b is not None
        # Spending is added up in 1 s windows of the wall clock: the reports below are
        # 0.1 s apart, and one run in ten had them fall on either side of a window's end
        # (B then told 3, not 8). Both instances count in one window here.
        window = (time.time() // WINDOW) * WINDOW
        buckets_a.wall = buckets_b.wall = lambda: window
        await burst(on_a, 5)  # all of the burst, on A
        await until(lambda: spent(buckets_a) >= 5, "A's report")
        await burst(on_b, 3, 5)  # within B's own bucket; over the user's on both together
        await until(lambda: spent(buckets_b) >= 8, "B's report")
        await burst(on_b, 1, 8)
        assert (await on_b.next("rate_limited"))["retry_ms"] > 0
        assert await received(bob, 9) == [f"m{i}" for i in range(9)]
    finally:
        await a.close()
        await b.close()
