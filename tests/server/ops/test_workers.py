"""``roomchat serve --workers N`` as a user runs it: the parent and its workers as real
processes, sharing one port and a real redis-server that each test starts for itself."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect

from roomchat.client import ChatClient, connect, tls_context
from roomchat.protocol import Event, UserJoinedRoom, UserMessage
from tests.conftest import Pki
from tests.instances import spawn_serve
from tests.redis_servers import RedisServer
from tests.serve_cli import TIMEOUT, assert_one_clean_line, run_roomchat

LISTENING = r"roomchat listening on [^ ]*?:(\d+) with \d+ rooms"
READY = r"\[worker (\d+)\] roomchat\.server: ready on .* \(pid (\d+)\)"
WEB_LINE = r"\[worker (\d+)\] .*web client on https://127\.0\.0\.1:(\d+)/"
METRICS_LINE = r"\[worker (\d+)\] .*metrics on http://127\.0\.0\.1:(\d+)/metrics"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """A redis-server of the test's own (conftest.redis_server)."""
    return redis_server


# -- the parent's stderr, where every process logs ------------------------------------------
@dataclass(eq=False)
class Log:
    """The lines of a stream as they come, and a way to wait for one."""

    stream: asyncio.StreamReader
    lines: list[str] = field(default_factory=list)
    ended: bool = False
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        while line := await self.stream.readline():
            self.lines.append(line.decode(errors="replace"))
            self._changed.set()
        self.ended = True
        self._changed.set()

    async def wait_for(self, pattern: str, start: int = 0) -> tuple[int, re.Match[str]]:
        """The first line from ``start`` on that matches: its index and the match."""
        index = start
        async with asyncio.timeout(TIMEOUT):
            while True:
                while index < len(self.lines):
                    if match := re.search(pattern, self.lines[index]):
                        return index, match
                    index += 1
                assert not self.ended, f"no line matches {pattern!r}:\n{self.text}"
                self._changed.clear()
                await self._changed.wait()

    async def wait_ended(self) -> None:
        assert self._task is not None
        async with asyncio.timeout(TIMEOUT):
            await self._task

    @property
    def text(self) -> str:
        return "".join(self.lines)


@dataclass
class Workers:
    process: asyncio.subprocess.Process
    log: Log
    port: int
    pids: dict[int, int]  # worker index -> pid, as they first were

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        async with asyncio.timeout(TIMEOUT):
            status = await self.process.wait()
        await self.log.wait_ended()
        return status

    async def worker_of(self, client: ChatClient, start: int = 0) -> tuple[int, int]:
        """Which worker logged the client's connection: (index, line number)."""
        index, match = await self.log.wait_for(
            rf"\[worker (\d+)\] roomchat\.server: <session \S+ user {client.user_id} .*connected",
            start,
        )
        return int(match.group(1)), index

    async def client(self) -> ChatClient:
        return await connect("127.0.0.1", self.port, timeout=TIMEOUT)


async def start_workers(count: int, *args: str) -> Workers:
    process = await spawn_serve("--workers", str(count), *args)
    assert process.stderr is not None
    log = Log(process.stderr)
    at, match = await log.wait_for(LISTENING)
    pids: dict[int, int] = {}
    for line in log.lines[:at]:
        if ready := re.search(READY, line):
            pids[int(ready.group(1))] = int(ready.group(2))
    assert sorted(pids) == list(range(1, count + 1)), log.text
    return Workers(process, log, int(match.group(1)), pids)


@pytest.fixture
async def workers(redis: RedisServer) -> AsyncIterator[Workers]:
    served = await start_workers(2, "--bus", redis.url)
    try:
        yield served
    finally:
        if served.process.returncode is None:
            served.process.kill()  # the workers see their stdin close and stop
            await served.process.wait()
        for pid in served.pids.values():
            await wait_gone(pid)


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 0)
            return sys.platform != "linux"
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


async def wait_gone(pid: int) -> None:
    async with asyncio.timeout(TIMEOUT):
        while running(pid):
            await asyncio.sleep(0.02)


async def per_worker(log: Log, pattern: str, count: int) -> dict[int, int]:
    """Worker index -> the number the first line of each worker matching ``pattern``
    gives (its second group)."""
    found: dict[int, int] = {}
    index = 0
    while len(found) < count:
        index, match = await log.wait_for(pattern, index)
        found.setdefault(int(match.group(1)), int(match.group(2)))
        index += 1
    return found


async def until_message(client: ChatClient) -> UserMessage:
    while True:
        event: Event = await client.next_event(TIMEOUT)
        if isinstance(event, UserMessage):
            return event


async def join(client: ChatClient, room: str) -> None:
    await client.join(room)
    while not isinstance(await client.next_event(TIMEOUT), UserJoinedRoom):
        pass


# -- refused or failing at start-up: one line ----------------------------------------------
@pytest.mark.parametrize("bus", [None, "memory://"])
async def test_several_workers_without_redis_are_refused(bus: str | None) -> None:
    port = free_port()
    args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    status, stderr = await run_roomchat(*args, *(["--bus", bus] if bus else []))
    assert status == 2
    assert_one_clean_line(stderr, "--workers 2 needs a shared bus", "--bus redis://HOST:PORT")
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


async def test_unreachable_redis_is_one_line_for_all_workers() -> None:
    status, stderr = await run_roomchat(
        "serve", "--port", "0", "--workers", "3", "--bus", f"redis://127.0.0.1:{free_port()}"
    )
    assert status == 1
    assert_one_clean_line(stderr, "cannot use the Redis bus")


async def test_port_in_use_is_one_line(redis: RedisServer) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, stderr = await run_roomchat(
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
            "--bus",
            redis.url,
        )
    assert status == 1
    assert_one_clean_line(stderr, f"127.0.0.1:{port}", "in use")


# -- running ------------------------------------------------------------------------------
async def test_workers_share_the_port_and_the_rooms(workers: Workers) -> None:
    assert workers.log.text.count("listening on") == 1, workers.log.text
    clients: list[ChatClient] = []
    by_worker: dict[int, list[ChatClient]] = {1: [], 2: []}
    try:
        # SO_REUSEPORT hashes connections over the workers: 20 reach both but for a
        # chance of 2 in a million; go on up to 200 rather than fail on it.
        while len(clients) < 20 or (not by_worker[1] or not by_worker[2]):
            assert len(clients) < 200, "every connection went to one worker"
            client = await workers.client()
            clients.append(client)
            index, _ = await workers.worker_of(client)
            by_worker[index].append(client)

        alice, bob = by_worker[1][0], by_worker[2][0]
        await join(bob, "general")
        await join(alice, "general")
        await alice.send("general", "across processes")
        got = await until_message(bob)
        assert (got.room, got.user_id, got.content) == (
            "general",
            alice.user_id,
            "across processes",
        )
    finally:
        for client in clients:
            client.close()
    assert await workers.stop() == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_stops_every_worker_and_exits_zero(workers: Workers, signum: int) -> None:
    client = await workers.client()
    await join(client, "general")
    assert await workers.stop(signum) == 0
    async with asyncio.timeout(TIMEOUT):
        await client.wait_closed()
    for pid in workers.pids.values():
        assert not running(pid), pid
    assert "all workers stopped" in workers.log.text


async def test_a_killed_worker_is_replaced(workers: Workers) -> None:
    old = workers.pids[1]
    os.kill(old, signal.SIGKILL)
    at, match = await workers.log.wait_for(
        rf"worker 1 replaced: pid (\d+) is ready in place of {old}\b"
    )
    new = int(match.group(1))
    assert new != old and running(new)
    assert re.search(rf"WARNING .*worker 1 \(pid {old}\) died, killed by SIGKILL", workers.log.text)
    # The port still serves, the new worker included.
    clients: list[ChatClient] = []
    try:
        while True:
            assert len(clients) < 200, "the new worker serves no connection"
            clients.append(client := await workers.client())
            index, _ = await workers.worker_of(client, at)
            if index == 1:
                break
    finally:
        for client in clients:
            client.close()
    assert await workers.stop() == 0
    assert not running(new)


async def test_workers_stop_when_the_parent_is_killed(workers: Workers) -> None:
    workers.process.kill()
    await workers.process.wait()
    for pid in workers.pids.values():
        await wait_gone(pid)


async def test_a_worker_that_cannot_start_again_ends_the_command(
    workers: Workers, redis: RedisServer
) -> None:
    redis.stop()  # the running workers carry on; a new one cannot connect
    os.kill(workers.pids[2], signal.SIGKILL)
    async with asyncio.timeout(3 * TIMEOUT):
        status = await workers.process.wait()
    await workers.log.wait_ended()
    assert status == 1
    last = workers.log.lines[-1]
    assert last.startswith("roomchat: error: worker 2 failed to start 5 times in a row"), last
    assert "cannot use the Redis bus" in last
    assert "Traceback" not in workers.log.text


async def test_workers_with_the_web_port_metrics_and_tls(redis: RedisServer, pki: Pki) -> None:
    """``--workers 2`` with ``--ws`` (one web port for all: the parent reserves it),
    ``--metrics`` (one endpoint per worker) and TLS on both ports."""
    served = await start_workers(
        2,
        "--bus",
        redis.url,
        "--ws",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.cert),
        "--tls-key",
        str(pki.key),
    )
    try:
        web = await per_worker(served.log, WEB_LINE, 2)
        metrics = await per_worker(served.log, METRICS_LINE, 2)
        assert len(set(web.values())) == 1, served.log.text  # one port, reserved by the parent
        assert len(set(metrics.values())) == 2, served.log.text  # one endpoint each

        context = tls_context(pki.ca)
        tcp = await connect("127.0.0.1", served.port, timeout=TIMEOUT, ssl=context)
        await join(tcp, "general")
        async with ws_connect(
            f"wss://127.0.0.1:{web[1]}/ws", ssl=context, open_timeout=TIMEOUT
        ) as browser:
            login = json.loads(await asyncio.wait_for(browser.recv(), TIMEOUT))
            assert login["_et"] == "login_successful"
            await browser.send('{"_ct":"join_room","r":"general"}')
            while json.loads(await asyncio.wait_for(browser.recv(), TIMEOUT))["_et"] != (
                "user_joined_room"
            ):
                pass
            await tcp.send("general", "from TLS over TCP")
            while (event := json.loads(await asyncio.wait_for(browser.recv(), TIMEOUT)))[
                "_et"
            ] != "user_message":
                pass
            assert event["c"] == "from TLS over TCP"
        tcp.close()
        for port in metrics.values():
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), TIMEOUT)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 ") and b"roomchat_sessions" in answer
        assert await served.stop() == 0
    finally:
        if served.process.returncode is None:
            served.process.kill()
            await served.process.wait()
