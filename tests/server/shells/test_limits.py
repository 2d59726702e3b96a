"""Connection limits and open-files exhaustion, through the real server.

Every test connects from 127.0.0.1, so the per-IP limit is tested with the total one off.
The open-files test runs ``roomchat serve`` in a subprocess whose RLIMIT_NOFILE (soft and
hard: the CLI raises the soft one to the hard one) is 64.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from roomchat.protocol import UserMessage
from roomchat.server import ChatServer, ServerConfig
from tests.helpers import TIMEOUT, client_of, joined, messages, raw_socket, read_line

LOG = "roomchat.server"


async def limited_server(**limits: int) -> ChatServer:
    return await ChatServer.start(ServerConfig(host="127.0.0.1", port=0, **limits))


async def refused_before_login(server: ChatServer) -> None:
    """A new connection is closed at once, without its login line."""
    sock = await raw_socket(server)
    try:
        assert await read_line(sock, bytearray()) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused a connection" in r.getMessage()]


@pytest.mark.parametrize(
    ("reason", "flag"),
    [
        ("max_connections", "--max-connections 2"),
        ("max_connections_per_ip", "--max-connections-per-ip 2"),
    ],
)
async def test_over_the_limit_is_closed_before_login(
    caplog: pytest.LogCaptureFixture, reason: str, flag: str
) -> None:
    caplog.set_level(logging.INFO, LOG)
    server = await limited_server(**{reason: 2})
    try:
        await _over_the_limit(server, caplog, reason, flag)
    finally:
        await server.close()


async def _over_the_limit(
    server: ChatServer, caplog: pytest.LogCaptureFixture, reason: str, flag: str
) -> None:
    alice = await client_of(server)
    bob = await client_of(server)
    for _ in range(3):
        await refused_before_login(server)
    assert server.shell.refused == {reason: 3}
    lines = refusal_lines(caplog)
    assert len(lines) == 1, lines  # the first only (then every 1000th)
    assert flag in lines[0] and "127.0.0.1:" in lines[0], lines[0]
    # the sessions already open are untouched
    await joined(alice, "general")
    await joined(bob, "general")
    await alice.send("general", "still here")
    assert [m.content for m in await messages(bob, 1) if isinstance(m, UserMessage)] == [
        "still here"
    ]
    # and a place that frees up is taken again
    bob.close()
    await bob.wait_closed()
    async with asyncio.timeout(TIMEOUT):
        while len(server.connections) > 1:
            await asyncio.sleep(0.01)
    carol = await client_of(server)
    await joined(carol, "general")
    assert server.shell.per_ip == ({"127.0.0.1": 2} if reason == "max_connections_per_ip" else {})
    alice.close()
    carol.close()


async def test_refusal_log_is_capped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, LOG)
    server = await limited_server()
    try:
        shell = server.shell
        for _ in range(2500):
            shell.refuse("max_connections", "10.0.0.1:1")
        shell.refuse("max_connections_per_ip", "10.0.0.1:2")
    finally:
        await server.close()
    lines = refusal_lines(caplog)
    assert len(lines) == 4, lines  # #1, #1000, #2000 of one reason; #1 of the other
    assert "(1000 refused so far" in lines[1] and "(2000 refused so far" in lines[2]
    assert shell.refused == {"max_connections": 2500, "max_connections_per_ip": 1}


# -- open-files exhaustion ---------------------------------------------------------------

OPEN_FILES = 64
LISTENING = re.compile(r"listening on [^ ]*?:(\d+) with")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Served:
    """``roomchat serve`` with a low open-files limit; its stderr collected by a thread."""

    def __init__(self) -> None:
        def low_limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))

        self.process = subprocess.Popen(
            [sys.executable, "-m", "roomchat", "serve", "--host", "127.0.0.1", "--port", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=low_limit,
        )
        assert self.process.stderr is not None
        self.lines: list[str] = []
        for line in self.process.stderr:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise AssertionError(f"server did not start: {self.lines}")
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)

    def login(self) -> tuple[socket.socket, str] | None:
        """A logged-in raw client and its user id, or None if the server closed it."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT)
        try:
            line = sock.makefile("rb").readline()
        except (ConnectionResetError, TimeoutError):
            line = b""
        if not line:
            sock.close()
            return None
        return sock, json.loads(line)["u"]


@pytest.fixture
def low_limit_server() -> Iterator[Served]:
    served = Served()
    try:
        yield served
    finally:
        served.process.kill()
        served.process.wait()


def _read_until(sock: socket.socket, needle: bytes) -> None:
    buffer = b""
    deadline = time.monotonic() + TIMEOUT
    while needle not in buffer:
        assert time.monotonic() < deadline, buffer
        chunk = sock.recv(65536)
        assert chunk, buffer
        buffer += chunk


def test_open_files_exhaustion(low_limit_server: Served) -> None:
    served = low_limit_server
    clients: list[socket.socket] = []
    while True:
        client = served.login()
        if client is None:
            break
        clients.append(client[0])
        assert len(clients) < OPEN_FILES, "never refused"
    assert len(clients) >= 10
    alice, bob = clients[0], clients[1]
    for sock in (alice, bob):
        sock.sendall(b'{"_ct":"join_room","r":"general"}\n')
    _read_until(alice, b'"_et":"user_joined_room"')
    _read_until(bob, b'"_et":"user_joined_room"')

    # At the limit, with clients that keep trying: no busy loop in the server.
    stop = threading.Event()
    attempts = [0]

    def keep_trying() -> None:
        while not stop.is_set():
            attempts[0] += 1
            assert served.login() is None
            time.sleep(0.005)

    trier = threading.Thread(target=keep_trying, daemon=True)
    cpu_before, started = _cpu_seconds(served.process.pid), time.monotonic()
    trier.start()
    time.sleep(1.0)
    # open sessions are still served meanwhile
    alice.sendall(b'{"_ct":"send_message","r":"general","c":"at the limit"}\n')
    _read_until(bob, b"at the limit")
    time.sleep(2.0)
    stop.set()
    trier.join(TIMEOUT)
    cpu = _cpu_seconds(served.process.pid) - cpu_before
    elapsed = time.monotonic() - started
    assert attempts[0] > 50
    assert cpu < 0.5 * elapsed, f"server used {cpu:.2f} s of CPU in {elapsed:.2f} s"

    refusals = [line for line in served.lines if "refused a connection" in line]
    assert refusals and "open files left" in refusals[0], served.lines[-5:]
    assert len(refusals) == 1, refusals  # capped: the first, then every 1000th

    # Descriptors freed: new clients are accepted again.
    for sock in clients[2:12]:
        sock.close()
    deadline = time.monotonic() + TIMEOUT
    while served.login() is None:
        assert time.monotonic() < deadline, "never accepted again"
        time.sleep(0.05)
    for sock in clients:
        sock.close()
