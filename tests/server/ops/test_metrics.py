"""--metrics through the real server: /metrics moves as clients come, talk and go;
/healthz, /readyz (on both buses, Redis stopped and started again), bad requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from roomchat.client import ChatClient
from roomchat.protocol import RoomParticipation, UserMessage
from roomchat.server import ChatServer, ServerConfig
from roomchat.server.core.stats import Histogram
from roomchat.server.ops.http import MAX_BODY
from tests.helpers import (
    TIMEOUT,
    client_of,
    joined,
    messages,
    raw_login,
    read_line,
    wait_eof,
)
from tests.redis_servers import RedisServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def user_messages(client: ChatClient, count: int) -> list[UserMessage]:
    """The next ``count`` messages, skipping the others' joins and leaves."""
    out: list[UserMessage] = []
    while len(out) < count:
        event = await client.next_event(timeout=TIMEOUT)
        if isinstance(event, UserMessage):
            out.append(event)
        else:
            assert isinstance(event, RoomParticipation), event
    return out


@pytest.fixture
async def server() -> AsyncIterator[ChatServer]:
    config = ServerConfig(host="127.0.0.1", port=0, metrics=("127.0.0.1", 0))
    srv = await ChatServer.start(config)
    try:
        yield srv
    finally:
        await srv.close()


async def http(server: ChatServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to the metrics endpoint; (status, headers, body) of its answer."""
    assert server.metrics_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.metrics_port)
    try:
        writer.write(request)
        async with asyncio.timeout(TIMEOUT):
            answer = await reader.read()  # the endpoint closes after one answer
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if not request.startswith(b"HEAD "):  # HEAD: the length of what GET would send
        assert int(headers["content-length"]) == len(body)
    return int(status_line.split()[1]), headers, body


async def get(server: ChatServer, path: str) -> tuple[int, bytes]:
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    status, _, body = await http(server, request.encode())
    return status, body


async def scrape(server: ChatServer) -> Samples:
    status, body = await get(server, "/metrics")
    assert status == 200, body
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


async def until(server: ChatServer, check: str, predicate: object) -> Samples:
    """Scrape until ``predicate(samples)`` holds (the server counts as it gets to it)."""
    assert callable(predicate)
    try:
        async with asyncio.timeout(TIMEOUT):
            while True:
                samples = await scrape(server)
                if predicate(samples):
                    return samples
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {check}") from None


async def test_numbers_move_as_clients_come_talk_and_go(server: ChatServer) -> None:
    before = await scrape(server)
    assert value(before, "roomchat_connections_open") == 0
    assert value(before, "roomchat_sessions", version="1") == 0
    assert value(before, "roomchat_rooms_with_members") == 0
    assert value(before, "roomchat_bus_connected") == 1
    assert value(before, "roomchat_room_members_count") == 0

    clients = [await client_of(server) for _ in range(3)]
    samples = await scrape(server)
    assert value(samples, "roomchat_connections_open") == 3
    assert value(samples, "roomchat_connections_accepted_total") == 3
    assert value(samples, "roomchat_sessions", version="1") == 3
    logins_out = value(samples, "roomchat_sent_bytes_total")
    assert logins_out > 0
    assert value(samples, "roomchat_socket_writes_total") >= 3

    # Three members in "general", one in "rust".
    await joined(clients[0], "rust")
    for client in clients:
        await joined(client, "general")
    samples = await scrape(server)
    assert value(samples, "roomchat_rooms_with_members") == 2
    assert value(samples, "roomchat_room_members_count") == 2
    assert value(samples, "roomchat_room_members_sum") == 4
    assert value(samples, "roomchat_room_members_bucket", le="1") == 1
    assert value(samples, "roomchat_room_members_bucket", le="2") == 1
    assert value(samples, "roomchat_room_members_bucket", le="5") == 2
    assert value(samples, "roomchat_room_members_bucket", le="+Inf") == 2
    assert value(samples, "roomchat_room_members_top", room="general") == 3
    assert value(samples, "roomchat_room_members_top", room="rust") == 1
    assert value(samples, "roomchat_messages_received_total") == 0

    # Each of 3 members of general receives each of 5 messages: 15 deliveries.
    deliveries = value(samples, "roomchat_deliveries_total")
    bytes_in = value(samples, "roomchat_received_bytes_total")
    bytes_out = value(samples, "roomchat_sent_bytes_total")
    for number in range(5):
        await clients[0].send("general", f"message {number}")
    for client in clients:
        await user_messages(client, 5)
    samples = await scrape(server)
    assert value(samples, "roomchat_messages_received_total") == 5
    assert value(samples, "roomchat_deliveries_total") - deliveries == 15
    assert value(samples, "roomchat_received_bytes_total") > bytes_in
    assert value(samples, "roomchat_sent_bytes_total") > bytes_out
    assert value(samples, "roomchat_turn_seconds_count") > 0
    assert value(samples, "roomchat_loop_lag_seconds_count") >= 0

    for client in clients:
        client.close()
        await client.wait_closed()
    samples = await until(
        server, "everyone gone", lambda s: value(s, "roomchat_connections_open") == 0
    )
    assert value(samples, "roomchat_sessions", version="1") == 0
    assert value(samples, "roomchat_rooms_with_members") == 0
    assert value(samples, "roomchat_connections_accepted_total") == 3
    # Counters never go down.
    assert value(samples, "roomchat_messages_received_total") == 5


async def test_bad_line_ignored_command_and_long_line_are_counted(server: ChatServer) -> None:
    sock, buffer, _ = await raw_login(server)
    sock.sendall(b"this is not json\r\n")
    sock.sendall(b'{"_ct":"send_message","r":"general","c":"not joined"}\r\n')
    sock.sendall(b'{"_ct":"join_room","r":"general"}\r\n')
    assert b"user_joined_room" in await read_line(sock, buffer)
    samples = await scrape(server)
    assert value(samples, "roomchat_bad_lines_total") == 1
    assert value(samples, "roomchat_ignored_commands_total") == 1
    assert value(samples, "roomchat_messages_received_total") == 1  # received, ignored
    assert value(samples, "roomchat_lines_too_long_total") == 0

    sock.sendall(b"x" * (server.config.max_line_length + 10))
    await wait_eof(sock)
    sock.close()
    samples = await until(
        server, "closed", lambda s: value(s, "roomchat_lines_too_long_total") == 1
    )
    assert value(samples, "roomchat_bad_lines_total") == 1


async def test_loop_lag_is_probed(server: ChatServer) -> None:
    samples = await until(
        server, "two lag probes", lambda s: value(s, "roomchat_loop_lag_seconds_count") >= 2
    )
    assert value(samples, "roomchat_loop_lag_seconds_count") >= 2


async def test_refused_connections_by_reason(server: ChatServer) -> None:
    samples = await scrape(server)
    for reason in ("max_connections", "max_connections_per_ip", "open_files"):
        assert value(samples, "roomchat_connections_refused_total", reason=reason) == 0
    server.shell.refused["max_connections"] += 2
    samples = await scrape(server)
    assert value(samples, "roomchat_connections_refused_total", reason="max_connections") == 2


async def test_health_and_ready_on_the_memory_bus(server: ChatServer) -> None:
    assert await get(server, "/healthz") == (200, b"ok\n")
    assert await get(server, "/readyz") == (200, b"ready\n")
    assert (await get(server, "/metrics?name=x"))[0] == 200


async def test_unknown_path_bad_request_and_bounds(server: ChatServer) -> None:
    status, body = await get(server, "/nothing-here")
    assert (status, body) == (404, b"not found: try /metrics, /healthz, /readyz\n")
    assert (await http(server, b"garbage\r\n\r\n"))[0] == 400
    assert (await http(server, b"GET /metrics SPDY/3\r\n\r\n"))[0] == 400
    close = b"Host: x\r\nConnection: close\r\n\r\n"
    status, headers, _ = await http(server, b"POST /metrics HTTP/1.1\r\n" + close)
    assert status == 405
    assert {method.strip() for method in headers["allow"].split(",")} == {"GET", "HEAD"}
    status, headers, body = await http(server, b"HEAD /healthz HTTP/1.1\r\n" + close)
    assert (status, body) == (200, b"")
    # A request cut short: closed without an answer, or with a 400.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.metrics_port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer
    writer.close()
    # A header line past aiohttp's bound, and a body past MAX_BODY.
    long_header = b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 9000 + b"\r\n\r\n"
    assert (await http(server, long_header))[0] in (400, 431)
    big = b"POST /metrics HTTP/1.1\r\nContent-Length: %d\r\n" % (MAX_BODY + 1) + close
    assert (await http(server, big + b"x" * (MAX_BODY + 1)))[0] in (405, 413)
    # The endpoint still answers.
    assert await get(server, "/healthz") == (200, b"ok\n")


async def test_metrics_port_in_use_is_a_start_error() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        from roomchat.server import ServerStartError

        with pytest.raises(ServerStartError, match=f"metrics on 127.0.0.1:{port}"):
            await ChatServer.start(
                ServerConfig(host="127.0.0.1", port=0, metrics=("127.0.0.1", port))
            )
    finally:
        blocker.close()
        await blocker.wait_closed()


async def test_no_endpoint_unless_asked() -> None:
    srv = await ChatServer.start(ServerConfig(host="127.0.0.1", port=0))
    try:
        assert srv.metrics is None
        assert srv.metrics_port is None
    finally:
        await srv.close()


async def test_ready_follows_redis(redis_server: RedisServer) -> None:
    config = ServerConfig(
        host="127.0.0.1", port=0, bus_url=redis_server.url, metrics=("127.0.0.1", 0)
    )
    srv = await ChatServer.start(config)
    try:
        assert await get(srv, "/readyz") == (200, b"ready\n")
        samples = await scrape(srv)
        assert value(samples, "roomchat_bus_connected") == 1
        assert value(samples, "roomchat_bus_connects_total") == 1
        assert value(samples, "roomchat_bus_queue_bytes") == 0

        # Messages go round through Redis: published and received.
        async with await client_of(srv) as alice:
            await joined(alice, "general")
            await alice.send("general", "through redis")
            await messages(alice, 1)
        samples = await scrape(srv)
        assert value(samples, "roomchat_bus_published_total") >= 1
        assert value(samples, "roomchat_bus_received_total") >= 1

        await asyncio.to_thread(redis_server.stop)
        async with asyncio.timeout(TIMEOUT):
            while (await get(srv, "/readyz"))[0] != 503:
                await asyncio.sleep(0.05)
        assert await get(srv, "/readyz") == (503, b"bus not connected\n")
        assert await get(srv, "/healthz") == (200, b"ok\n")  # alive all the same
        samples = await scrape(srv)
        assert value(samples, "roomchat_bus_connected") == 0
        assert value(samples, "roomchat_bus_outages_total") == 1

        await asyncio.to_thread(redis_server.start)
        async with asyncio.timeout(TIMEOUT):
            while (await get(srv, "/readyz"))[0] != 200:
                await asyncio.sleep(0.05)
        samples = await scrape(srv)
        assert value(samples, "roomchat_bus_connected") == 1
        assert value(samples, "roomchat_bus_connects_total") == 2
    finally:
        await srv.close()


async def test_not_ready_once_closing(server: ChatServer) -> None:
    assert server.metrics is not None
    assert server.listening
    assert server._server is not None
    server._server.close()  # what close() does first
    assert server.metrics.ready() == "not listening"
    assert await get(server, "/readyz") == (503, b"not listening\n")


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram((1.0, 2.0))
    for observed in (0.5, 1.0, 1.5, 3.0):
        histogram.observe(observed)
    assert histogram.cumulative() == [("1.0", 2), ("2.0", 3), ("+Inf", 4)]
    assert histogram.count == 4
    assert histogram.sum == 6.0
