"""What each part reports to /metrics: v2 sessions are counted, the counters of refused
commands cannot go below zero, and docs/operating.md lists exactly what is exported."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roomchat.client import connect
from roomchat.server import ChatServer, ServerConfig
from tests.helpers import TIMEOUT, raw_login, read_line
from tests.redis_servers import RedisServer

OPERATING = Path(__file__).resolve().parents[3] / "docs" / "operating.md"


async def scrape(server: ChatServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert server.metrics_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(TIMEOUT):
        answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_sessions_by_version_count_v2_sessions() -> None:
    server = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, metrics=("127.0.0.1", 0))
    )
    try:
        v1 = await connect("127.0.0.1", server.port, timeout=TIMEOUT)
        v2 = await connect("127.0.0.1", server.port, timeout=TIMEOUT, v2=True, name="alice")
        assert v2.version == 2
        samples = await scrape(server)
        assert samples["roomchat_sessions", (("version", "1"),)] == 1
        assert samples["roomchat_sessions", (("version", "2"),)] == 1
        await v1.aclose()
        await v2.aclose()
    finally:
        await server.close()


async def test_bad_lines_and_refused_commands_of_both_versions() -> None:
    server = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, metrics=("127.0.0.1", 0))
    )
    try:
        v2 = await connect("127.0.0.1", server.port, timeout=TIMEOUT, v2=True, name="bob")
        v2.write(b"not json\r\n")  # v2: bad_command, a bad line
        v2.write(b'{"_ct":"leave_room","r":"general","id":"x"}\r\n')  # v2: not_member
        for _ in range(2):
            event = await v2.next_event(timeout=TIMEOUT)
            assert type(event).__name__ == "Error", event
        sock, buffer, _ = await raw_login(server)
        sock.sendall(b"still not json\r\n")  # v1: ignored, a bad line
        sock.sendall(b'{"_ct":"leave_room","r":"general"}\r\n')  # v1: ignored
        sock.sendall(b'{"_ct":"join_room","r":"general"}\r\n')
        assert b"user_joined_room" in await read_line(sock, buffer)
        samples = await scrape(server)
        assert samples["roomchat_bad_lines_total", ()] == 2
        assert samples["roomchat_ignored_commands_total", ()] == 2
        sock.close()
        await v2.aclose()
    finally:
        await server.close()


def documented() -> set[str]:
    """The metric names in the tables of docs/operating.md's "Metrics" section."""
    text = OPERATING.read_text()
    section = text[text.index("\n## Metrics\n") :]
    section = section[: section.index("\n## ", 1)]
    names = set()
    for line in section.splitlines():
        match = re.match(r"\| `([a-z_]+)(?:\{[a-z_,]+\})?` \|", line)
        if match:
            names.add(match.group(1).removesuffix("_total"))
    return names


def exported(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
    out = set()
    for name, _ in samples:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name.removeprefix("roomchat_"))
        out.add(base)
    return out


@pytest.mark.parametrize("bus", ["memory", "redis"])
async def test_the_documented_metrics_are_the_exported_ones(
    bus: str, shared_redis: RedisServer
) -> None:
    url = shared_redis.url if bus == "redis" else "memory://"
    server = await ChatServer.start(
        ServerConfig(host="127.0.0.1", port=0, metrics=("127.0.0.1", 0), bus_url=url)
    )
    try:
        client = await connect("127.0.0.1", server.port, timeout=TIMEOUT)
        await client.join("general")  # so that the per-room metrics have a room
        await client.next_event(timeout=TIMEOUT)
        names = exported(await scrape(server))
        await client.aclose()
    finally:
        await server.close()
    docs = documented()
    bus_only = {name for name in docs if name.startswith("bus_") and name != "bus_connected"}
    expected = docs if bus == "redis" else docs - bus_only
    assert names == expected, (names - expected, expected - names)
