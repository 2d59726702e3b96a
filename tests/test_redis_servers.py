"""The Redis test helpers work: real servers and a real cluster, driven by redis.asyncio."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from tests.redis_servers import RedisCluster, RedisServer

TIMEOUT = 10.0


async def sharded_message(pubsub: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next smessage on a ClusterPubSub, polling get_sharded_message until the
    deadline (it returns None when no node has one within its own short timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        msg = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=0.1)
        if msg is not None:
            return dict(msg)
    raise AssertionError(f"no sharded message within {timeout}s")


async def test_single_server_set_get(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}"
    r = aredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        assert await r.set("k", "v")
        assert await r.get("k") == "v"
    finally:
        await r.aclose()
    assert redis_server.cli("GET", "k") == "v"


async def test_extra_args_reach_the_server() -> None:
    with RedisServer.launch("--client-output-buffer-limit", "pubsub 64kb 0 0") as srv:
        limits = srv.cli("CONFIG", "GET", "client-output-buffer-limit")
        assert "pubsub 65536 0 0" in limits


async def test_restart_keeps_port_and_client_reconnects(redis_server: RedisServer) -> None:
    port = redis_server.port
    # Redis(host=, port=) retries a failed command 10 times by default (10 ms .. 1 s
    # backoff); Redis.from_url() does not retry at all unless given retry=Retry(...).
    r = aredis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    try:
        assert await r.set("k", "v")
        await asyncio.to_thread(redis_server.restart)
        assert redis_server.port == port
        # The pooled connection died with the old process; the next command gets a
        # fresh one (default retry policy), and the data is gone (no persistence).
        assert await r.get("k") is None
        assert await r.set("k", "w")
        await asyncio.to_thread(redis_server.kill)
        await asyncio.to_thread(redis_server.start)
        assert await r.ping()
    finally:
        await r.aclose()
    r = aredis.Redis.from_url(redis_server.url)
    try:
        assert await r.ping()
        await asyncio.to_thread(redis_server.kill)
        await asyncio.to_thread(redis_server.start)
        # The pooled socket died with the old process. Whether this command fails (no
        # retry from from_url) or redis-py reconnects first depends on whether the dead
        # socket's EOF has been read when the pool checks it: a race, not asserted.
        with contextlib.suppress(aredis.ConnectionError):
            await r.ping()
        assert await r.ping()  # after it, a command takes a new connection
    finally:
        await r.aclose()


async def test_cluster_set_get_across_slots(redis_cluster_shared: RedisCluster) -> None:
    cluster = redis_cluster_shared
    assert cluster.url == "redis+cluster://" + ",".join(
        f"127.0.0.1:{n.port}" for n in cluster.nodes
    )
    keys = [f"key-{i}" for i in range(30)]
    owners = {cluster.node_for_key(k).port for k in keys}
    assert len(owners) == 3  # the keys really are spread over all masters
    rc = AsyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port, decode_responses=True)
    try:
        for k in keys:
            assert await rc.set(k, k.upper())
        assert [await rc.get(k) for k in keys] == [k.upper() for k in keys]
    finally:
        await rc.aclose()
    # Each key lives on the node the helper says owns its slot.
    assert cluster.node_for_key("key-7").cli("GET", "key-7") == "KEY-7"


async def test_cluster_sharded_pubsub(redis_cluster_shared: RedisCluster) -> None:
    cluster = redis_cluster_shared
    channels = [f"room:{{r{i}}}" for i in range(12)]
    assert len({cluster.node_for_key(c).port for c in channels}) == 3
    sub = AsyncRedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    pub = AsyncRedisCluster(host="127.0.0.1", port=cluster.nodes[1].port)
    pubsub = sub.pubsub()
    try:
        # ClusterPubSub.ssubscribe routes by the client's slot map without loading it:
        # before the first command it raises SlotNotCoveredError.
        await sub.initialize()
        await pubsub.ssubscribe(*channels)
        for ch in channels:
            # One subscriber on the owning shard means the SSUBSCRIBE has landed.
            assert await pub.spublish(ch, f"hello {ch}") == 1
        got = {(await sharded_message(pubsub))["channel"].decode() for _ in channels}
        assert got == set(channels)
        await pubsub.sunsubscribe()
    finally:
        await pubsub.aclose()
        await sub.aclose()
        await pub.aclose()


async def test_cluster_node_restart_comes_back_ok(redis_cluster: RedisCluster) -> None:
    node = redis_cluster.node_for_key("k")
    port = node.port
    await asyncio.to_thread(redis_cluster.restart_node, node)
    assert node.port == port
    for n in redis_cluster.nodes:
        assert "cluster_state:ok" in n.cli("CLUSTER", "INFO")
    rc = AsyncRedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        assert await rc.set("k", "v")
        assert await rc.get("k") == b"v"
    finally:
        await rc.aclose()


async def test_cluster_migrate_slot(redis_cluster: RedisCluster) -> None:
    slot = redis_cluster.keyslot("{room}")
    source = redis_cluster.node_for_slot(slot)
    target = next(n for n in redis_cluster.nodes if n is not source)
    source.cli("SET", "{room}:k", "v")
    assert await asyncio.to_thread(redis_cluster.migrate_slot, slot, target) is source
    assert redis_cluster.node_for_slot(slot) is target
    assert target.cli("GET", "{room}:k") == "v"  # the key moved with its slot
    assert source.cli("CLUSTER", "COUNTKEYSINSLOT", str(slot)) == "0"
